"""Flags shared by the evaluation entry points, defined once each.

``experiments.autoattack``, ``certify``, ``eps_sweep``, ``loss_landscape``, the tables
and ``benchmark`` evaluate a trained model: they share the evaluated model's workdir
(default: ``workdirs/mnist``, where ``python -m experiments.mnist`` trains), the data,
how many test examples, the seed, the output directory and the attacks' budget. Each
entry point calls the definers it needs at import; the training entry points' flags are
``experiments.common``'s.
"""

from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS
TRAINED_WORKDIR = "workdirs/mnist"


def model(what: str = "Training workdir of the evaluated model", *,
          natural: bool = False, data_dir: bool = True) -> None:
    """``--workdir`` (default :data:`TRAINED_WORKDIR`), ``--natural_workdir``, ``--data_dir``."""
    flags.DEFINE_string("workdir", TRAINED_WORKDIR,
                        f"{what}; default: {TRAINED_WORKDIR}, experiments.mnist's.")
    if natural:
        flags.DEFINE_string("natural_workdir", None,
                            "Naturally trained model's workdir (optional).")
    if data_dir:
        flags.DEFINE_string("data_dir", None,
                            "Dataset files (default: the workdir's data_dir, else TFDS).")


def examples(default: int, what: str = "First N test examples (-1: all).") -> None:
    """``--examples``: -1 (all) or a positive count."""
    flags.DEFINE_integer("examples", default, what)
    flags.register_validator("examples", lambda v: v == -1 or v >= 1,
                             message="--examples must be -1 (all) or positive")


def run(output_default: str, seed_what: str = "Seed of the attacks' randomness.") -> None:
    """``--seed`` and ``--output_dir``."""
    flags.DEFINE_integer("seed", 0, seed_what)
    flags.DEFINE_string("output_dir", None, f"Output directory (default: {output_default}).")


def budget(*, batch_size: int = 500, num_steps: str | None = "APGD and FAB iterations "
           "(AutoAttack: 100).", num_queries: bool = True) -> None:
    """``--batch_size`` and the attacks' ``--num_steps`` / ``--num_queries``, each >= 1."""
    names = ["batch_size"]
    flags.DEFINE_integer("batch_size", batch_size, "Largest attack batch.")
    if num_steps:
        flags.DEFINE_integer("num_steps", 100, num_steps)
        names.append("num_steps")
    if num_queries:
        flags.DEFINE_integer("num_queries", 5000, "Square's queries (AutoAttack: 5000).")
        names.append("num_queries")
    for name in names:
        flags.register_validator(name, lambda v: v >= 1, message=f"--{name} must be >= 1")


def no_arguments(argv) -> None:
    """Raises UsageError for anything on the command line that is not a flag."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def print_warnings(warnings) -> None:
    """The evaluation's warnings (the official checks' and the inspection's), in one block."""
    if warnings:
        print(f"warnings ({len(warnings)}):")
        for w in warnings:
            print(f"  - {w}")


def run_autoattack(logits_fn, x, y, *, eps: float, norm: str, out: str):
    """AutoAttack with the budget flags (``--version``, ``--seed``, ``--batch_size``,
    ``--num_steps``, ``--num_queries``), resumable under ``out/stages``.

    Returns ``(result, seconds, rows)``: the rows are the natural one and AutoAttack's, with
    the accuracy after each attack.
    """
    import os
    import time

    import jax

    from robustjax import autoattack
    from robustjax.evaluation import suite

    t0 = time.time()
    res = autoattack(logits_fn, x, y, jax.random.PRNGKey(FLAGS.seed), eps=eps, norm=norm,
                     version=FLAGS.version, batch_size=FLAGS.batch_size,
                     num_steps=FLAGS.num_steps, num_queries=FLAGS.num_queries,
                     resume_dir=os.path.join(out, "stages"))
    seconds = time.time() - t0
    print_warnings(res.warnings)
    spec = suite.AttackSpec("AutoAttack", attack="autoattack", norm=norm, eps=eps,
                            version=FLAGS.version)
    rows = [suite.AttackSpec("Natural", attack="natural", eps=eps).row(res.clean_accuracy),
            dict(spec.row(res.robust_accuracy), after=res.accuracy_after)]
    return res, seconds, rows
