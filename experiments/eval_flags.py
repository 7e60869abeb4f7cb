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


def smoothing() -> None:
    """``--smoothing_sigma`` (0: off), ``--smoothing_n0``, ``--smoothing_n``,
    ``--smoothing_alpha``: the randomized-smoothing certified row or curve."""
    flags.DEFINE_float("smoothing_sigma", 0.0, "Add the accuracy certified by randomized "
                       "smoothing (Cohen et al. 2019) of the model's smoothed classifier at this "
                       "noise level (0: off). It certifies L2 balls: an L-inf eps counts as the "
                       "L2 radius eps * sqrt(d) of the ball around it.", lower_bound=0.0)
    flags.DEFINE_integer("smoothing_n0", 100, "Smoothing: selection samples.", lower_bound=1)
    flags.DEFINE_integer("smoothing_n", 10_000, "Smoothing: estimation samples.", lower_bound=1)
    flags.DEFINE_float("smoothing_alpha", 0.001, "Smoothing: failure probability in (0, 1).")
    flags.register_validator("smoothing_alpha", lambda v: 0 < v < 1,
                             message="--smoothing_alpha must lie in (0, 1)")


def smoothing_certified(logits_fn, x, y, eps_values, *, norm: str, resume_dir: str) -> dict:
    """CERTIFY of the smoothed classifier on ``x`` (resumable under ``resume_dir``), then its
    certified accuracy at each eps of ``eps_values`` in ``norm`` (the L2 radius covering that
    ball): ``{"eps", "accuracy", "correct" (one "0101..." per eps), "l2_radius", "sigma", ...}``.
    It is a lower bound for the smoothed classifier, not for the model itself."""
    import time

    import jax
    import numpy as np

    from robustjax import smoothing as rs

    t0 = time.time()
    rows = rs.certify_table(logits_fn, x, y, jax.random.PRNGKey(FLAGS.seed),
                            sigma=FLAGS.smoothing_sigma, n0=FLAGS.smoothing_n0,
                            n=FLAGS.smoothing_n, alpha=FLAGS.smoothing_alpha,
                            resume_dir=resume_dir)
    dim = int(np.prod(np.shape(x)[1:]))
    radii = [rs.stats.l2_radius(norm, e, dim) for e in eps_values]
    pred = np.asarray([r["predict"] for r in rows])
    radius = np.asarray([r["radius"] for r in rows])
    correct = [(pred == np.asarray(y)) & (radius >= r) for r in radii]
    return dict(eps=[float(e) for e in eps_values], accuracy=[float(c.mean()) for c in correct],
                correct=["".join("1" if v else "0" for v in c) for c in correct],
                l2_radius=radii, sigma=FLAGS.smoothing_sigma, n0=FLAGS.smoothing_n0,
                n=FLAGS.smoothing_n, alpha=FLAGS.smoothing_alpha, classifier="smoothed",
                seconds=time.time() - t0)
