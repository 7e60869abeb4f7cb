"""What a run survives (robustjax.training.workdir, robustjax.training): a second owner, damaged
checkpoints, SIGTERM, divergence; and resumable evaluations (robustjax.runtime.rowstore)."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, random_mlp
from entry import fast_compile_env, in_process
from robustjax.evaluation import suite
from robustjax import training as train
from robustjax.training import workdir

TINY = dict(width=1, batch_size=20, attack_steps=2, log_every=1, eval_examples=20,
            eval_batch_size=20, eval_attack_steps=(2,), lr=1e-3)


def _cfg(idx_dir, **kw):
    return train.TrainConfig(data_dir=idx_dir, **dict(TINY, **kw))


def _env():
    return fast_compile_env(PYTHONPATH=str(REPO))


def _mnist_flags(wd, idx_dir, *flags):
    """The shared tiny run's flags (programs the compilation cache already holds)."""
    return [f"--workdir={wd}", f"--data_dir={idx_dir}", "--width=1", *TINY_FLAGS, *flags]


def _mnist_cli(wd, idx_dir, *flags):
    return [sys.executable, "-m", "experiments.mnist", *_mnist_flags(wd, idx_dir, *flags)]


@pytest.mark.slow
def test_one_owner_per_workdir(idx_dir, tmp_path):
    wd = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from robustjax.training import workdir
        lock = workdir.lock({wd!r})
        print("locked", flush=True)
        time.sleep(120)""")], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = subprocess.run(_mnist_cli(wd, idx_dir, "--steps=2"), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert wd in p.stderr and f"pid {holder.pid}" in p.stderr and "host" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
        assert not os.path.exists(os.path.join(wd, "metrics.jsonl"))  # it did not start
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    workdir.lock(wd).close()  # the OS dropped the killed owner's lock: a rerun may start


def _largest_file(d):
    files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
    return max(files, key=os.path.getsize)


@pytest.mark.slow
def test_damaged_checkpoint_is_moved_aside_and_an_older_one_used(idx_dir, tmp_path, caplog):
    wd = str(tmp_path / "run")
    cfg = _cfg(idx_dir, steps=4, checkpoint_every=2)
    train.train_and_evaluate(cfg, wd, stop_after=4, evaluate=False)
    ckpt = os.path.join(wd, "checkpoints")
    assert sorted(os.listdir(ckpt)) == ["2", "4"]
    victim = _largest_file(os.path.join(ckpt, "4"))
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    with caplog.at_level(logging.INFO, logger="robustjax"):
        res = train.train_and_evaluate(dataclasses.replace(cfg, steps=5), wd, evaluate=False)
    assert "checkpoint" in caplog.text and os.path.join(ckpt, "4") in caplog.text
    assert "resumed from step 2" in caplog.text and res["training"]["final_step"] == 5
    moved = os.listdir(os.path.join(wd, "damaged_checkpoints"))
    assert len(moved) == 1 and moved[0].startswith("4.")  # kept, not deleted
    # metrics.jsonl was cut back to step 2 and redone: one record per step.
    assert [json.loads(l)["step"] for l in open(os.path.join(wd, "metrics.jsonl"))] == [
        1, 2, 3, 4, 5]
    # With every checkpoint damaged: an error that names them and says how to start over.
    for step in os.listdir(ckpt):
        victim = _largest_file(os.path.join(ckpt, step))
        with open(victim, "r+b") as f:
            f.truncate(1)
    with pytest.raises(workdir.CheckpointError, match="to start over"):
        train.train_and_evaluate(dataclasses.replace(cfg, steps=6), wd, evaluate=False)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_resumes(idx_dir, tmp_path):
    wd = str(tmp_path / "run")
    proc = subprocess.Popen(_mnist_cli(wd, idx_dir, "--steps=100000", "--checkpoint_every=1000"),
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and not (
            os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "preempted: stopped by SIGTERM at step" in err and "Traceback" not in err
    step = int(err.split("at step ")[1].split(";")[0])
    assert step >= 3 and os.listdir(os.path.join(wd, "checkpoints")) == [str(step)]
    p = in_process("experiments.mnist", *_mnist_flags(wd, idx_dir, f"--steps={step + 1}"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resumed from step {step}" in p.stdout and f"step {step + 1}/{step + 1}" in p.stdout


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_keeps_the_last_finite_checkpoint(idx_dir, tmp_path):
    wd = str(tmp_path / "run")
    cfg = _cfg(idx_dir, steps=30, checkpoint_every=1, lr=1e12, train_attack="none")
    with pytest.raises(train.Diverged, match=r"at step (\d+)") as info:
        train.train_and_evaluate(cfg, wd, evaluate=False)
    bad = int(info.value.args[0].split("at step ")[1].split(";")[0])
    run = workdir.load_run(wd)
    assert 1 <= run.step < bad
    leaves = jax.tree_util.tree_leaves(run.variables["params"])
    assert all(np.all(np.isfinite(np.asarray(a))) for a in leaves)


def test_interrupted_suite_resumes_with_the_same_rows(tmp_path):
    f = random_mlp(jax.random.PRNGKey(0), (6, 6, 1))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (30, 6, 6, 1)))
    y = np.asarray(jax.numpy.argmax(f(x), -1))
    specs = [suite.AttackSpec("Natural", attack="natural"),
             suite.AttackSpec("FGSM", attack="fgsm", eps=0.05),
             suite.AttackSpec("PGD", eps=0.05, steps=3, step_size=0.02)]
    straight = suite.run_suite(f, x, y, specs, batch_size=16, key=jax.random.PRNGKey(2))
    rows_dir = str(tmp_path / "rows")

    def interrupt_after_row_1(i, spec, acc):
        if i == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        suite.run_suite(f, x, y, specs, batch_size=16, key=jax.random.PRNGKey(2),
                        resume_dir=rows_dir, progress=interrupt_after_row_1)
    assert sorted(os.listdir(rows_dir)) == ["row00.json", "row01.json"]
    stamps = {n: os.stat(os.path.join(rows_dir, n)).st_mtime_ns for n in os.listdir(rows_dir)}
    resumed = suite.run_suite(f, x, y, specs, batch_size=16, key=jax.random.PRNGKey(2),
                              resume_dir=rows_dir)
    assert resumed.rows == straight.rows
    np.testing.assert_array_equal(resumed.correct, straight.correct)
    assert all(os.stat(os.path.join(rows_dir, n)).st_mtime_ns == t for n, t in stamps.items())
    # Other settings (here another key) make every row run again.
    suite.run_suite(f, x, y, specs, batch_size=16, key=jax.random.PRNGKey(3),
                    resume_dir=rows_dir)
    assert all(os.stat(os.path.join(rows_dir, n)).st_mtime_ns != t for n, t in stamps.items())


@pytest.mark.slow
def test_command_line_errors(idx_dir, tmp_path):
    wd = str(tmp_path / "run")
    missing = str(tmp_path / "missing")
    p = in_process("experiments.mnist", *_mnist_flags(wd, missing, "--steps=1"))
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "missing" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = in_process("experiments.mnist", *_mnist_flags(wd, missing, "--steps=1"),
                   env={"ROBUSTJAX_TRACEBACK": "1"})
    assert p.returncode == 1 and "Traceback" in p.stderr and "DataError" in p.stderr
    # Ranges and choices are absl validators: checked when the flags are parsed.
    for bad in ("--eps=-1", "--steps=0", "--optimizer=sgd"):
        p = in_process("experiments.mnist", *_mnist_flags(wd, idx_dir, bad))
        assert p.returncode == 1 and bad.split("=")[0] in p.stderr, (bad, p.stderr)
        assert "Traceback" not in p.stderr and not os.path.exists(wd)
