"""End-to-end tests of the experiment entry points (tiny runs, real files).

Each entry point runs once as a real process (the exit-status contract); its
other runs and its flag errors run in this process (:mod:`entry`), on the
shared tiny workdirs of ``conftest.tiny_runs``.
"""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import TINY_FLAGS as TINY
from entry import in_process, subprocess_run as _run

ROW_KEYS = {"attack", "norm", "eps", "steps", "step_size", "restarts", "loss", "source",
            "accuracy"}


def _usage_error(p, what):
    """One clean error: status 1, the flag named, no traceback."""
    assert p.returncode == 1 and what in p.stderr and "Traceback" not in p.stderr, p.stderr


def _check_results(path, n_rows):
    res = json.load(open(path))
    assert {"dataset", "split", "n", "model", "training", "rows"} <= set(res)
    assert res["split"] == "test" and res["n"] == 30
    assert {"arch", "width", "params"} <= set(res["model"])
    assert len(res["rows"]) == n_rows
    for r in res["rows"]:
        assert ROW_KEYS <= set(r) and 0 <= r["accuracy"] <= 1
    return res


@pytest.mark.slow
def test_mnist_entry_point_and_resume(tiny_runs, idx_dir, tmp_path):
    # The shared PGD-trained run is a real `python -m experiments.mnist` process.
    assert "| Method |" in tiny_runs.stdout and "step 3/3" in tiny_runs.stdout
    _check_results(os.path.join(tiny_runs.pgd, "results.json"), 4)  # natural, FGSM, PGD-2, worst
    wd = str(tmp_path / "wd")
    shutil.copytree(tiny_runs.pgd, wd)
    p = in_process("experiments.mnist", f"--workdir={wd}", f"--data_dir={idx_dir}",
                   "--width=1", *[a if a != "--steps=3" else "--steps=4" for a in TINY])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from step 3" in p.stdout and "step 4/4" in p.stdout


def test_mnist_entry_point_errors(idx_dir, tmp_path):
    p = in_process("experiments.mnist", f"--workdir={tmp_path}",
                   f"--data_dir={tmp_path}/missing", "--steps=1")
    assert p.returncode == 1 and "missing" in p.stderr
    _usage_error(in_process("experiments.mnist", f"--workdir={tmp_path}",
                            f"--data_dir={idx_dir}", "--train_attack=cw"), "train_attack")


@pytest.mark.slow
def test_capacity_entry_point(idx_dir, tmp_path, monkeypatch):
    """The mission's command with no --workdir: it trains into the default workdir it
    prints, and the same command rerun resumes there."""
    pytest.importorskip("matplotlib")
    p = _run("experiments.mnist_capacity", "--width=1", f"--data_dir={idx_dir}", *TINY,
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "workdir: workdirs/mnist_capacity (the default" in p.stdout
    wd = str(tmp_path / "workdirs" / "mnist_capacity")
    res = _check_results(os.path.join(wd, "width_1", "results.json"), 12)  # 3 models x 4
    assert {r["train_attack"] for r in res["rows"]} == {"none", "fgsm", "pgd"}
    assert os.path.getsize(os.path.join(wd, "capacity.png")) > 10_000
    sweep = json.load(open(os.path.join(wd, "results.json")))  # combined over widths
    assert sweep["widths"] == [1] and len(sweep["rows"]) == 12
    losses = sweep["training_loss"]["1"]
    assert set(losses) == {"none", "fgsm", "pgd"} and all(v > 0 for v in losses.values())
    last = [json.loads(line) for line in open(os.path.join(wd, "width_1", "pgd",
                                                           "metrics.jsonl"))][-1]
    assert losses["pgd"] == pytest.approx(last["loss"])  # 3 steps: the last 10% is one record
    monkeypatch.chdir(tmp_path)
    p = in_process("experiments.mnist_capacity", "--width=1", f"--data_dir={idx_dir}", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("resumed from step 3") == 3, p.stdout[-3000:]
    p = in_process("experiments.mnist_capacity", "--width=3", f"--data_dir={idx_dir}", *TINY)
    assert p.returncode != 0 and "width must be one of" in p.stderr


def test_main_command_without_tfds_fails_in_one_line(tmp_path):
    """``python -m experiments.mnist_capacity --width=4`` and nothing else, on a machine
    without TensorFlow Datasets: one line naming --data_dir, status 1, within 30 s."""
    import time

    stubs = tmp_path / "stubs"
    for name in ("tensorflow", "tensorflow_datasets"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    t0 = time.time()
    p = _run("experiments.mnist_capacity", "--width=4", cwd=tmp_path,
             PYTHONPATH=str(stubs), timeout=120)
    seconds = time.time() - t0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines[-1].startswith("error: ") and "--data_dir" in lines[-1], p.stderr[-3000:]
    assert "workdirs/mnist_capacity" in p.stdout
    assert seconds < 30, f"{seconds:.0f} s"


@pytest.mark.slow
def test_mnist_table_entry_point(tiny_runs, tmp_path):
    a, b = tiny_runs.pgd, tiny_runs.none  # B: natural training, another seed
    out = str(tmp_path / "table")
    p = _run("experiments.mnist_table", f"--workdir={a}", f"--source_a_prime={b}",
             f"--source_b={b}", "--examples=30", "--restarts=2", f"--output_dir={out}",
             "--save_adversarial", "--batch_size=30")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _check_results(os.path.join(out, "results.json"), 9 + 5 + 3 + 1)
    rows = res["rows"]
    assert [r["source"] for r in rows] == ["A"] * 9 + ["A'"] * 5 + ["B"] * 3 + ["all"]
    assert [r["name"] for r in rows[:9]] == ["Natural", "FGSM", "PGD", "PGD", "PGD", "PGD",
                                             "Targeted", "CW", "CW+"]
    assert [(r["steps"], r["restarts"]) for r in rows[2:6]] == [(40, 1), (100, 1), (40, 2),
                                                                (100, 2)]
    assert rows[8]["kappa"] == 50.0 and rows[6]["targeted"] == "all"
    assert all(r["eps"] == 0.3 for r in rows[1:])
    assert rows[-1]["accuracy"] == min(r["accuracy"] for r in rows)
    assert set(res["sources"]) == {"A'", "B"} and res["sources"]["B"]["train_attack"] == "none"
    md = open(os.path.join(out, "results.md")).read()
    assert md.startswith("| Method | eps | Steps |") and md.count("\n") == 2 + len(rows)
    assert len(os.listdir(os.path.join(out, "adversarial"))) == len(rows) - 1
    p = in_process("experiments.mnist_table", f"--workdir={a}", "--source_b=/nonexistent")
    assert p.returncode != 0 and "/nonexistent" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    # --suite=autoattack: natural + the AutoAttack ensemble, covered by the worst case.
    # ... and the smoothed classifier's certified row at the L2 radius 0.3 * 28 (n = 50 allows
    # at most 0.28: none certified there).
    out = str(tmp_path / "table_aa")
    p = in_process("experiments.mnist_table", f"--workdir={a}", "--examples=30",
                   "--suite=autoattack", f"--output_dir={out}", "--batch_size=30",
                   "--smoothing_sigma=0.25", "--smoothing_n=50", "--smoothing_n0=10")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _check_results(os.path.join(out, "results.json"), 4)["rows"]
    assert [r["attack"] for r in rows] == ["natural", "autoattack", "worst_case", "certified"]
    assert set(rows[1]["after"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert rows[2]["accuracy"] == rows[1]["accuracy"] <= rows[0]["accuracy"]
    assert rows[3]["method"] == "smoothing" and rows[3]["accuracy"] == 0.0
    assert rows[3]["l2_radius"] == pytest.approx(0.3 * 28) and rows[3]["sigma"] == 0.25


def test_table_suites():
    import sys

    from entry import fresh_module

    table1_specs = fresh_module("experiments.mnist_table").table1_specs
    suite_specs = sys.modules["experiments.tables"].suite_specs  # imported with it

    paper = table1_specs(set())
    assert suite_specs(paper, "paper") == paper
    assert [s.attack for s in suite_specs(paper, "autoattack")] == ["natural", "autoattack"]
    assert [s.attack for s in suite_specs(paper, "min_norm")] == ["natural", "fmn"]
    both = suite_specs(paper, "all")
    assert both[:-2] == paper and [s.attack for s in both[-2:]] == ["autoattack", "fmn"]
    assert both[-1].eps == 0.3 and both[-1].norm == "linf"


@pytest.mark.slow
def test_certify_entry_point(tiny_runs, tmp_path):
    wd = tiny_runs.pgd
    p = _run("experiments.certify", f"--workdir={wd}", "--examples=12", "--eps=0,0.01",
             "--num_steps=3", "--num_queries=10", "--batch_size=12", "--crown_batch_size=12",
             f"--output_dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(tmp_path / "certify.json"))
    assert [e["eps"] for e in res["eps"]] == [0.0, 0.01] and res["n_examples"] == 12
    at0, at1 = res["eps"]
    # At eps 0 every correctly classified example is certified (and none other).
    for m in ("ibp", "crown_ibp", "crown"):
        assert at0["per_example"][m] == at0["per_example"]["clean"], m
        assert at1["certified_acc"][m] <= at1["attacked_acc"]["autoattack"]
    assert at1["lower"] <= at1["upper"] <= at1["clean_acc"]
    md = open(tmp_path / "certify.md").read()
    assert "CROWN-certified" in md and "bracket" in md
    for bad, what in (("--eps=-1", "--eps"), ("--methods=lp", "--methods")):
        _usage_error(in_process("experiments.certify", f"--workdir={wd}", bad), what)


@pytest.mark.slow
def test_autoattack_entry_point(tiny_runs, tmp_path):
    wd = tiny_runs.pgd
    p = _run("experiments.autoattack", f"--workdir={wd}", "--examples=30", "--num_steps=3",
             "--num_queries=20", "--batch_size=16", "--eps=0.1", f"--output_dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| AutoAttack | 0.1 |" in p.stdout and "ETA" in p.stdout
    res = json.load(open(os.path.join(tmp_path, "autoattack.json")))
    assert {"clean_acc", "robust_acc", "accuracy_after", "eps", "norm", "version",
            "n_examples", "seconds"} <= set(res)
    assert res["n_examples"] == 30 and res["eps"] == 0.1 and res["norm"] == "linf"
    assert list(res["accuracy_after"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert res["robust_acc"] <= res["clean_acc"]
    assert os.path.isfile(os.path.join(tmp_path, "autoattack.md"))
    # Several threat models: each in its own directory, and one table of all.
    p = in_process("experiments.autoattack", f"--workdir={wd}", "--examples=12",
                   "--num_steps=3", "--num_queries=10", "--batch_size=16", "--norm=linf,l1",
                   "--eps=0.1,2", f"--output_dir={tmp_path / 'multi'}")
    assert p.returncode == 0, p.stderr[-3000:]
    both = json.load(open(tmp_path / "multi" / "threat_models.json"))
    assert [(t["norm"], t["eps"]) for t in both["threat_models"]] == [("linf", 0.1), ("l1", 2.0)]
    assert "AutoAttack (L1)" in open(tmp_path / "multi" / "threat_models.md").read()
    l1_res = json.load(open(tmp_path / "multi" / "autoattack_l1_2" / "autoattack.json"))
    assert l1_res["norm"] == "l1" and l1_res["robust_acc"] == both["threat_models"][1][
        "robust_acc"]
    for bad, what in (("--eps=-1", "--eps"), ("--norm=l2", "--eps is required"),
                      ("--examples=0", "--examples"), ("--norm=linf,l1", "--eps is required"),
                      ("--norm=l3", "--norm")):
        _usage_error(in_process("experiments.autoattack", f"--workdir={wd}", bad), what)
    p = in_process("experiments.autoattack", f"--workdir={tmp_path / 'missing'}")
    assert p.returncode == 1 and "missing" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_loss_landscape_entry_point(tiny_runs, tmp_path):
    pytest.importorskip("matplotlib")
    p = _run("experiments.loss_landscape", f"--workdir={tiny_runs.pgd}",
             f"--natural_workdir={tiny_runs.none}", "--restarts=6", "--examples=2",
             "--steps=3", "--chunk_size=4", "--trajectories=3", "--bins=5",
             f"--output_dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "restarts/s" in p.stdout and "ETA" in p.stdout
    res = json.load(open(tmp_path / "landscape.json"))
    assert [m["train_attack"] for m in res["models"]] == ["pgd", "none"]
    finals = np.load(tmp_path / "landscape.npz")
    for k, m in enumerate(res["models"]):
        assert len(m["examples"]) == 2
        for i, ex in enumerate(m["examples"]):
            assert sum(ex["histogram"]["counts"]) == 6  # every restart counted once
            assert np.asarray(ex["trajectories"]).shape == (3, 4)
            assert ex["max"] == pytest.approx(float(finals[f"final_{k}"][i].max()), rel=1e-6)
            assert ex["trajectories"][0][-1] == pytest.approx(
                float(finals[f"final_{k}"][i][0]), rel=1e-6)
    for png in ("loss_trajectories.png", "loss_histograms.png"):
        assert os.path.getsize(tmp_path / png) > 5_000
    _usage_error(in_process("experiments.loss_landscape", f"--workdir={tiny_runs.pgd}",
                            "--restarts=0"), "--restarts")


@pytest.mark.slow
def test_eps_sweep_entry_point(tiny_runs, tmp_path):
    pytest.importorskip("matplotlib")
    p = _run("experiments.eps_sweep", f"--workdir={tiny_runs.pgd}",
             f"--natural_workdir={tiny_runs.none}", "--norm=l2", "--eps=0,1,0.5,8",
             "--attacks=pgd,square", "--examples=20", "--num_steps=2", "--num_queries=10",
             "--batch_size=16", "--min_norm=fmn", f"--output_dir={tmp_path}",
             "--smoothing_sigma=0.25", "--smoothing_n=50", "--smoothing_n0=10")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "eps0_equals_clean (pgd): ok" in p.stdout
    res = json.load(open(tmp_path / "eps_sweep_l2.json"))
    assert res["n_examples"] == 20 and len(res["models"]) == 2
    for m in res["models"]:
        for name, c in m["curves"].items():
            assert c["eps"] == [0, 0.5, 1, 8]  # sorted
            assert c["accuracy"][0] == m["clean_accuracy"]
            assert [row.count("1") / 20 for row in c["correct"]] == pytest.approx(c["accuracy"])
        checks = {(c["check"], c["attack"]): c["passed"] for c in m["checks"]}
        assert checks[("eps0_equals_clean", "pgd")] and checks[("eps0_equals_clean", "square")]
        assert not any(k[0] == "gradient_free_not_stronger" for k in checks)  # L2 sweep
        # The certified curves (default IBP and CROWN-IBP) lie under every attack curve;
        # smoothing's bounds the smoothed classifier: n = 50 certifies no L2 radius of 0.5.
        assert set(m["certified"]) == {"ibp", "crown_ibp", "smoothing"}
        smooth = m["certified"].pop("smoothing")
        assert smooth["eps"] == [0, 0.5, 1, 8] and smooth["accuracy"][1:] == [0, 0, 0]
        assert smooth["classifier"] == "smoothed" and smooth["l2_radius"] == smooth["eps"]
        for c in m["certified"].values():
            assert c["accuracy"][0] == m["clean_accuracy"]    # eps 0: certified = correct
            for a in m["curves"].values():
                assert all(l <= u for l, u in zip(c["accuracy"], a["accuracy"]))
        # The curve from FMN's distances: clean accuracy at 0, nonincreasing, its median.
        fmn = m["min_norm"]["fmn"]
        assert fmn["accuracy"][0] == m["clean_accuracy"] and len(fmn["norms"]) == 20
        assert all(a >= b for a, b in zip(fmn["grid_accuracy"], fmn["grid_accuracy"][1:]))
        assert fmn["median"] == pytest.approx(float(np.median(fmn["norms"])))
    assert "fmn (min-norm, median" in open(tmp_path / "eps_sweep_l2.md").read()
    assert os.path.getsize(tmp_path / "eps_sweep_l2.png") > 5_000
    assert "| square |" in open(tmp_path / "eps_sweep_l2.md").read()
    assert "| ibp-certified |" in open(tmp_path / "eps_sweep_l2.md").read()
    for bad, what in (("--attacks=cw", "--attacks"), ("--eps=0,x", "--eps"),
                      ("--certify=lp", "--certify"), ("--min_norm=ddn", "--min_norm"),
                      ("--min_norm=pgd", "--min_norm")):
        _usage_error(in_process("experiments.eps_sweep", f"--workdir={tiny_runs.pgd}", bad),
                     what)


@pytest.mark.slow
def test_smoothing_entry_point_and_resume(tiny_runs, tmp_path):
    pytest.importorskip("matplotlib")
    args = (f"--workdir={tiny_runs.pgd}", "--sigma=0.25", "--n0=20", "--n=200", "--batch=100",
            "--examples=6", "--skip=3", "--chunk=4", "--aa_radii=0,0.5", "--aa_steps=2",
            "--aa_samples=2", "--aa_n=50", f"--output_dir={tmp_path}")
    p = in_process("experiments.smoothing", *args)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(tmp_path / "smoothing.json"))
    assert [r["index"] for r in res["rows"]] == [0, 3, 6, 9, 12, 15]
    assert res["summary"]["radii"] == [0, 0.25, 0.5, 0.75, 1.0]
    acc = res["summary"]["certified_accuracy"]
    assert all(a >= b for a, b in zip(acc, acc[1:])) and acc[-1] == 0  # n = 200: r <= 0.56
    assert [pt["radius"] for pt in res["empirical"]] == [0, 0.5]
    assert res["empirical"][0]["soft_accuracy"] is None
    assert "certified accuracy" in open(tmp_path / "smoothing.md").read()
    assert os.path.getsize(tmp_path / "smoothing.png") > 5_000
    assert sorted(os.listdir(tmp_path / "rows")) == ["chunk0000000.json", "chunk0000004.json"]
    p = in_process("experiments.smoothing", *args)    # rerun: the stored chunks, same table
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.load(open(tmp_path / "smoothing.json"))["rows"] == res["rows"]
    for bad, what in (("--alpha=1.5", "--alpha"), ("--sigma=-1", "--sigma"), ("--n=0", "--n"),
                      ("--radii=a", "--radii")):
        _usage_error(in_process("experiments.smoothing", f"--workdir={tiny_runs.pgd}", bad),
                     what)
    _usage_error(in_process("experiments.smoothing", f"--workdir={tiny_runs.pgd}"), "--sigma")


@pytest.mark.slow
def test_cifar10_entry_points(cifar_dir, tmp_path):
    wd = str(tmp_path / "cifar")
    p = _run("experiments.cifar10", f"--workdir={wd}", f"--data_dir={cifar_dir}", "--width=1",
             "--steps=2", "--batch_size=8", "--attack_steps=1", "--log_every=1",
             "--eval_examples=30", "--eval_batch_size=30", "--eval_attack_steps=1")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _check_results(os.path.join(wd, "results.json"), 4)
    assert res["model"]["arch"] == "CifarResNet" and res["training"]["optim"]["optimizer"] == "momentum"
    assert res["training"]["optim"]["lr_boundaries"] == [40000, 60000]
    assert abs(res["rows"][1]["eps"] - 8 / 255) < 1e-9
    out = str(tmp_path / "table")
    p = _run("experiments.cifar10_table", f"--workdir={wd}", f"--source_a_nat={wd}",
             "--examples=30", f"--output_dir={out}", "--batch_size=30")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _check_results(os.path.join(out, "results.json"), 5 + 3 + 1)
    assert [(r["name"], r["steps"]) for r in res["rows"][:5]] == [
        ("Natural", 0), ("FGSM", 1), ("PGD", 7), ("PGD", 20), ("CW", 30)]
    p = in_process("experiments.cifar10", f"--workdir={tmp_path / 'x'}", "--dataset=mnist")
    assert p.returncode != 0 and "--dataset must be one of ('cifar10',)" in p.stderr


@pytest.mark.slow
def test_compare_training_entry_point(idx_dir, tmp_path):
    """One method end to end: training with EMA and validation, the last / averaged / best
    weights under clean, PGD and AutoAttack, the table, the JSON and both plots; a rerun
    resumes everything (no training step, no attack is redone)."""
    pytest.importorskip("matplotlib")
    root = str(tmp_path / "cmp")
    args = ["experiments.compare_training", "--dataset=mnist", f"--data_dir={idx_dir}",
            f"--root={root}", "--methods=fast_at", "--width=1", "--steps=4", "--batch_size=20",
            "--eval_every=2", "--val_examples=40", "--val_attack_steps=2", "--checkpoint_every=2",
            "--log_every=2", "--test_examples=20", "--attack_batch_size=20",
            "--eval_pgd_steps=2", "--ema_decay=0.5"]
    p = _run(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(os.path.join(root, "comparison.json")))
    assert res["n"] == 20 and res["dataset"] == "mnist" and res["methods"] == ["fast_at"]
    assert [(r["method"], r["weights"]) for r in res["rows"]] == [
        ("fast_at", "last"), ("fast_at", "ema"), ("fast_at", "best")]
    for r in res["rows"]:
        assert 0 <= r["autoattack"] <= r["pgd"] + 0.05 and r["pgd"] <= r["clean"]
        assert r["train_s"] > 0
    assert res["best"]["fast_at"]["best_step"] in (2, 4)
    assert "| Fast AT (FGSM-RS) | ema |" in open(os.path.join(root, "comparison.md")).read()
    for png in ("validation.png", "clean_vs_autoattack.png"):
        assert os.path.getsize(os.path.join(root, png)) > 5000
    cfg = json.load(open(os.path.join(root, "fast_at", "config.json")))
    assert cfg["threat"]["train_attack"] == "fgsm_rs" and cfg["optim"]["ema_decay"] == 0.5
    p = in_process(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 2/4" not in p.stdout + p.stderr  # nothing retrained
    strip = lambda rows: [{k: v for k, v in r.items() if k != "eval_s"} for r in rows]  # noqa
    assert strip(json.load(open(os.path.join(root, "comparison.json")))["rows"]) == strip(
        res["rows"])


def test_compare_training_errors(tmp_path):
    p = in_process("experiments.compare_training", f"--root={tmp_path}",
                   "--methods=natural,mart")
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: methods")
    p = in_process("experiments.compare_training", f"--root={tmp_path}", "--methods=madry:2")
    assert p.returncode == 1 and "trades:BETA" in p.stderr
    p = in_process("experiments.compare_training", f"--root={tmp_path}", "--dataset=cifar10")
    assert p.returncode != 0 and "--dataset" in p.stderr


@pytest.mark.slow
def test_adaptive_entry_point(tiny_runs, idx_dir, tmp_path):
    """experiments.adaptive: the report, both AutoAttack runs, the side-by-side table."""
    args = (f"--workdir={tiny_runs.pgd}", f"--data_dir={idx_dir}", "--examples=12",
            "--version=custom", "--attacks=apgd-ce", "--num_steps=3", "--batch_size=12",
            "--eot_samples=2")
    p = in_process("experiments.adaptive", *args, "--defence=quantize:3,noise:0.05",
                   f"--output_dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(tmp_path / "adaptive.json"))
    assert res["wrappers"] == ["bpda(quantize:3)", "eot(2)"]
    kinds = {f["kind"] for f in res["inspection"]["findings"]}
    assert kinds == {"zero-gradient", "random"}
    assert [r["attack"] for r in res["rows"]] == ["clean", "after apgd-ce", "AutoAttack"]
    assert res["given"]["clean_acc"] == res["adaptive"]["clean_acc"]
    assert "| | as given | adaptive | gap |" in open(tmp_path / "adaptive.md").read()
    assert "warnings (" in p.stdout and "| warning | zero-gradient | `round` |" in p.stdout
    for bad, what in (("--defence=blur:3", "--defence"), ("--eot_samples=0", "--eot_samples"),
                      ("--attacks=square", "--attacks goes with")):
        _usage_error(in_process("experiments.adaptive", f"--workdir={tiny_runs.pgd}", bad), what)
