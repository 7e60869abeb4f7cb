r"""CIFAR-10 capacity experiment (Madry et al., Section 5 "Capacity", Figure 4, right).

For one CifarResNet width trains a natural, an FGSM-trained and a PGD-7-trained
model with the CIFAR-10 recipe of experiments.cifar10 (same flags and
defaults) and evaluates each against natural, FGSM and PGD adversaries at
eps = 8/255. Rows go to WORKDIR/width_W/results.json and, combined, to
WORKDIR/results.json; the plot to
WORKDIR/capacity.png (one panel per training method, and the training loss).

  python -m experiments.cifar10_capacity --width=1 --workdir=workdirs/cifar_capacity \
      --data_dir=DIR
  python -m experiments.cifar10_capacity --widths=1,2,4,8,10 --workdir=... --data_dir=DIR

Each width is three 80k-step runs: a GPU job (width 10: about 6 h on one H100
at the throughput target; not measured here). The paper's finding: capacity
helps robustness only with PGD training, and natural accuracy drops with it.
"""

from absl import app

from experiments.cli import one_line_errors
from experiments import capacity, cifar10, common

WIDTHS = (1, 2, 4, 8, 10, 16)


@one_line_errors
def main(argv):
    capacity.main(argv, datasets=("cifar10",), title="CIFAR-10", widths=WIDTHS,
                  default_workdir="cifar10_capacity")


if __name__ == "__main__":
    common.set_defaults(**cifar10.CIFAR_DEFAULTS)
    app.run(main)
