"""Robust accuracy over a dataset, from validated adversarial examples.

The quantity the paper reports in Tables 1 and 2 is the accuracy of a model on
adversarial examples x' with ||x' - x|| <= eps crafted by a given adversary.
:func:`robust_accuracy` runs an attack over a dataset in batches and returns
that accuracy together with the per-example correctness, so callers can take
the worst case over several attacks per example (an example counts as robust
only if every attack fails on it).

A number is only counted after the adversarial examples pass validation:
every one must have the input's shape and dtype, be finite, lie inside
``bounds`` and within ``eps`` (+ ``atol``) of its original in the attack's
norm. A violation raises :class:`InvalidAdversarialError`, never a silently
clipped number.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import first_order as _attacks
from robustjax.runtime import mesh as _mesh

__all__ = ["AttackFn", "RobustAccuracy", "InvalidAdversarialError", "check_dataset",
           "robust_accuracy", "adversarial_checks", "validate_checks", "pad_batch", "num_classes"]

AttackFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""``attack(x, y, key) -> x_adv``, e.g. ``functools.partial(pgd, logits_fn, eps=.3, ...)``."""


class InvalidAdversarialError(ValueError):
    """An attack returned points outside the threat model (eps-ball, bounds, shape, finite)."""


class RobustAccuracy(NamedTuple):
    """Result of :func:`robust_accuracy`: the accuracy under attack of Madry et al. (ICLR
    2018, Section 5), from validated adversarial examples only.

    accuracy: fraction of examples classified correctly both clean and under
      attack (a clean misclassification counts as not robust).
    correct: bool ``[N]``, per-example robust correctness.
    clean_accuracy, clean_correct: the same without the attack.
    x_adv: the validated adversarial examples ``[N, ...]`` when requested.
    """

    accuracy: float
    correct: np.ndarray
    clean_accuracy: float
    clean_correct: np.ndarray
    x_adv: Optional[np.ndarray] = None


def check_dataset(x, y, *, num_classes: int, bounds=(0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Data checks for an evaluation (paper Section 4 data: images in [0, 1], int labels).

    Returns ``x`` as float32 and ``y`` as int32 NumPy arrays, or raises
    ``ValueError`` naming the argument: wrong ranks or batch sizes, non-integer
    or out-of-range labels, NaN/inf pixels, pixels outside ``bounds``.
    """
    lo, hi = _checks.check_bounds(bounds)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of inputs with rank >= 2 (batch first), "
                         f"got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"x must hold numbers, got dtype {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a rank-1 array with one label per example of x "
                         f"({x.shape[0]}), got shape {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class ids, got dtype {y.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x contains {int(np.sum(~np.isfinite(x)))} NaN or infinite values")
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"x has pixels outside bounds [{lo}, {hi}]: min {x.min()}, "
                         f"max {x.max()} (scale images to the bounds first, e.g. uint8 / 255)")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y must hold labels in [0, {num_classes}), got values in "
                         f"[{y.min()}, {y.max()}]")
    return x, y.astype(np.int32)


def pad_batch(a: np.ndarray, size: int) -> np.ndarray:
    """Pads the batch axis to ``size`` by repeating the last example (one compiled shape)."""
    if a.shape[0] == size:
        return a
    reps = np.repeat(a[-1:], size - a.shape[0], axis=0)
    return np.concatenate([a, reps], axis=0)


def num_classes(logits_fn: _attacks.LogitsFn, input_shape) -> int:
    """The number of classes of ``logits_fn`` for inputs of ``input_shape`` (one trace, no compute)."""
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32))
    if len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(f"logits_fn must map [B, ...] inputs to [B, num_classes] logits, "
                         f"got output shape {out.shape} for one input")
    return int(out.shape[1])


def robust_accuracy(logits_fn: _attacks.LogitsFn, x, y, attack: Optional[AttackFn], *,
                    eps: float, norm: str = "linf", batch_size: int = 200,
                    key: Optional[jax.Array] = None, bounds=(0.0, 1.0),
                    atol: float = 1e-5, keep_adversarial: bool = False,
                    mesh=None) -> RobustAccuracy:
    """Accuracy under attack, the evaluation metric of the paper's Tables 1 and 2.

    Args:
      logits_fn: ``x -> logits`` of the evaluated model (eval mode).
      x, y: the dataset: inputs ``[N, ...]`` inside ``bounds`` and int labels ``[N]``.
      attack: ``attack(x, y, key) -> x_adv`` for a batch, e.g.
        ``functools.partial(pgd, logits_fn, eps=0.3, step_size=0.01, num_steps=40)``;
        it may use any source model (transfer attacks). ``None`` evaluates the
        clean inputs (the "natural" row).
      eps, norm: the threat model the adversarial examples are checked against
        (``norm`` is ``"linf"``, ``"l2"`` or ``"l1"``).
      batch_size: examples per attack call (rounded up to a multiple of the
        device count). The last batch is padded, so the attack is compiled once.
      key: PRNG key; example ``j`` is attacked alone (a ``vmap`` over the
        batch) with the key ``jax.random.fold_in(key, j)``, so neither the
        batch size nor the devices change its result. Defaults to
        ``jax.random.PRNGKey(0)``.
      bounds: valid input range, checked for ``x`` and every ``x_adv``.
      atol: slack on the eps-ball check for float rounding; for L1, whose
        distance sums the rounding of every coordinate, ``atol * max(1, eps)``.
      keep_adversarial: also return the adversarial examples (NumPy, host memory).
      mesh: the devices, a :func:`robustjax.runtime.mesh.make_mesh` mesh; each batch is
        split along its ``"data"`` axis. Default: every device of every process.

    Raises:
      ValueError: bad data or settings, naming the argument.
      InvalidAdversarialError: an adversarial example violates the threat model.
    """
    _checks.check_scalar("eps", eps)
    _checks.check_scalar("atol", atol)
    _checks.check_choice("norm", norm, tuple(_attacks.NORMS))
    _checks.check_int("batch_size", batch_size, 1)
    if attack is not None and not callable(attack):
        raise ValueError(f"attack must be a callable attack(x, y, key) -> x_adv or None, "
                         f"got {attack!r}")
    lo, hi = _checks.check_bounds(bounds)
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of inputs, got shape {x.shape}")
    x, y = check_dataset(x, y, num_classes=num_classes(logits_fn, x.shape[1:]), bounds=bounds)
    key = jax.random.PRNGKey(0) if key is None else key
    mesh = _mesh.make_mesh() if mesh is None else mesh

    def run_local(xb, yb, ib, key):
        x_adv = xb if attack is None else _mesh.per_example(attack)(
            xb, yb, _mesh.example_keys(key, ib))
        checks = adversarial_checks(logits_fn, xb, yb, x_adv, norm=norm)
        return (x_adv, checks) if keep_adversarial else (None, checks)

    run = _mesh.sharded(run_local, mesh, num_batched=3)
    n = x.shape[0]
    bs = _mesh.padded_size(min(batch_size, n), mesh)
    clean, robust, kept = [], [], []
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        x_adv, checks = _mesh.map_batch(
            run, mesh, [x[start:stop], y[start:stop], np.arange(start, stop, dtype=np.int32)],
            [key], size=bs)
        validate_checks(checks, eps=float(eps), atol=float(atol), norm=norm, bounds=(lo, hi),
                        offset=start)
        clean.append(checks["clean_ok"])
        robust.append(checks["clean_ok"] & checks["adv_ok"])
        if keep_adversarial:
            kept.append(x_adv)
    clean_correct = np.concatenate(clean)
    correct = np.concatenate(robust)
    return RobustAccuracy(accuracy=float(correct.mean()), correct=correct,
                          clean_accuracy=float(clean_correct.mean()),
                          clean_correct=clean_correct,
                          x_adv=np.concatenate(kept) if keep_adversarial else None)


def adversarial_checks(logits_fn: _attacks.LogitsFn, x, y, x_adv, *, norm: str) -> dict:
    """Per-example facts about ``x_adv`` that :func:`validate_checks` judges (jittable).

    Raises :class:`InvalidAdversarialError` at trace time if ``x_adv`` does not
    have the shape and dtype of ``x``. Returns arrays ``[B]``: ``dist`` (in
    ``norm``), ``finite``, ``low`` / ``high`` (smallest and largest value),
    ``clean_ok`` / ``adv_ok`` (the model's prediction equals ``y``).
    """
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype:
        raise InvalidAdversarialError(
            f"attack returned shape {x_adv.shape} and dtype {x_adv.dtype}, expected "
            f"{x.shape} and {x.dtype}")
    flat = x_adv.reshape(x_adv.shape[0], -1)
    return dict(
        dist=_attacks.NORMS[norm].distance(x_adv - x),
        finite=jnp.all(jnp.isfinite(flat), axis=1),
        low=jnp.min(flat, axis=1),
        high=jnp.max(flat, axis=1),
        clean_ok=jnp.argmax(logits_fn(x), axis=-1) == y,
        adv_ok=jnp.argmax(logits_fn(x_adv), axis=-1) == y,
    )


def validate_checks(checks: dict, *, eps: float, atol: float, norm: str, bounds,
                    offset: int = 0, index: Optional[np.ndarray] = None) -> None:
    """Raises InvalidAdversarialError naming the first example outside the threat model.

    ``checks`` holds host arrays from :func:`adversarial_checks`, for examples
    ``offset, offset + 1, ...`` of the dataset, or ``index[0], index[1], ...``
    when the batch is a selection (used in the message).
    """
    lo, hi = bounds

    def fail(mask, what):
        idx = np.flatnonzero(mask)
        first = offset + idx[0] if index is None else int(index[idx[0]])
        raise InvalidAdversarialError(
            f"{idx.size} adversarial example(s) {what}; first at example {first}")

    if not np.all(checks["finite"]):
        fail(~checks["finite"], "contain NaN or infinite values")
    bad = (checks["low"] < lo) | (checks["high"] > hi)
    if np.any(bad):
        fail(bad, f"leave bounds [{lo}, {hi}] (min {checks['low'].min()}, "
                  f"max {checks['high'].max()})")
    if norm == "l1":  # the L1 distance sums one rounding error per coordinate
        atol = atol * max(1.0, eps)
    bad = checks["dist"] > eps + atol
    if np.any(bad):
        fail(bad, f"lie outside the {norm} ball of radius {eps} (+{atol:g}): largest "
                  f"distance {checks['dist'].max()}")
