r"""AutoAttack on a trained workdir (Croce & Hein, ICML 2020): robustjax's strongest evaluation.

  python -m experiments.autoattack --workdir=DIR [--data_dir=DIR] [--norm=linf|l2] \
      [--eps=E] [--version=standard|plus] [--examples=N] [--batch_size=500] [--seed=0] \
      [--num_steps=100] [--num_queries=5000]

Runs the ensemble (standard: APGD-CE, APGD-T, FAB-T, Square; each on the
examples still robust) on the first N test examples of the workdir's dataset
and writes OUTPUT_DIR/autoattack.json (RobustBench-style fields: clean and
robust accuracy, accuracy after each attack, eps, norm, version, number of
examples, seconds) and autoattack.md. OUTPUT_DIR defaults to DIR/autoattack.
The default eps is the training eps (MNIST 0.3, CIFAR-10 8/255) for L-inf and
must be given for L2. Progress: one line per batch with the examples left,
the robust accuracy so far and an ETA. The state after each attack is kept in
OUTPUT_DIR/stages: an interrupted evaluation resumes after the last finished
attack when the same command is rerun (same result as an uninterrupted run).

On the 2,000 test digits of shared/data/mnist-10k, the CPU recipe's PGD-trained
model (benchmarks/mnist10k_cpu.sh) at eps 0.3: see benchmarks/RESULTS.md,
"AutoAttack", for the figures and the comparison with the official code. On
Madry et al.'s released models the strongest reported attacks reach 88.0%
(MNIST, eps 0.3) and 43.95% (CIFAR-10, eps 8/255), below every PGD figure of
the paper's Tables 1 and 2.
"""

import os
import time

from absl import app, flags

from experiments.cli import one_line_errors
from experiments.log_setup import setup_logging

flags.DEFINE_string("workdir", None, "Training workdir of the evaluated model.")
flags.DEFINE_string("data_dir", None, "Dataset files (default: the workdir's data_dir, else TFDS).")
flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat model.")
flags.DEFINE_float("eps", None, "Radius (default: the training eps for L-inf; required for L2).")
flags.DEFINE_enum("version", "standard", ["standard", "plus"], "AutoAttack version.")
flags.DEFINE_integer("examples", -1, "First N test examples (-1: the whole test split).")
flags.DEFINE_integer("batch_size", 500, "Largest attack batch.")
flags.DEFINE_integer("seed", 0, "Seed of the attacks' randomness.")
flags.DEFINE_integer("num_steps", 100, "APGD and FAB iterations (AutoAttack: 100).")
flags.DEFINE_integer("num_queries", 5000, "Square's queries (AutoAttack: 5000).")
flags.DEFINE_string("output_dir", None, "Where autoattack.json and .md go (default: "
                    "WORKDIR/autoattack).")
FLAGS = flags.FLAGS
flags.register_validator("eps", lambda v: v is None or v >= 0, message="--eps must be >= 0")
flags.register_validator("examples", lambda v: v == -1 or v >= 1,
                         message="--examples must be -1 (all) or positive")
for _name in ("batch_size", "num_steps", "num_queries"):
    flags.register_validator(_name, lambda v: v >= 1, message=f"--{_name} must be >= 1")


@one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir (the evaluated model's training workdir) is required")
    setup_logging()
    import jax
    import numpy as np

    from robustjax import autoattack, data, mesh, suite, train

    run = train.load_run(FLAGS.workdir)
    cfg = run.config
    if FLAGS.eps is None and FLAGS.norm == "l2":
        raise app.UsageError("--eps is required for --norm=l2 (the training eps is L-inf)")
    eps = cfg.eps if FLAGS.eps is None else FLAGS.eps
    x, y = data.load(cfg.dataset, "test", FLAGS.data_dir or cfg.data_dir)
    n = len(x) if FLAGS.examples == -1 else min(FLAGS.examples, len(x))
    x, y = x[:n].astype(np.float32) / 255.0, y[:n]
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "autoattack")
    t0 = time.time()
    res = autoattack.autoattack(run.logits_fn, x, y, jax.random.PRNGKey(FLAGS.seed), eps=eps,
                                norm=FLAGS.norm, version=FLAGS.version,
                                batch_size=FLAGS.batch_size, num_steps=FLAGS.num_steps,
                                num_queries=FLAGS.num_queries,
                                resume_dir=os.path.join(out, "stages"))
    seconds = time.time() - t0
    spec = suite.AttackSpec("AutoAttack", attack="autoattack", norm=FLAGS.norm, eps=eps,
                            version=FLAGS.version)
    rows = [suite.AttackSpec("Natural", attack="natural", eps=eps).row(res.clean_accuracy),
            dict(spec.row(res.robust_accuracy), after=res.accuracy_after)]
    results = dict(
        clean_acc=res.clean_accuracy, robust_acc=res.robust_accuracy,
        accuracy_after=res.accuracy_after, eps=float(eps), norm=FLAGS.norm,
        version=FLAGS.version, attacks=list(res.accuracy_after), n_examples=int(n),
        num_steps=FLAGS.num_steps, num_queries=FLAGS.num_queries,
        seconds=seconds, seconds_per_attack=res.seconds, warnings=res.warnings,
        dataset=cfg.dataset, split="test", seed=FLAGS.seed, batch_size=FLAGS.batch_size,
        model=dict(arch=train.build_model(cfg).__class__.__name__, width=cfg.width,
                   params=run.params),
        training=dict(cfg.to_json(), final_step=run.step,
                      workdir=os.path.abspath(FLAGS.workdir)),
        jax=jax.__version__, device=jax.devices()[0].device_kind,
        devices=jax.device_count(), processes=jax.process_count(), rows=rows)
    if not mesh.is_primary():  # process 0 writes the files
        return
    os.makedirs(out, exist_ok=True)
    suite.write_results(os.path.join(out, "autoattack.json"), results)
    print(suite.markdown_table(rows))
    print(f"results: {os.path.join(out, 'autoattack.json')} and autoattack.md")


if __name__ == "__main__":
    app.run(main)
