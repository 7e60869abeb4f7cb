"""benchmarks.accelerator --smoke: every part of the accelerator acceptance runs (CPU, tiny)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from entry import fast_compile_env


@pytest.mark.slow
def test_accelerator_smoke_runs_every_part(tmp_path):
    env = fast_compile_env()  # every part runs; its speed figures are not the point here
    p = subprocess.run([sys.executable, "-m", "benchmarks.accelerator",
                        f"--output_dir={tmp_path}", "--smoke"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.load(open(tmp_path / "cpu-smoke.json"))
    parts = report["parts"]
    assert list(parts) == ["pgd", "pgd_stock", "wrn_step", "mnist_recipe", "autoattack", "tests"]
    for name, rec in parts.items():
        assert rec["status"] == "ok", (name, rec)
    pgd = parts["pgd"]["result"]
    assert pgd["loop_friendly"] and not parts["pgd_stock"]["result"]["loop_friendly"]
    assert all(r["jax_img_s"] > 0 for r in pgd["rows"])
    # A missing peer is said in the rows, never an error.
    assert (report["torch"] is None) == (pgd["peers"] == [])
    step = parts["wrn_step"]["result"]["rows"][0]
    assert step["jax_img_s"] > 0 and (step["torch_img_s"] is None) == (report["torch"] is None)
    assert report["mnist_recipe"]["steps"] == 4 and report["mnist_recipe"][
        "projected_100k_hours"] > 0
    aa = parts["autoattack"]["result"]
    assert aa["examples"] == 10 and "robustjax" in aa
    assert ("pyautoattack" in aa) == (report["pyautoattack"] is not None and report["torch"]
                                      is not None)
    md = open(tmp_path / "cpu-smoke.md").read()
    assert md.startswith("## cpu-smoke (cpu)") and "| pgd | ok |" in md
    assert "Madry's MNIST recipe" in md and "AutoAttack (standard)" in md
