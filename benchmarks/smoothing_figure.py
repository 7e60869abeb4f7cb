r"""The certified-accuracy-against-L2-radius figure of several ``experiments.smoothing`` runs
in one plot (Cohen, Rosenfeld & Kolter, ICML 2019, Figure 7 style), with each run's
empirical points (APGD-L2 on the smoothed classifier, an upper bound) beside its curve.

  W=workdirs/smoothing
  python -m benchmarks.smoothing_figure --out=docs/figures/smoothing_mnist10k.png \
      --inputs=$W/gaussian_0.25/smoothing_0.25/smoothing.json,$W/gaussian_0.5/smoothing_0.5/smoothing.json
"""

from __future__ import annotations

import json

from absl import app, flags

_INPUTS = flags.DEFINE_list("inputs", None, "smoothing.json files of experiments.smoothing.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")


def main(argv):
    del argv
    from experiments import figures
    from experiments.smoothing import plot

    plt = figures.pyplot()
    if plt is None:
        raise SystemExit(1)
    plot(plt, [json.load(open(p)) for p in _INPUTS.value], _OUT.value)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["inputs", "out"])
    app.run(main)
