"""The capacity experiment of Madry et al. (Section 5 "Capacity", Figure 4), for any dataset.

For one width trains three models (natural, FGSM and PGD training) into
WORKDIR/width_W/{none,fgsm,pgd} and evaluates each against natural, FGSM and
PGD adversaries. Rows go to WORKDIR/width_W/results.json (the shared schema,
plus ``width`` and ``train_attack`` per row, and each method's average training
loss at the end of training); all widths done so far are combined in
WORKDIR/results.json, and WORKDIR/capacity.png plots accuracy against capacity,
one panel per training method, plus the training loss (paper Figure 4). Each model lives in
its own workdir, so rerunning resumes. Entry points: experiments.mnist_capacity
and experiments.cifar10_capacity.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import common, figures
from robustjax.runtime import mesh
from robustjax import training as train

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", None, "Sweep over these widths (overrides --width).")

METHODS = ("none", "fgsm", "pgd")
METHOD_TITLES = {"none": "Natural training", "fgsm": "FGSM training", "pgd": "PGD training"}
WIDTHS = (1, 2, 4, 8, 16)


def run_width(width: int, workdir: str, widths=WIDTHS) -> dict:
    """Trains and evaluates the three models of one width; returns its results dict."""
    if width not in widths:
        raise ValueError(f"width must be one of {widths} (the paper's capacity scale), "
                         f"got {width}")
    rows, models, losses = [], {}, {}
    for method in METHODS:
        config = common.config_from_flags(width=width, train_attack=method)
        run_dir = os.path.join(workdir, f"width_{width}", method)
        res = train.train_and_evaluate(config, run_dir)
        models[method] = res["model"]
        losses[method] = final_training_loss(os.path.join(run_dir, "metrics.jsonl"))
        rows += [dict(r, width=width, train_attack=method) for r in res["rows"]]
    out = dict(dataset=res["dataset"], split=res["split"], n=res["n"],
               model=dict(models["pgd"]), training=dict(methods=list(METHODS),
                                                        config=res["training"]),
               training_loss=losses, rows=rows)
    if mesh.is_primary():  # process 0 writes the files
        figures.write_json(os.path.join(workdir, f"width_{width}", "results.json"), out)
        print(train.markdown_table(rows))
    return out


def final_training_loss(metrics_path: str, fraction: float = 0.1) -> float:
    """The average training loss over the last ``fraction`` of training (Figure 4's last panel).

    The loss of each method on its own training inputs (clean, FGSM or PGD
    examples), from the progress records of ``metrics.jsonl`` whose step lies
    in the last 10% of the run (at least the last record).
    """
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise ValueError(f"{metrics_path}: no training records")
    last = records[-1]["step"]
    tail = [r["loss"] for r in records if r["step"] > (
        1 - fraction) * last] or [records[-1]["loss"]]
    return float(sum(tail) / len(tail))


def collect(workdir: str, widths=WIDTHS) -> dict:
    """The sweep so far: every width's rows and training losses, written to WORKDIR/results.json.

    Returns ``{"dataset", "split", "n", "widths", "training_loss": {width: {method:
    loss}}, "rows"}``; rows carry ``width`` and ``train_attack``.
    """
    out = dict(widths=[], training_loss={}, rows=[])
    for w in widths:
        path = os.path.join(workdir, f"width_{w}", "results.json")
        if os.path.exists(path):
            with open(path) as f:
                res = json.load(f)
            out.update(dataset=res["dataset"], split=res["split"], n=res["n"])
            out["widths"].append(w)
            out["rows"] += res["rows"]
            if "training_loss" in res:
                out["training_loss"][str(w)] = res["training_loss"]
    figures.write_json(os.path.join(workdir, "results.json"), out)
    return out


def plot(sweep: dict, path: str, *, title: str = "MNIST", widths=WIDTHS) -> None:
    """Paper Figure 4: accuracy against capacity per training method, and the training loss."""
    plt = figures.pyplot()
    if plt is None:
        return
    rows = sweep["rows"]
    fig, axes = plt.subplots(1, 4, figsize=(15.5, 3.6))
    pgd_steps = min((r["steps"] for r in rows if r["attack"] == "pgd"), default=None)
    series = [("natural", 0, "Natural", "o-"), ("fgsm", 1, "FGSM", "s-"),
              ("pgd", pgd_steps, f"PGD-{pgd_steps}", "^-")]
    for ax, method in zip(axes, METHODS):
        for attack, steps, label, style in series:
            pts = sorted((r["width"], 100 * r["accuracy"]) for r in rows
                         if r["train_attack"] == method and r["attack"] == attack
                         and r["steps"] == steps)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_title(METHOD_TITLES[method])
        ax.set_ylim(0, 100)
        ax.set_ylabel("Test accuracy (%)" if method == METHODS[0] else None)
    axes[0].legend(loc="lower right", title="evaluated against", fontsize=8, title_fontsize=8)
    losses = sweep.get("training_loss", {})
    for method, style in zip(METHODS, ("o-", "s-", "^-")):
        pts = sorted((int(w), v[method]) for w, v in losses.items() if method in v)
        if pts:
            axes[3].plot([p[0] for p in pts], [p[1] for p in pts], style,
                         label=METHOD_TITLES[method].replace(" training", ""))
    axes[3].set_yscale("log")
    axes[3].set_title("Average training loss (end of training)")
    axes[3].legend(loc="upper right", fontsize=8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlim(0.8, max(widths) * 1.25)
        ax.set_xticks(list(widths), [str(w) for w in widths])
        ax.set_xlabel("Capacity scale (width w)")
        ax.grid(alpha=0.3)
    eps = max((r["eps"] for r in rows), default=0)
    fig.suptitle(f"{title} capacity (L-inf eps = {eps:.4g}): accuracy against natural, FGSM "
                 "and PGD adversaries, and training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv, *, datasets, title: str, widths=WIDTHS, default_workdir=None) -> None:
    """Runs the widths of --width / --widths, then replots WORKDIR/capacity.png."""
    workdir = common.start(argv, datasets=datasets, default_workdir=default_workdir)
    chosen = [int(w) for w in FLAGS.widths] if FLAGS.widths else [FLAGS.width]
    for w in chosen:
        run_width(w, workdir, widths)
    if not mesh.is_primary():
        return
    sweep = collect(workdir, widths)
    print(f"results: {os.path.join(workdir, 'results.json')}")
    plot(sweep, os.path.join(workdir, "capacity.png"), title=title, widths=widths)
    if os.path.exists(os.path.join(workdir, "capacity.png")):
        print(f"plot: {os.path.join(workdir, 'capacity.png')}")
