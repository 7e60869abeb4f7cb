r"""MNIST capacity experiment (Madry et al., Section 5 "Capacity", Figure 4).

For one width w (filters 2w / 4w, FC 64w) trains three models, naturally, with
FGSM and with PGD. It then evaluates each against natural, FGSM and PGD
adversaries: one column group of the paper's figure. Rows go to
WORKDIR/width_W/results.json (the shared schema, plus ``width`` and
``train_attack`` per row, and each method's final training loss), combined
over the widths done so far in WORKDIR/results.json. WORKDIR/capacity.png
plots accuracy against capacity, one panel per training method, and the
average training loss, as in the paper. Each model lives in its own workdir,
so rerunning resumes.

  python -m experiments.mnist_capacity --width=4      # MNIST through TFDS, into
                                                       # workdirs/mnist_capacity
  python -m experiments.mnist_capacity --widths=1,2,4,8,16 --data_dir=DIR
                                                       # the whole sweep from the IDX files

It takes the same data, steps, attack and evaluation flags as
experiments.mnist. The paper's setting (100k steps each, PGD-40) needs a GPU.
The paper's qualitative result: capacity alone helps against PGD only when
training against PGD, and small PGD-trained networks (w = 1, 2) fail to reach
high accuracy even naturally.
"""

from absl import app

from experiments.cli import one_line_errors
from experiments import capacity


@one_line_errors
def main(argv):
    capacity.main(argv, datasets=("mnist", "fashion_mnist"), title="MNIST",
                  default_workdir="mnist_capacity")


if __name__ == "__main__":
    app.run(main)
