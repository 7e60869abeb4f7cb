"""Shared flags and runner of the table entry points (paper Tables 1 and 2).

Each finished row is kept in OUTPUT_DIR/rows (robustjax.runtime.rowstore): an
interrupted table resumes when the same command is rerun, skipping the rows
already done, with the same result as an uninterrupted run.
"""

from __future__ import annotations

import os
import time

import jax
from absl import app, flags

from experiments import eval_flags
from experiments.log_setup import setup_logging
from robustjax.data import datasets as data
from robustjax.runtime import mesh
from robustjax.evaluation import suite
from robustjax import training as train

FLAGS = flags.FLAGS

eval_flags.model("Workdir of the evaluated model A (a training run)", data_dir=False)
flags.DEFINE_string("source_a_prime", None, "Workdir of A': an independently trained copy "
                    "of A (same recipe, another seed). Adds its transfer rows.")
flags.DEFINE_string("data_dir", None, "Raw dataset files (default: the data_dir A was "
                    "trained with, else TFDS).")
eval_flags.examples(-1)
eval_flags.smoothing()
flags.DEFINE_integer("batch_size", 500, "Examples per attack call.")
flags.DEFINE_integer("seed", 0, "Seed of the random starts and targets.")
flags.DEFINE_string("output_dir", None, "Where results.json, results.md, the finished rows "
                    "(rows/; a rerun of the same command skips them) and adversarial examples "
                    "go (default: WORKDIR/table).")
flags.DEFINE_bool("save_adversarial", False, "Save each row's adversarial examples as "
                  "OUTPUT_DIR/adversarial/rowNN.npy.")
flags.DEFINE_enum("suite", "paper", ["paper", "autoattack", "min_norm", "all"],
                  "Rows: the paper's ('paper'), natural + the AutoAttack ensemble "
                  "('autoattack'), natural + the minimum-norm FMN attack counted at eps "
                  "('min_norm'), or all of them plus the IBP- and CROWN-IBP-certified accuracy "
                  "('all': the lower side of the bracket, after the worst case, which covers "
                  "every attack row; a certified example broken by any row is an error).")

SUITES = ("paper", "autoattack", "min_norm", "all")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")


def suite_specs(paper_specs: list, which: str) -> list:
    """The rows of ``--suite``: the paper's rows, AutoAttack's (standard version), FMN's
    (100 steps, its smallest adversarial point counted where it lies within eps), or all."""
    if which not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {which!r}")
    natural = paper_specs[0]
    autoattack = suite.AttackSpec("AutoAttack", attack="autoattack", eps=natural.eps)
    fmn = suite.AttackSpec("FMN", attack="fmn", norm=natural.norm, eps=natural.eps)
    if which == "paper":
        return paper_specs
    if which == "autoattack":
        return [natural, autoattack]
    if which == "min_norm":
        return [natural, fmn]
    return paper_specs + [autoattack, fmn]


CERTIFIED_TITLES = dict(ibp="IBP-certified", crown_ibp="CROWN-IBP-certified")


def certified_rows(logits_fn, x, y, eps: float, worst_case_correct) -> list:
    """Rows of the accuracy certified at ``eps`` (L-inf) by IBP and CROWN-IBP, bracket-checked."""
    import numpy as np

    from robustjax.evaluation import bracket
    from robustjax.certify import verifier as certify

    rows = []
    for method, title in CERTIFIED_TITLES.items():
        ok = np.asarray(certify.certified(logits_fn, x, y, eps=eps, method=method))
        bracket.check_bracket({method: ok}, {"the worst case of the attack rows":
                                             np.asarray(worst_case_correct)}, eps=eps)
        rows.append(dict(name=title, attack="certified", method=method, norm="linf",
                         eps=float(eps), steps=None, step_size=None, restarts=None, loss=None,
                         source="-", accuracy=float(ok.mean()), bound="lower"))
    return rows


def smoothing_row(logits_fn, x, y, spec, out: str) -> dict:
    """The accuracy of the model's smoothed classifier certified by randomized smoothing
    (Cohen et al. 2019) at the table's eps: the L2 radius covering its ball (an L-inf eps
    times sqrt(d)). A lower bound for the smoothed classifier, not for the model itself, so
    it is not checked against the attack rows."""
    c = eval_flags.smoothing_certified(logits_fn, x, y, [spec.eps], norm=spec.norm,
                                       resume_dir=os.path.join(out, "smoothing"))
    return dict(name=f"Smoothing-certified (sigma {c['sigma']:g}, L2 {c['l2_radius'][0]:.3g})",
                attack="certified", method="smoothing", norm=spec.norm, eps=float(spec.eps),
                steps=None, step_size=None, restarts=None, loss=None, source="-",
                accuracy=c["accuracy"][0], bound="lower (smoothed classifier)",
                l2_radius=c["l2_radius"][0], sigma=c["sigma"], n0=c["n0"], n=c["n"],
                alpha=c["alpha"])


def run(argv, make_specs, *, sources: dict[str, str], dataset_family: tuple) -> dict:
    """Loads A and the sources, runs the rows, writes results.json and results.md."""
    eval_flags.no_arguments(argv)
    setup_logging()
    if not FLAGS.workdir:
        raise app.UsageError("--workdir (the evaluated model's training workdir) is required")
    run_a = train.load_run(FLAGS.workdir)
    cfg = run_a.config
    if cfg.data.dataset not in dataset_family:
        raise app.UsageError(f"--workdir holds a {cfg.data.dataset} model; this table is for "
                             f"{'/'.join(dataset_family)}")
    loaded = {}
    for name, wd in sources.items():
        if wd:
            src = train.load_run(wd)
            if src.config.data.dataset != cfg.data.dataset:
                raise app.UsageError(f"source {name} ({wd}) is a {src.config.data.dataset} model, "
                                     f"A is {cfg.data.dataset}")
            loaded[name] = src
    x, y = data.load(cfg.data.dataset, "test", FLAGS.data_dir or cfg.data.data_dir)
    n = len(x) if FLAGS.examples == -1 else min(FLAGS.examples, len(x))
    x, y = x[:n].astype("float32") / 255.0, y[:n]
    specs = suite_specs(make_specs(set(loaded)), FLAGS.suite)
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "table")
    primary = mesh.is_primary()  # process 0 writes the files
    if primary:
        os.makedirs(out, exist_ok=True)
    t0 = time.time()

    def progress(i, spec, acc):
        if not primary:
            return
        steps = f"{spec.steps} " if spec.attack == "pgd" else ""
        print(f"[{time.time() - t0:7.1f}s] row {i + 1}/{len(specs)}: {spec.name} "
              f"{steps}x{spec.restarts} source {spec.source}: {100 * acc:.2f}%", flush=True)

    res = suite.run_suite(run_a.logits_fn, x, y, specs,
                          sources={k: v.logits_fn for k, v in loaded.items()},
                          batch_size=FLAGS.batch_size, key=jax.random.PRNGKey(FLAGS.seed),
                          save_dir=os.path.join(out, "adversarial") if FLAGS.save_adversarial
                          else None, resume_dir=os.path.join(out, "rows"), progress=progress)
    rows = list(res.rows)
    if FLAGS.suite == "all":
        rows += certified_rows(run_a.logits_fn, x, y, specs[0].eps, res.worst_case_correct)
    if FLAGS.smoothing_sigma > 0:
        rows.append(smoothing_row(run_a.logits_fn, x, y, specs[0], out))
    results = dict(
        dataset=cfg.data.dataset, split="test", n=int(n),
        model=dict(arch=train.build_model(cfg).__class__.__name__, width=cfg.model.width,
                   params=run_a.params),
        training=dict(cfg.to_json(), final_step=run_a.step, workdir=os.path.abspath(FLAGS.workdir)),
        sources={k: dict(workdir=os.path.abspath(sources[k]), width=v.config.model.width,
                         train_attack=v.config.threat.train_attack, seed=v.config.run.seed,
                         params=v.params) for k, v in loaded.items()},
        eval=dict(seed=FLAGS.seed, batch_size=FLAGS.batch_size, suite=FLAGS.suite,
                  seconds=time.time() - t0, devices=jax.device_count(),
                  processes=jax.process_count()),
        rows=rows)
    if not primary:
        return results
    suite.write_results(os.path.join(out, "results.json"), results)
    eval_flags.print_warnings([w for r in rows for w in r.get("warnings", [])])
    print(suite.markdown_table(rows))
    print(f"results: {os.path.join(out, 'results.json')} and results.md")
    return results
