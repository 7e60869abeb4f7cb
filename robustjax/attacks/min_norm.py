"""What the minimum-norm attacks share: their result, their distances and their loss.

A minimum-norm attack looks, per example, for the adversarial point nearest to the
input, instead of the strongest point inside a fixed ball: FMN (Pintor et al., NeurIPS
2021), DDN (Rony et al., CVPR 2019), Carlini & Wagner's L2 attack (IEEE S&P 2017) and
FAB (Croce & Hein, ICML 2020). Each returns a :class:`MinNormResult`: the adversarial
points, their distances (``inf`` where nothing was found, ``0`` for a clean
misclassification) and the forward and backward passes it spent per example, the cost
AttackBench (Cina et al. 2024) compares attacks at.

An iterate counts as adversarial for the record only with a margin of
``_GUARD`` times the logits' scale beyond the decision boundary: a point left on the
boundary to float rounding could flip when the model is evaluated again in another
program, and then the reported distance would not be that of an adversarial point.
The attacks' own updates use the plain test.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.attacks import l0 as _l0

__all__ = ["MinNormResult", "NORMS", "distance", "dual_norm", "worst_norm",
           "logit_difference", "record_best", "finish", "check_common"]

Array = jax.Array
NORMS = ("l0", "l1", "l2", "linf")
_GUARD = 1e-5


class MinNormResult(NamedTuple):
    """The output of a minimum-norm attack, per example.

    x_adv: ``[B, ...]``, the adversarial point of smallest norm found (``x`` where none).
    norms: ``[B]``, its distance to ``x`` in the attack's norm, measured on ``x_adv``
      as returned; ``inf`` where none was found, 0 where ``x`` is already adversarial.
    forward, backward: ``[B]`` int32, the model evaluations and the gradient
      computations the attack spent on the example.
    """

    x_adv: Array
    norms: Array
    forward: Array
    backward: Array


def _flat(v: Array) -> Array:
    return v.reshape(v.shape[0], -1).astype(jnp.float32)


def distance(delta: Array, norm: str) -> Array:
    """Per-example ``||delta||`` ``[B]`` for ``"l0"`` (pixels, see :mod:`robustjax.attacks.l0`),
    ``"l1"``, ``"l2"`` or ``"linf"``."""
    if norm == "l0":
        return _l0.l0_distance(delta)
    v = _flat(delta)
    if norm == "l1":
        return jnp.sum(jnp.abs(v), axis=1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(v * v, axis=1))
    return jnp.max(jnp.abs(v), axis=1)


def dual_norm(g: Array, norm: str) -> Array:
    """Per-example dual norm of ``g``: L-inf -> L1, L2 -> L2, L1 -> L-inf."""
    v = _flat(g)
    if norm == "linf":
        return jnp.sum(jnp.abs(v), axis=1)
    if norm == "l1":
        return jnp.max(jnp.abs(v), axis=1)
    return jnp.sqrt(jnp.sum(v * v, axis=1))


def worst_norm(x: Array, norm: str, lo: float, hi: float) -> Array:
    """The largest distance a point of the box can have from ``x`` (the attacks' cap)."""
    if norm == "l0":
        return jnp.full((x.shape[0],), float(_l0.num_pixels(x.shape)), jnp.float32)
    return distance(jnp.maximum(x - lo, hi - x), norm)


def logit_difference(logits: Array, y: Array, *, targeted: bool) -> Array:
    """The FMN/CW margin the attacks drive below zero, ``[B]``.

    Untargeted: ``z_y - max_{j != y} z_j``; targeted (``y`` the target):
    ``max_{j != y} z_j - z_y``. Negative exactly when the point is adversarial.
    """
    own = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    other = jnp.max(jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf,
                              logits), axis=1)
    return other - own if targeted else own - other


def _guarded(logits: Array, y: Array, targeted: bool) -> Array:
    """Adversarial with a margin of ``_GUARD`` times the logits' scale (module docstring)."""
    scale = 1.0 + jnp.max(jnp.abs(logits), axis=1)
    return logit_difference(logits, y, targeted=targeted) < -_GUARD * scale


def record_best(best, x_adv: Array, x: Array, logits: Array, y: Array, norm: str, *,
                targeted: bool):
    """``best = (x_best, norm_best, found)`` updated with the iterate ``x_adv``."""
    x_best, n_best, found = best
    n = distance(x_adv - x, norm)
    better = _guarded(logits, y, targeted) & ((n < n_best) | ~found)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return (jnp.where(better.reshape(shape), x_adv, x_best), jnp.where(better, n, n_best),
            found | better)


def finish(x: Array, best, norm: str, passes) -> MinNormResult:
    """The result: norms re-measured on the returned points, ``inf`` where none was found.

    ``passes`` is ``(forward, backward)``, scalars or per example.
    """
    x_best, _, found = best
    x_best = x_best.astype(x.dtype)
    norms = jnp.where(found, distance(x_best - x, norm), jnp.inf)
    size = (x.shape[0],)
    fwd, bwd = (jnp.broadcast_to(jnp.asarray(p, jnp.int32), size) for p in passes)
    return MinNormResult(x_best, norms.astype(jnp.float32), fwd, bwd)


def check_common(x, y, *, norm: str, norms=NORMS, steps: int, bounds, targeted: bool):
    """The argument checks every minimum-norm attack runs; returns ``(lo, hi)``."""
    _checks.check_xy(x, y, targeted=targeted)
    _checks.check_choice("norm", norm, norms)
    _checks.check_int("steps", steps, 1)
    return _checks.check_bounds(bounds)
