r"""The paper's Table 1 (MNIST, L-inf eps = 0.3) for a trained model, from one command.

  python -m experiments.mnist_table --workdir=A [--source_a_prime=A2] [--source_b=B] \
      [--data_dir=DIR] [--examples=N] [--suite=paper|autoattack|all] [--save_adversarial]

A, A' and B are training workdirs (``experiments.mnist``): A the evaluated
PGD-trained model, A' an independently trained copy (same recipe, another
--seed), B another model trained naturally (the paper used a different
architecture; here a narrower MnistCNN, e.g. --width=4 --train_attack=none).
Rows (all eps 0.3, PGD step 0.01, random start): Natural; FGSM; PGD 40 and 100
steps with 1 and --restarts (20) restarts; Targeted 40 (one run towards each of
the 9 wrong classes; broken if any run is misclassified); CW 40; CW+ (kappa 50)
40; from A': FGSM, PGD 40, PGD 100 x restarts, CW 40, CW+ 40; from B: FGSM,
PGD 40, CW+ 40; and the worst case over all rows per example. --suite=all adds
the AutoAttack ensemble (standard version, Croce & Hein 2020) as a row, which
the worst case then covers; --suite=autoattack runs natural + AutoAttack only.
Writes OUTPUT_DIR/results.json and results.md (OUTPUT_DIR defaults to A/table).

Madry et al., Table 1 (full MNIST, width-16 model, 100k steps): natural 98.8%,
FGSM 95.6%, PGD-40 93.2%, PGD-100 91.8%, PGD-40 x 20 90.4%, PGD-100 x 20 89.3%,
targeted 92.7%, CW 94.0%, CW+ 93.9%; transfer rows from A' and B 95.4-97.0%.

CPU recipe on the 8k/2k subset, sources included: benchmarks/mnist10k_table_cpu.sh.
For its width-8 model it gave natural 98.95%, PGD-40 89.70%, PGD-100 x 20
84.90%, targeted 89.15%, CW 89.60%, CW+ 89.45%, transfer rows 91.25-97.75%
and a worst case of 84.85%; the table alone took 38 minutes on 2 CPU cores
(benchmarks/RESULTS.md).
"""

from absl import app, flags

from experiments import tables
from experiments.cli import one_line_errors
from robustjax.evaluation.suite import AttackSpec

flags.DEFINE_string("source_b", None, "Workdir of B: a naturally trained model of another "
                    "architecture or width. Adds its transfer rows.")
flags.DEFINE_float("eps", 0.3, "L-inf radius.")
flags.DEFINE_float("step_size", 0.01, "PGD step size.")
flags.DEFINE_integer("restarts", 20, "Random restarts of the restart rows (the paper: 20).")
FLAGS = flags.FLAGS


def table1_specs(sources, *, eps=0.3, step_size=0.01, restarts=20) -> list:
    """The rows of the paper's Table 1, with transfer rows for the ``sources`` given."""
    pgd = dict(eps=eps, step_size=step_size)
    specs = [AttackSpec("Natural", attack="natural", eps=eps),
             AttackSpec("FGSM", attack="fgsm", eps=eps),
             AttackSpec("PGD", steps=40, **pgd),
             AttackSpec("PGD", steps=100, **pgd),
             AttackSpec("PGD", steps=40, restarts=restarts, **pgd),
             AttackSpec("PGD", steps=100, restarts=restarts, **pgd),
             AttackSpec("Targeted", steps=40, targeted="all", **pgd),
             AttackSpec("CW", steps=40, loss="cw", **pgd),
             AttackSpec("CW+", steps=40, loss="cw", cw_kappa=50.0, **pgd)]
    if "A'" in sources:
        specs += [AttackSpec("FGSM", attack="fgsm", eps=eps, source="A'"),
                  AttackSpec("PGD", steps=40, source="A'", **pgd),
                  AttackSpec("PGD", steps=100, restarts=restarts, source="A'", **pgd),
                  AttackSpec("CW", steps=40, loss="cw", source="A'", **pgd),
                  AttackSpec("CW+", steps=40, loss="cw", cw_kappa=50.0, source="A'", **pgd)]
    if "B" in sources:
        specs += [AttackSpec("FGSM", attack="fgsm", eps=eps, source="B"),
                  AttackSpec("PGD", steps=40, source="B", **pgd),
                  AttackSpec("CW+", steps=40, loss="cw", cw_kappa=50.0, source="B", **pgd)]
    return specs


@one_line_errors
def main(argv):
    tables.run(argv, lambda src: table1_specs(src, eps=FLAGS.eps, step_size=FLAGS.step_size,
                                              restarts=FLAGS.restarts),
               sources={"A'": FLAGS.source_a_prime, "B": FLAGS.source_b},
               dataset_family=("mnist", "fashion_mnist"))


if __name__ == "__main__":
    app.run(main)
