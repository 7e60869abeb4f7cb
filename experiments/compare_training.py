r"""Robust training methods compared under one evaluation: natural, Madry, TRADES and Fast AT.

  python -m experiments.compare_training --dataset=fashion_mnist \
      --data_dir=/usr/share/datasets/fashion-mnist --root=workdirs/compare \
      [--methods=natural,madry,trades,fast_at] [--test_examples=1000] [TrainConfig flags]

Trains each method with the same data, network, steps and seed into
ROOT/<method> (rerunning resumes what is unfinished; a method may be written
``trades:B`` for TRADES with beta B):

* ``natural``: clean cross-entropy (``--train_attack=none``);
* ``madry``: Madry et al. (ICLR 2018), cross-entropy at PGD-k examples;
* ``trades``: Zhang et al. (ICML 2019), clean cross-entropy + beta * KL, the
  KL maximised by PGD-k (``--trades_beta``, default 6);
* ``fast_at``: Wong et al. (ICLR 2020), FGSM of step 1.25 eps from a uniform
  random start.

Every run keeps averaged weights (``--ema_decay``) and scores its raw and
averaged weights on a held-out validation split every ``--eval_every`` steps,
keeping the best checkpoint (Rice et al. 2020). Then the last, averaged and
best weights of each method are evaluated on the first ``--test_examples``
test images: clean, PGD-40 (step 2.5 eps / 40, random start) and the AutoAttack
ensemble (standard version). Finished rows are stored in
ROOT/<method>/eval_<weights> and skipped by a rerun; a best checkpoint that is
the last step's weights is not evaluated twice (its row says ``same_as``).

Writes ROOT/comparison.json, ROOT/comparison.md (method, weights, step, clean,
PGD-40, AutoAttack, training time, notes: a catastrophic overfitting detected
during training marks its method's rows), ROOT/validation.png (robust
validation accuracy during training per method, raw and averaged weights) and
ROOT/clean_vs_autoattack.png.

The defaults are the acceptance recipe (full Fashion-MNIST, eps 0.1, MnistCNN(2),
Adam 1e-3, batch 128, 4,000 steps, PGD-10 of step 0.025). On a 2-core AMD EPYC
the whole comparison took 88 minutes and reached, under AutoAttack on 1,000
test images (averaged weights): natural 0.9%, Madry 61.4%, TRADES 59.9%, Fast AT
55.7%; see docs/training_methods.md and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import app, flags

from experiments import common, eval_flags, figures
from experiments.cli import one_line_errors
from robustjax.runtime import mesh
from robustjax.evaluation import suite
from robustjax import training as train

FLAGS = flags.FLAGS

flags.DEFINE_string("root", None, "Output directory: one workdir per method, the comparison "
                    "files. Rerunning resumes.")
flags.DEFINE_list("methods", ["natural", "madry", "trades", "fast_at"],
                  "Training methods: natural, madry, trades (or trades:BETA), fast_at.")
flags.DEFINE_integer("test_examples", 1000, "First N test images evaluated (-1: all).")
flags.DEFINE_integer("attack_batch_size", 500, "Examples per attack call in the evaluation.")
flags.DEFINE_integer("eval_pgd_steps", 40, "PGD steps of the evaluation's PGD row.")
flags.register_validator("test_examples", lambda v: v == -1 or v >= 1,
                         message="--test_examples must be -1 (all) or positive")
flags.register_validator("attack_batch_size", lambda v: v >= 1,
                         message="--attack_batch_size must be >= 1")
flags.register_validator("eval_pgd_steps", lambda v: v >= 1,
                         message="--eval_pgd_steps must be >= 1")

common.set_defaults(dataset="fashion_mnist", width=2, eps=0.1, attack_steps=10,
                    attack_step_size=0.025, batch_size=128, lr=1e-3, steps=4000,
                    ema_decay=0.995, eval_every=500, val_examples=1000, checkpoint_every=500,
                    log_every=100)

METHODS = ("natural", "madry", "trades", "fast_at")
TITLES = {"natural": "Natural", "madry": "Madry (PGD)", "trades": "TRADES",
          "fast_at": "Fast AT (FGSM-RS)"}


def method_overrides(method: str) -> dict:
    """TrainConfig fields that define ``method`` (the rest is shared by all methods)."""
    name, _, beta = method.partition(":")
    if name not in METHODS or (beta and name != "trades"):
        raise ValueError(f"methods must be among {METHODS} (or trades:BETA), got {method!r}")
    if name == "natural":
        return dict(train_attack="none", objective="madry")
    if name == "madry":
        return dict(train_attack="pgd", objective="madry")
    if name == "fast_at":
        return dict(train_attack="fgsm_rs", objective="madry")
    out = dict(train_attack="pgd", objective="trades")
    if beta:
        try:
            out["trades_beta"] = float(beta)
        except ValueError:
            raise ValueError(f"methods: {method!r}: BETA must be a number") from None
    return out


def method_title(method: str, config) -> str:
    name = method.partition(":")[0]
    if name == "trades":
        return f"TRADES (beta {config.loss.trades_beta:g})"
    if name == "madry":
        return f"Madry (PGD-{config.threat.attack_steps})"
    return TITLES[name]


def eval_specs(eps: float, pgd_steps: int) -> list:
    """Clean, PGD-k (step 2.5 eps / k, random start) and the AutoAttack ensemble."""
    return [suite.AttackSpec("Natural", attack="natural", eps=eps),
            suite.AttackSpec(f"PGD-{pgd_steps}", eps=eps, steps=pgd_steps,
                             step_size=2.5 * eps / pgd_steps),
            suite.AttackSpec("AutoAttack", attack="autoattack", eps=eps)]


def weights_of(config) -> list[str]:
    return ["last"] + (["ema"] if config.optim.ema_decay > 0 else []) + (
        ["best"] if config.evaluation.eval_every > 0 else [])


def evaluate_method(method: str, run_dir: str, x, y, *, pgd_steps: int, batch_size: int,
                    seed: int) -> list[dict]:
    """One comparison row per weights of the run in ``run_dir``."""
    out = []
    with open(os.path.join(run_dir, "results.json")) as f:
        training = json.load(f)["training"]
    with open(os.path.join(run_dir, "config.json")) as f:
        config = train.TrainConfig.from_json(json.load(f))
    evaluated = {}  # (step, "last" | "ema") -> row: the best checkpoint is often the last
    for which in weights_of(config):
        run = train.load_run(run_dir, which)
        kind = "ema" if which == "ema" or (
            which == "best" and config.optim.ema_decay > 0) else "last"
        if (run.step, kind) in evaluated:
            same = evaluated[(run.step, kind)]
            out.append(dict(same, weights=which, same_as=same["weights"], eval_s=0.0))
            print(f"{method:>10s} {which:>4s} (step {run.step}): the same weights as "
                  f"'{same['weights']}'", flush=True)
            continue
        t0 = time.time()
        res = suite.run_suite(run.logits_fn, x, y, eval_specs(run.config.threat.eps, pgd_steps),
                              batch_size=batch_size, key=jax.random.PRNGKey(seed),
                              resume_dir=os.path.join(run_dir, f"eval_{which}"))
        acc = {r["name"]: r["accuracy"] for r in res.rows}
        co = training.get("best", {}).get("catastrophic_overfitting_steps", [])
        row = dict(method=method, title=method_title(method, run.config), weights=which,
                   step=run.step, clean=acc["Natural"], pgd=acc[f"PGD-{pgd_steps}"],
                   autoattack=acc["AutoAttack"], train_s=training.get("train_s"),
                   catastrophic_overfitting_steps=co, eval_s=time.time() - t0)
        print(f"{method:>10s} {which:>4s} (step {run.step}): clean {100 * row['clean']:.2f}%  "
              f"PGD-{pgd_steps} {100 * row['pgd']:.2f}%  AutoAttack "
              f"{100 * row['autoattack']:.2f}%", flush=True)
        out.append(row)
        evaluated[(run.step, kind)] = row
    return out


def markdown(rows: list[dict], pgd_steps: int) -> str:
    lines = [f"| Method | Weights | Step | Clean | PGD-{pgd_steps} | AutoAttack | "
             "Training time | Notes |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        note = ("catastrophic overfitting at step " +
                ", ".join(str(s) for s in r["catastrophic_overfitting_steps"])
                if r["catastrophic_overfitting_steps"] else "")
        weights = r["weights"] + (f" (= {r['same_as']})" if r.get("same_as") else "")
        lines.append(f"| {r['title']} | {weights} | {r['step']} | "
                     f"{100 * r['clean']:.2f}% | {100 * r['pgd']:.2f}% | "
                     f"{100 * r['autoattack']:.2f}% | {r['train_s'] / 60:.1f} min | {note} |")
    return "\n".join(lines) + "\n"


def read_eval_log(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "eval.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_validation(curves: dict, titles: dict, best: dict, path: str) -> None:
    """Robust validation accuracy during training: raw (solid) and averaged (dashed) weights."""
    plt = figures.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (method, recs) in enumerate(curves.items()):
        if not recs:
            continue
        color = f"C{i}"
        steps = [r["step"] for r in recs]
        ax.plot(steps, [100 * r["last"]["robust_acc"] for r in recs], "-o", color=color,
                ms=3, label=f"{titles[method]}: raw")
        if "ema" in recs[0]:
            ax.plot(steps, [100 * r["ema"]["robust_acc"] for r in recs], "--", color=color,
                    label=f"{titles[method]}: averaged")
        co = [r for r in recs if r["catastrophic_overfitting"]]
        if co:
            ax.plot([r["step"] for r in co], [100 * r["last"]["robust_acc"] for r in co], "x",
                    color="k", ms=9, mew=2)
        b = best.get(method)
        if b and b.get("val_robust_acc") is not None:
            ax.plot([b["best_step"]], [100 * b["val_robust_acc"]], "*", color=color, ms=13,
                    mec="k")
    attack = next((recs[0]["attack"] for recs in curves.values() if recs), "")
    ax.set_xlabel("Training step")
    ax.set_ylabel(f"Validation accuracy under {attack} (%)")
    ax.set_title("Robust validation accuracy during training\n(star: best checkpoint kept; "
                 "x: catastrophic overfitting detected)", fontsize=10)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clean_vs_robust(rows: list[dict], path: str, *, eps: float) -> None:
    """Clean accuracy against AutoAttack accuracy, one point per method and weights."""
    plt = figures.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    markers = {"last": "o", "ema": "s", "best": "*"}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for r in rows:
        color = f"C{methods.index(r['method'])}"
        ax.scatter(100 * r["clean"], 100 * r["autoattack"], marker=markers[r["weights"]],
                   s=110 if r["weights"] == "best" else 55, color=color, edgecolor="k",
                   linewidth=0.5, zorder=3)
    for m in methods:
        ax.scatter([], [], marker="o", color=f"C{methods.index(m)}",
                   label=next(r["title"] for r in rows if r["method"] == m))
    for w, mk in markers.items():
        if any(r["weights"] == w for r in rows):
            ax.scatter([], [], marker=mk, color="w", edgecolor="k",
                       label={"last": "last weights", "ema": "averaged weights",
                              "best": "best checkpoint"}[w])
    ax.set_xlabel("Clean test accuracy (%)")
    ax.set_ylabel(f"AutoAttack accuracy, L-inf eps {eps:g} (%)")
    ax.set_title("Clean against robust accuracy per training method", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(root: str, methods: list[str], *, test_examples: int, attack_batch_size: int,
        eval_pgd_steps: int, **config_overrides) -> dict:
    """Trains and evaluates every method; writes and returns the comparison."""
    if not methods:
        raise ValueError("methods must name at least one training method")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat a method, got {methods}")
    overrides = {m: method_overrides(m) for m in methods}
    base = common.config_from_flags(**config_overrides)
    os.makedirs(root, exist_ok=True)
    rows, curves, best, titles = [], {}, {}, {}
    x = y = None
    for m in methods:
        config = common.config_from_flags(**config_overrides, **overrides[m])
        run_dir = os.path.join(root, m.replace(":", "_beta"))
        print(f"== {m}: training in {run_dir}", flush=True)
        res = train.train_and_evaluate(config, run_dir, evaluate=False)
        best[m] = res["training"].get("best", {})
        curves[m] = read_eval_log(run_dir)
        titles[m] = method_title(m, config)
        if x is None:
            x, y = figures.test_data(train.load_run(run_dir, "last"), config.data.data_dir,
                                     test_examples)
        rows += evaluate_method(m, run_dir, x, y, pgd_steps=eval_pgd_steps,
                                batch_size=attack_batch_size, seed=config.run.seed)
    out = dict(dataset=base.data.dataset, split="test", n=int(len(x)), eps=base.threat.eps, norm="linf",
               config={k: v for k, v in base.to_json().items()
                       if k not in ("train_attack", "objective")},
               methods=methods, evaluation=[
                   s.name for s in eval_specs(base.threat.eps, eval_pgd_steps)],
               rows=rows, best=best)
    if not mesh.is_primary():  # process 0 writes the files
        return out
    figures.write_json(os.path.join(root, "comparison.json"), out)
    table = markdown(rows, eval_pgd_steps)
    with open(os.path.join(root, "comparison.md"), "w") as f:
        f.write(f"{base.data.dataset}, L-inf eps {base.threat.eps:g}, first {len(x)} test images\n\n"
                + table)
    print(table)
    plot_validation(curves, titles, best, os.path.join(root, "validation.png"))
    plot_clean_vs_robust(rows, os.path.join(root, "clean_vs_autoattack.png"), eps=base.threat.eps)
    print(f"results: {os.path.join(root, 'comparison.json')}")
    return out


@one_line_errors
def main(argv):
    eval_flags.no_arguments(argv)
    if not FLAGS.root:
        raise app.UsageError("--root (the comparison's output directory) is required")
    if FLAGS.workdir:
        raise app.UsageError("--workdir is not used here: each method trains in ROOT/<method>")
    if FLAGS.dataset not in ("mnist", "fashion_mnist"):
        raise app.UsageError(f"--dataset must be mnist or fashion_mnist here, "
                             f"got {FLAGS.dataset!r}")
    from experiments.log_setup import setup_logging

    setup_logging()
    run(FLAGS.root, list(FLAGS.methods), test_examples=FLAGS.test_examples,
        attack_batch_size=FLAGS.attack_batch_size, eval_pgd_steps=FLAGS.eval_pgd_steps)


if __name__ == "__main__":
    app.run(main)
