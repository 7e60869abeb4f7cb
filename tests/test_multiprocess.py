"""Several real processes on 127.0.0.1 (jax.distributed, gloo CPU collectives).

Two processes with one CPU device each must give what one process with two
devices gives: the same program on the same 2-device mesh. Every launch is
bounded by a timeout, and a watchdog kills what is left.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from entry import fast_compile_env
from robustjax.training import workdir as _workdir

TRAIN = ["--width=1", "--steps=8", "--batch_size=20", "--attack_steps=2", "--log_every=1",
         "--checkpoint_every=4", "--eval_examples=20", "--eval_batch_size=20",
         "--eval_attack_steps=2", "--lr=1e-3", "--eval_every=4", "--val_examples=40",
         "--val_attack_steps=2"]
TIMEOUT = 300

pytestmark = pytest.mark.slow


def _env(devices: int) -> dict:
    return fast_compile_env(JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(module: str, *args: str, n: int = 2, **kw) -> list[subprocess.Popen]:
    """``n`` processes of ``module`` (one CPU device each) joined through 127.0.0.1."""
    address = f"127.0.0.1:{_port()}"
    return [subprocess.Popen(
        [sys.executable, "-m", module, *args, f"--coordinator_address={address}",
         f"--num_processes={n}", f"--process_id={i}", *kw.get("extra", [])],
        cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)]


def _wait(procs, timeout=TIMEOUT) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each; kills them all past ``timeout``."""
    deadline = time.time() + timeout
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=max(1, deadline - time.time()))
            out.append((p.returncode, o, e))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"processes still running after {timeout}s")
    return out


def _run_one(module: str, *args: str, devices: int = 2):
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(devices),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _same_metrics(a: str, b: str) -> None:
    ra, rb = _records(a), _records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 9))
    for x, y in zip(ra, rb):
        for k in ("loss", "nat_acc", "adv_acc", "eps"):
            assert x[k] == y[k], (x["step"], k, x[k], y[k])  # bitwise: the same program


@pytest.fixture(scope="module")
def reference(idx_dir, tmp_path_factory):
    """One process with two devices: the run the two-process runs must reproduce."""
    wd = str(tmp_path_factory.mktemp("ref") / "wd")
    _run_one("experiments.mnist", f"--workdir={wd}", f"--data_dir={idx_dir}", *TRAIN)
    return wd


def _until(proc, text: str, timeout: float) -> list[str]:
    """Lines of ``proc``'s stdout up to the first that contains ``text``."""
    lines, timer = [], threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"{text!r} never printed:\n{''.join(lines)[-3000:]}")


def test_two_processes_train_stop_and_resume_like_one_process(idx_dir, reference, tmp_path):
    """SIGTERM to process 1 stops both at one step with one checkpoint; the resumed run
    then equals one uninterrupted process with two devices."""
    wd = str(tmp_path / "wd")
    args = ["experiments.mnist", f"--workdir={wd}", f"--data_dir={idx_dir}", *TRAIN]
    procs = _launch(*args)
    try:
        _until(procs[0], "step 2/8", TIMEOUT)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        outs = _wait(procs)
    stops = []
    for rc, _, err in outs:
        assert rc == 143, err[-3000:]  # both preempted, neither killed by the signal
        stops.append(int(err.split("stopped by SIGTERM at step ")[1].split(";")[0]))
    assert stops[0] == stops[1] and 2 <= stops[0] < 8, stops
    assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")))[-1] == stops[0]
    assert [r["step"] for r in _records(os.path.join(wd, "metrics.jsonl"))] == list(
        range(1, stops[0] + 1))  # process 0 alone writes

    outs = _wait(_launch(*args))
    assert all(rc == 0 for rc, _, _ in outs), outs[0][2][-3000:] + outs[1][2][-3000:]
    assert f"resumed from step {stops[0]}" in outs[0][1]
    assert "| Method |" in outs[0][1] and "| Method |" not in outs[1][1]
    _same_metrics(os.path.join(wd, "metrics.jsonl"), os.path.join(reference, "metrics.jsonl"))
    ev, ev_ref = (_records(os.path.join(d, "eval.jsonl")) for d in (wd, reference))
    assert [(r["step"], r["last"]) for r in ev] == [(r["step"], r["last"]) for r in ev_ref]
    res, ref = (json.load(open(os.path.join(d, "results.json"))) for d in (wd, reference))
    assert [r["accuracy"] for r in res["rows"]] == [r["accuracy"] for r in ref["rows"]]
    assert res["training"]["best"]["best_step"] == ref["training"]["best"]["best_step"]
    a, b = (_workdir.load_run(d).variables["params"] for d in (wd, reference))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_second_job_on_a_busy_workdir_is_refused(idx_dir, tmp_path):
    wd = str(tmp_path / "wd")
    os.makedirs(wd)
    owner = _workdir.lock(wd)  # another job holds the workdir
    try:
        outs = _wait(_launch("experiments.mnist", f"--workdir={wd}", f"--data_dir={idx_dir}",
                             *TRAIN))
    finally:
        owner.close()
    (rc0, _, err0), (rc1, _, err1) = outs
    assert rc0 == 1 and "in use" in err0 and len(err0.strip().splitlines()) == 1, err0[-2000:]
    assert rc1 == 1 and "process 0 could not start" in err1, err1[-2000:]


def test_autoattack_and_table_across_two_processes_equal_one_process(reference, tmp_path):
    aa = ["--examples=20", "--num_steps=3", "--num_queries=10", "--batch_size=8"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run_one("experiments.autoattack", f"--workdir={reference}", f"--output_dir={one}", *aa)
    outs = _wait(_launch("experiments.autoattack", f"--workdir={reference}",
                         f"--output_dir={two}", *aa))
    assert all(rc == 0 for rc, _, _ in outs), outs[0][2][-3000:] + outs[1][2][-3000:]
    r1, r2 = (json.load(open(os.path.join(d, "autoattack.json"))) for d in (one, two))
    assert r2["processes"] == 2 and r1["processes"] == 1 and r1["devices"] == r2["devices"] == 2
    for k in ("clean_acc", "robust_acc", "accuracy_after"):
        assert r1[k] == r2[k], k
    assert r1["clean_acc"] > 0
    # A table (natural + AutoAttack rows, the worst case) written by process 0 alone.
    table = ["--examples=20", "--suite=autoattack", "--batch_size=8"]  # the programs above
    _run_one("experiments.mnist_table", f"--workdir={reference}", f"--output_dir={one}/t",
             *table)
    outs = _wait(_launch("experiments.mnist_table", f"--workdir={reference}",
                         f"--output_dir={two}/t", *table))
    assert all(rc == 0 for rc, _, _ in outs), outs[0][2][-3000:] + outs[1][2][-3000:]
    t1, t2 = (json.load(open(os.path.join(d, "t", "results.json"))) for d in (one, two))
    assert [(r["name"], r["accuracy"], r.get("after")) for r in t1["rows"]] == [
        (r["name"], r["accuracy"], r.get("after")) for r in t2["rows"]]


def test_a_process_that_dies_ends_the_other(idx_dir, tmp_path):
    """SIGKILL one process mid-run: the other exits with an error naming the cause within
    the heartbeat timeout; it does not hang."""
    procs = _launch("experiments.mnist", f"--workdir={tmp_path / 'wd'}",
                    f"--data_dir={idx_dir}", *TRAIN[:1], "--steps=100000", "--batch_size=20",
                    "--attack_steps=2", "--log_every=1", "--eval_examples=20",
                    extra=["--heartbeat_timeout=10"])
    try:
        _until(procs[0], "step 2/", TIMEOUT)
        procs[1].kill()
        t0 = time.time()
        rc, _, err = _wait(procs[:1], timeout=120)[0]
    finally:
        for p in procs:
            p.kill()
    # A collective that fails at once gives our one line (status 1); one that waits is
    # ended by JAX's coordination service after --heartbeat_timeout, which aborts the
    # survivor with its own message.
    assert rc != 0 and time.time() - t0 < 60, err[-2000:]
    assert ("another process probably died" in err and rc == 1) or (
        "another task died" in err), err[-2000:]
