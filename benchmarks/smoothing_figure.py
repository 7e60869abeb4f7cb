r"""The certified-accuracy-against-L2-radius figure of several ``experiments.smoothing`` runs
in one plot (Cohen, Rosenfeld & Kolter, ICML 2019, Figure 7 style), with each run's
empirical points (APGD-L2 on the smoothed classifier, an upper bound) beside its curve.

  python -m benchmarks.smoothing_figure \
      --inputs=workdirs/smoothing/gaussian_0.25/smoothing_0.25/smoothing.json,workdirs/smoothing/gaussian_0.5/smoothing_0.5/smoothing.json \
      --out=docs/figures/smoothing_mnist10k.png
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

_INPUTS = flags.DEFINE_list("inputs", None, "smoothing.json files of experiments.smoothing.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")


def main(argv):
    del argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustjax.smoothing import stats

    runs = [json.load(open(p)) for p in _INPUTS.value]
    top = max(max(r["radius"] for r in run["rows"]) for run in runs)
    grid = np.linspace(0.0, max(1.0, 1.05 * top), 400)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for k, run in enumerate(runs):
        rows, color = run["rows"], f"C{k}"
        acc = stats.certified_accuracy([r["predict"] for r in rows], [r["radius"] for r in rows],
                                       [r["label"] for r in rows], grid)
        ax.plot(grid, 100 * acc, color=color,
                label=f"certified, sigma {run['sigma']:g} (n {run['n']:,}, {len(rows)} digits)")
        if run["empirical"]:
            pts = run["empirical"]
            ax.plot([p["radius"] for p in pts], [100 * p["accuracy"] for p in pts], "v--",
                    color=color, alpha=0.7, label=f"APGD-L2 on g, sigma {run['sigma']:g} "
                    "(upper bound)")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("accuracy of the smoothed classifier (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=120)
    plt.close(fig)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["inputs", "out"])
    app.run(main)
