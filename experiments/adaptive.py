r"""Adaptive evaluation of a defence (Athalye, Carlini & Wagner, ICML 2018; Tramer et al.,
NeurIPS 2020): the inspection report, AutoAttack on the defence as given, then AutoAttack
through BPDA and EOT where the report calls for them, side by side.

  python -m experiments.adaptive [--workdir=DIR] --defence=quantize:2 [--eps=0.3] \
      [--examples=1000] [--version=standard] [--eot_samples=20] [--data_dir=DIR]
  python -m experiments.adaptive --model=ID --checkpoint=FILE --dataset=cifar10 \
      --defence=noise:0.03 --eps=0.031

The defended model is the workdir's (default: workdirs/mnist, ``experiments.mnist``'s) or
the zoo model's (``--model``/``--checkpoint`` as in ``experiments.benchmark``) behind the
``--defence`` transforms, applied in order: ``quantize:K`` (K levels), ``jpeg:Q`` (JPEG-style
DCT quantisation at quality Q), ``djpeg:Q`` (its differentiable approximation),
``noise:SIGMA`` (Gaussian noise), ``resize:PIXELS`` (random shrink and placement),
``purify:STEPS`` (test-time entropy minimisation). Without ``--defence`` the model itself
is inspected and attacked (straight-through over any rounding in its own program).

Writes OUTPUT_DIR/adaptive.json (the report, both AutoAttack runs, the wrappers, the
table) and adaptive.md; OUTPUT_DIR defaults to DIR/adaptive_DEFENCES. Each run's stages
are stored, so an interrupted evaluation resumes. On the CPU recipe's PGD-trained MNIST
model (benchmarks/mnist10k_cpu.sh), 1,000 test digits, ``--defence=quantize:3`` with
``--version=custom --attacks=apgd-ce,square``: every gradient is zero as given, APGD-CE
leaves 79.8% and Square 0%; through BPDA, APGD-CE alone reaches 0% (benchmarks/RESULTS.md,
"Adaptive evaluation").
"""

import os

from absl import app, flags

from experiments import eval_flags
from experiments.cli import one_line_errors
from experiments.log_setup import setup_logging

eval_flags.model("Training workdir of the defended model")
flags.DEFINE_string("model", None, "Instead of --workdir: a zoo registry ID or architecture.")
flags.DEFINE_string("checkpoint", None, "With --model: the weights file.")
flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100"], "With --model: the test set.")
flags.DEFINE_list("defence", [], "Input transforms, in order: quantize:K, jpeg:Q, djpeg:Q, "
                  "noise:SIGMA, resize:PIXELS, purify:STEPS.")
flags.DEFINE_float("eps", None, "L-inf radius (default: the training eps; required with "
                   "--model).")
flags.DEFINE_enum("norm", "linf", ["linf", "l2", "l1"], "Threat model.")
flags.DEFINE_enum("version", "standard", ["standard", "plus", "custom"], "AutoAttack version.")
flags.DEFINE_list("attacks", None, "With --version=custom: the attacks, e.g. apgd-ce,square.")
flags.DEFINE_integer("eot_samples", 20, "EOT draws per step against randomised defences.")
flags.register_validator("eot_samples", lambda v: v >= 1, message="--eot_samples must be >= 1")
eval_flags.examples(1000)
eval_flags.budget()
eval_flags.run("WORKDIR/adaptive_DEFENCES; adaptive.json and .md")
FLAGS = flags.FLAGS


@one_line_errors
def main(argv):
    eval_flags.no_arguments(argv)
    if FLAGS.eps is not None and not FLAGS.eps >= 0:
        raise app.UsageError(f"--eps must be >= 0, got {FLAGS.eps}")
    if FLAGS.model and FLAGS.eps is None:
        raise app.UsageError("--eps is required with --model")
    if (FLAGS.version == "custom") != bool(FLAGS.attacks):
        raise app.UsageError("--attacks goes with --version=custom, and only with it")
    setup_logging()
    import jax

    from robustjax.evaluation import adaptive_eval
    from robustjax.models import defences
    from robustjax.runtime import mesh

    logits_fn, x, y, eps, root = _model_and_data()
    try:
        transforms = [defences.parse(s, logits_fn) for s in FLAGS.defence]
    except ValueError as e:
        raise app.UsageError(f"--defence: {e}") from None
    name = "_".join(s.replace(":", "") for s in FLAGS.defence) or "none"
    out = FLAGS.output_dir or os.path.join(root, f"adaptive_{name}")
    res = adaptive_eval.adaptive_autoattack(
        logits_fn, x, y, jax.random.PRNGKey(FLAGS.seed), transforms=transforms, eps=eps,
        norm=FLAGS.norm, version=FLAGS.version, attacks=FLAGS.attacks,
        eot_samples=FLAGS.eot_samples, batch_size=FLAGS.batch_size,
        num_steps=FLAGS.num_steps, num_queries=FLAGS.num_queries,
        resume_dir=os.path.join(out, "stages"))
    if not mesh.is_primary():
        return
    print(res.inspection.table())
    eval_flags.print_warnings(res.given.warnings)
    table = adaptive_eval.markdown(res.rows)
    print(f"adaptive attacks through: {', '.join(res.wrappers) or 'nothing (no change)'}")
    print(table)
    results = dict(res.to_json(), defence=list(FLAGS.defence), eps=float(eps), norm=FLAGS.norm,
                   version=FLAGS.version, n_examples=int(len(x)), seed=FLAGS.seed,
                   eot_samples=FLAGS.eot_samples, num_steps=FLAGS.num_steps,
                   num_queries=FLAGS.num_queries, jax=jax.__version__,
                   device=jax.devices()[0].device_kind,
                   model=FLAGS.model or os.path.abspath(FLAGS.workdir))
    os.makedirs(out, exist_ok=True)
    from robustjax.evaluation import report
    report.write_results(os.path.join(out, "adaptive.json"), results, table=False)
    with open(os.path.join(out, "adaptive.md"), "w") as f:
        f.write(res.inspection.table() + "\n\n" + table + "\n")
    print(f"results: {os.path.join(out, 'adaptive.json')} and adaptive.md")


def _model_and_data():
    """``(logits_fn, x, y, eps, output root)`` of --workdir or --model, with the test data."""
    import numpy as np

    from robustjax.data import datasets as data

    if FLAGS.model:
        from robustjax import zoo
        if not FLAGS.checkpoint:
            raise app.UsageError("--checkpoint (the model's weights file) is required with "
                                 "--model")
        logits_fn = zoo.load(FLAGS.model, FLAGS.checkpoint, dataset=FLAGS.dataset)
        dataset, data_dir, eps, root = FLAGS.dataset, FLAGS.data_dir, FLAGS.eps, "adaptive"
    else:
        from robustjax import training as train
        run = train.load_run(FLAGS.workdir)
        cfg = run.config
        logits_fn, dataset, root = run.logits_fn, cfg.data.dataset, FLAGS.workdir
        data_dir = FLAGS.data_dir or cfg.data.data_dir
        eps = cfg.threat.eps if FLAGS.eps is None else FLAGS.eps
    x, y = data.load(dataset, "test", data_dir)
    n = len(x) if FLAGS.examples == -1 else min(FLAGS.examples, len(x))
    return logits_fn, x[:n].astype(np.float32) / 255.0, y[:n], eps, root


if __name__ == "__main__":
    app.run(main)
