r"""MNIST adversarial training and evaluation (Madry et al., Section 4 and Table 1).

Trains MnistCNN(width) with the chosen adversary, then evaluates natural,
FGSM, PGD-40 and PGD-100 accuracy (L-inf, eps, step 0.01, random start) on the
test split. Writes config.json, metrics.jsonl, checkpoints and results.json to
--workdir and prints a markdown table. Rerunning the same command resumes.

Paper setting (needs a GPU: 100k steps of PGD-40 on the 3.3M-parameter model;
on 2 CPU cores that is days). Data: the official MNIST IDX files.

  python -m experiments.mnist --workdir=workdirs/mnist_madry --data_dir=DIR

Madry et al. report natural 98.8%, FGSM 95.6%, PGD-40 93.2%, PGD-100 91.8%
on the full 10k test set. The 8k/2k subset in shared/data/mnist-10k is not
comparable with that (less training data).

CPU recipe on the 8k/2k subset (width 8, PGD-10 training, eps ramp, 2-pixel
shifts, 7000 steps; about 13 minutes on 2 cores), which reached natural 98.95%,
FGSM 93.05%, PGD-40 90.00% and PGD-100 87.15% on the 2,000 test digits:

  bash benchmarks/mnist10k_cpu.sh workdirs/mnist10k_cpu

(details in benchmarks/RESULTS.md). The paper's Table 1 rows for a trained
model: experiments.mnist_table.
"""

from absl import app

from experiments.cli import one_line_errors
from experiments import common
from robustjax.training import train_and_evaluate


@one_line_errors
def main(argv):
    workdir = common.start(argv, datasets=("mnist", "fashion_mnist"))
    train_and_evaluate(common.config_from_flags(), workdir)


if __name__ == "__main__":
    app.run(main)
