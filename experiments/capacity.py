"""The capacity experiment of Madry et al. (Section 5 "Capacity", Figure 4), for any dataset.

For one width trains three models (natural, FGSM and PGD training) into
WORKDIR/width_W/{none,fgsm,pgd} and evaluates each against natural, FGSM and
PGD adversaries. Rows go to WORKDIR/width_W/results.json (the shared schema,
plus ``width`` and ``train_attack`` per row) and WORKDIR/capacity.png plots
accuracy against capacity, one panel per training method. Each model lives in
its own workdir, so rerunning resumes. Entry points: experiments.mnist_capacity
and experiments.cifar10_capacity.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import common
from robustjax import train

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
    rows, models = [], {}
    for method in METHODS:
        config = common.config_from_flags(width=width, train_attack=method)
        res = train.train_and_evaluate(config, os.path.join(workdir, f"width_{width}", method))
        models[method] = res["model"]
        rows += [dict(r, width=width, train_attack=method) for r in res["rows"]]
    out = dict(dataset=res["dataset"], split=res["split"], n=res["n"],
               model=dict(models["pgd"]), training=dict(methods=list(METHODS),
                                                        config=res["training"]), rows=rows)
    path = os.path.join(workdir, f"width_{width}", "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)
    print(train.markdown_table(rows))
    return out


def collect(workdir: str, widths=WIDTHS) -> list[dict]:
    """All capacity rows found under ``workdir``."""
    rows = []
    for w in widths:
        path = os.path.join(workdir, f"width_{w}", "results.json")
        if os.path.exists(path):
            with open(path) as f:
                rows += json.load(f)["rows"]
    return rows


def plot(rows: list[dict], path: str, *, title: str = "MNIST", widths=WIDTHS) -> None:
    """Accuracy against capacity, one panel per training method (paper Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
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
        ax.set_xscale("log", base=2)
        ax.set_xlim(0.8, max(widths) * 1.25)
        ax.set_xticks(list(widths), [str(w) for w in widths])
        ax.set_title(METHOD_TITLES[method])
        ax.set_xlabel("Capacity scale (width w)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Test accuracy (%)")
    axes[0].legend(loc="lower right")
    eps = max((r["eps"] for r in rows), default=0)
    fig.suptitle(f"{title} capacity (L-inf eps = {eps:.4g}): accuracy against natural, FGSM "
                 "and PGD adversaries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv, *, datasets, title: str, widths=WIDTHS) -> None:
    """Runs the widths of --width / --widths, then replots WORKDIR/capacity.png."""
    workdir = common.start(argv, datasets=datasets)
    chosen = [int(w) for w in FLAGS.widths] if FLAGS.widths else [FLAGS.width]
    for w in chosen:
        run_width(w, workdir, widths)
    rows = collect(workdir, widths)
    try:
        plot(rows, os.path.join(workdir, "capacity.png"), title=title, widths=widths)
        print(f"plot: {os.path.join(workdir, 'capacity.png')}")
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): no plot")
