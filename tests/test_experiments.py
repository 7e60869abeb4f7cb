"""End-to-end smoke tests of the experiment entry points (tiny runs, real files)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

TINY = ["--steps=3", "--batch_size=20", "--attack_steps=2", "--log_every=1",
        "--checkpoint_every=2", "--eval_examples=30", "--eval_batch_size=30",
        "--eval_attack_steps=2", "--lr=1e-3"]
ROW_KEYS = {"attack", "norm", "eps", "steps", "step_size", "restarts", "loss", "source",
            "accuracy"}


def _run(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _check_results(path, n_rows):
    res = json.load(open(path))
    assert {"dataset", "split", "n", "model", "training", "rows"} <= set(res)
    assert res["split"] == "test" and res["n"] == 30
    assert {"arch", "width", "params"} <= set(res["model"])
    assert len(res["rows"]) == n_rows
    for r in res["rows"]:
        assert ROW_KEYS <= set(r) and 0 <= r["accuracy"] <= 1
    return res


def test_mnist_entry_point_and_resume(idx_dir, tmp_path):
    wd = str(tmp_path / "wd")
    p = _run("experiments.mnist", f"--workdir={wd}", f"--data_dir={idx_dir}", "--width=1", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| Method |" in p.stdout and "step 3/3" in p.stdout
    _check_results(os.path.join(wd, "results.json"), 3)  # natural, FGSM, PGD-2
    p = _run("experiments.mnist", f"--workdir={wd}", f"--data_dir={idx_dir}", "--width=1",
             *[a if a != "--steps=3" else "--steps=4" for a in TINY])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from step 3" in p.stdout


def test_mnist_entry_point_errors(idx_dir, tmp_path):
    p = _run("experiments.mnist", f"--workdir={tmp_path}", f"--data_dir={tmp_path}/missing",
             "--steps=1")
    assert p.returncode != 0 and "missing" in p.stderr
    p = _run("experiments.mnist", f"--workdir={tmp_path}", f"--data_dir={idx_dir}",
             "--train_attack=cw")
    assert p.returncode != 0 and "train_attack" in p.stderr


def test_capacity_entry_point(idx_dir, tmp_path):
    pytest.importorskip("matplotlib")
    wd = str(tmp_path / "cap")
    p = _run("experiments.mnist_capacity", "--width=1", f"--workdir={wd}",
             f"--data_dir={idx_dir}", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    res = _check_results(os.path.join(wd, "width_1", "results.json"), 9)  # 3 models x 3
    assert {r["train_attack"] for r in res["rows"]} == {"none", "fgsm", "pgd"}
    assert os.path.getsize(os.path.join(wd, "capacity.png")) > 10_000
    p = _run("experiments.mnist_capacity", "--width=3", f"--workdir={wd}",
             f"--data_dir={idx_dir}", *TINY)
    assert p.returncode != 0 and "width must be one of" in p.stderr
