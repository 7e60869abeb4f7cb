r"""The paper's Table 2 (CIFAR-10, L-inf eps = 8/255) for a trained model, from one command.

  python -m experiments.cifar10_table --workdir=A [--source_a_prime=A2] \
      [--source_a_nat=ANAT] [--data_dir=DIR] [--examples=N] [--suite=paper|autoattack|all] \
      [--save_adversarial]

A, A' and A_nat are training workdirs (experiments.cifar10): A the evaluated
PGD-trained model, A' an independently trained copy (same recipe, another
--seed), A_nat the same architecture trained naturally (--train_attack=none).
Rows (eps 8/255, random start): Natural; FGSM; PGD-7 (step 2/255); PGD-20
(step 1/255); CW-30 (step 1/255); from A' and from A_nat: FGSM, PGD-7, CW-30;
and the worst case over all rows per example. --suite=all adds the AutoAttack
ensemble (standard version) as a row; --suite=autoattack runs natural +
AutoAttack only. Writes OUTPUT_DIR/results.json and results.md (OUTPUT_DIR
defaults to A/table).

Madry et al., Table 2 (WRN-34-10): natural 87.3%, FGSM 56.1%, PGD-7 50.0%,
PGD-20 45.8%, CW-30 46.8%; the transfer rows from A' and A_nat are higher
(black-box attacks are weaker), see the paper.
"""

from absl import app, flags

from experiments import tables
from experiments.cli import one_line_errors
from robustjax.evaluation.suite import AttackSpec

flags.DEFINE_string("source_a_nat", None, "Workdir of A_nat: the same architecture trained "
                    "naturally. Adds its transfer rows.")
flags.DEFINE_float("eps", 8 / 255, "L-inf radius.")
FLAGS = flags.FLAGS


def table2_specs(sources, *, eps=8 / 255) -> list:
    """The rows of the paper's Table 2, with transfer rows for the ``sources`` given."""
    specs = [AttackSpec("Natural", attack="natural", eps=eps),
             AttackSpec("FGSM", attack="fgsm", eps=eps),
             AttackSpec("PGD", steps=7, step_size=2 / 255, eps=eps),
             AttackSpec("PGD", steps=20, step_size=1 / 255, eps=eps),
             AttackSpec("CW", steps=30, step_size=1 / 255, eps=eps, loss="cw")]
    for src in ("A'", "A_nat"):
        if src in sources:
            specs += [AttackSpec("FGSM", attack="fgsm", eps=eps, source=src),
                      AttackSpec("PGD", steps=7, step_size=2 / 255, eps=eps, source=src),
                      AttackSpec("CW", steps=30, step_size=1 / 255, eps=eps, loss="cw",
                                 source=src)]
    return specs


@one_line_errors
def main(argv):
    tables.run(argv, lambda src: table2_specs(src, eps=FLAGS.eps),
               sources={"A'": FLAGS.source_a_prime, "A_nat": FLAGS.source_a_nat},
               dataset_family=("cifar10",))


if __name__ == "__main__":
    app.run(main)
