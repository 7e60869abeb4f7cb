"""DDN, Decoupled Direction and Norm: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin &
Granger, "Decoupling Direction and Norm for Efficient Gradient-Based L2 Adversarial
Attacks and Defenses" (CVPR 2019), Algorithm 1.

DDN keeps a perturbation ``delta`` and a norm ``eps`` per example. Each step takes a
step of length ``alpha`` (cosine-annealed from 1 to 0.01) along the L2-normalised
gradient of the cross-entropy (away from ``y``; targeted: towards it); then shrinks
``eps`` by ``(1 - gamma)`` if the current point is adversarial, else grows it by
``(1 + gamma)``; puts ``delta`` on the sphere of radius ``eps``; clips to the box and,
with ``levels``, rounds the point to that many grey levels (the paper: 256, so that the
adversarial example is a valid 8-bit image). The adversarial point of smallest norm
seen is returned. A zero gradient is replaced by a random direction (the authors' code),
one drawn from ``key`` per run. One step costs one forward and one backward pass.

Defaults are the authors': 100 steps, ``gamma`` 0.05, initial norm 1, 256 levels.
foolbox 3.3.4's ``DDNAttack`` does not quantise: ``levels=None`` is its algorithm.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.attacks import first_order as _a
from robustjax.attacks import min_norm as _mn
from robustjax.models import fastpath

__all__ = ["ddn"]

Array = jax.Array


def ddn(logits_fn, x: Array, y: Array, key: Optional[Array] = None, *, steps: int = 100,
        targeted: bool = False, gamma: float = 0.05, init_norm: float = 1.0,
        levels: Optional[int] = 256, bounds: tuple[float, float] = (0.0, 1.0)
        ) -> _mn.MinNormResult:
    """The DDN attack in L2 (Rony et al., CVPR 2019, Algorithm 1).

    Args:
      logits_fn: ``x -> logits [B, K]``.
      x, y: inputs in ``bounds`` and their labels (targets when ``targeted``).
      key: draws the random direction that replaces a zero gradient (default
        ``PRNGKey(0)``).
      steps: iterations (one forward and one backward pass each).
      targeted: find points classified as ``y``.
      gamma: the norm's rate of change per step.
      init_norm: the first radius.
      levels: the number of grey levels every iterate is rounded to (``None``: no
        rounding).
      bounds: the box of valid inputs.

    Returns:
      A :class:`robustjax.attacks.min_norm.MinNormResult` (``norms`` in L2).
    """
    lo, hi = _mn.check_common(x, y, norm="l2", steps=steps, bounds=bounds, targeted=targeted)
    _checks.check_scalar("gamma", gamma, positive=True)
    _checks.check_scalar("init_norm", init_norm, positive=True)
    if levels is not None:
        _checks.check_int("levels", levels, 2)
    if _checks.is_concrete(gamma) and not float(gamma) < 1:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    key = jax.random.PRNGKey(0) if key is None else key
    logits_fn = fastpath.auto(logits_fn)
    sign = -1.0 if targeted else 1.0  # ascend sign * cross-entropy
    worst = _mn.worst_norm(x, "l2", lo, hi)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)

    def objective(z):
        logits = _checks.checked_logits(logits_fn, z)
        return jnp.sum(sign * _a.xent_loss(logits, y)), logits

    def quantise(z):
        if levels is None:
            return z
        scale = (levels - 1) / (hi - lo)
        return lo + jnp.round((z - lo) * scale) / scale

    def body(i, carry):
        delta, eps, best = carry
        alpha = 0.01 + (1.0 - 0.01) * (1.0 + jnp.cos(math.pi * i / steps)) / 2.0
        x_adv = jnp.clip(x + delta, lo, hi)  # x + (clip(x + d) - x) can round out of it
        grad, logits = jax.grad(objective, has_aux=True)(x_adv)
        pred = jnp.argmax(logits, axis=1)
        is_adv = pred == y if targeted else pred != y
        best = _mn.record_best(best, x_adv, x, logits, y, "l2", targeted=targeted)
        g_norm = _mn.distance(grad, "l2")
        direction = jnp.where((g_norm < 1e-12).reshape(shape),
                              noise / _mn.distance(noise, "l2").reshape(shape),
                              grad / jnp.maximum(g_norm, 1e-12).reshape(shape))
        delta = delta + alpha * direction
        eps = jnp.minimum(jnp.where(is_adv, 1.0 - gamma, 1.0 + gamma) * eps, worst)
        d_norm = jnp.maximum(_mn.distance(delta, "l2"), 1e-12)
        delta = delta * (eps / d_norm).reshape(shape)
        delta = quantise(jnp.clip(x + delta, lo, hi)) - x
        return delta, eps, best

    noise = jax.random.normal(key, x.shape, jnp.float32)
    found0 = jnp.zeros((x.shape[0],), bool)
    init = (jnp.zeros_like(x), jnp.full((x.shape[0],), init_norm, jnp.float32),
            (x, worst, found0))
    _, _, best = jax.lax.fori_loop(0, steps, body, init)
    return _mn.finish(x, best, "l2", (steps, steps))
