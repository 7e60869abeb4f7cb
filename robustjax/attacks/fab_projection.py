"""FAB's projection: the smallest L-inf, L2 or L1 step onto a hyperplane inside the box.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack" (ICML 2020), Section 3.2: min ||d||_p subject to w.(t + d) = b and t + d in the
box, solved exactly for p = inf and 2, and by a bisection for p = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.attacks import first_order as _a

__all__ = ["project_onto_hyperplane"]

Array = jax.Array


def project_onto_hyperplane(t: Array, w: Array, b: Array, *, norm: str,
                            bounds: tuple[float, float] = (0.0, 1.0),
                            iterations: int = 24) -> Array:
    """The smallest ``d`` in ``norm`` with ``w . (t + d) = b`` and ``t + d`` in ``bounds``.

    ``t``, ``w``: ``[B, D]``; ``b``: ``[B]``. Moving coordinate i by ``m_i``
    towards the hyperplane changes ``w . t`` by ``|w_i| m_i``, and it can move at
    most ``p_i`` (the distance to the box on that side). The optimum (KKT) is
    ``m_i = min(lam s_i, p_i)`` with ``s_i = 1`` for L-inf and ``|w_i|`` for L2,
    at the smallest ``lam`` whose gain ``G(lam) = sum_i |w_i| m_i`` closes the
    gap ``|w . t - b|``. G is piecewise linear and increasing, so ``lam`` is
    bracketed by ``iterations`` geometric bisection steps and then solved
    exactly on its linear piece (no sort, which is slow on XLA:CPU). If even the
    whole box cannot reach the hyperplane, every coordinate moves to the box
    (the closest the box gets).
    """
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    if norm == "l1":
        return _project_l1(t, w, b, bounds, iterations)
    lo, hi = bounds
    gap = jnp.sum(w * t, axis=1) - b
    ws = w * jnp.where(gap >= 0, 1.0, -1.0)[:, None]  # now w.t >= b: lower w.t by |gap|
    need = jnp.abs(gap)[:, None]
    aw = jnp.abs(ws)
    active = aw > 0
    room = jnp.maximum(jnp.where(ws > 0, t - lo, hi - t), 0.0) * active
    slope = jnp.ones_like(aw) if norm == "linf" else aw        # m_i = min(lam s_i, p_i)
    brk = jnp.where(active, room / jnp.where(active, slope, 1.0), 0.0)

    def gain(lam):
        return jnp.sum(aw * jnp.minimum(lam * slope, room), axis=1, keepdims=True)

    total = jnp.sum(aw * room, axis=1, keepdims=True)         # G(infinity)
    feasible = total > need
    # G(lam) <= lam * sum(|w| s): lam_free (no box) is a lower bound, the last breakpoint
    # an upper bound of the solution.
    lam_lo = need / jnp.maximum(jnp.sum(aw * slope, axis=1, keepdims=True), 1e-30)
    lam_hi = jnp.max(brk, axis=1, keepdims=True)
    lam_lo = jnp.clip(lam_lo, 1e-30, None)
    lam_hi = jnp.maximum(lam_hi, lam_lo)

    def bisect(_, bracket):
        l, h = bracket
        mid = jnp.sqrt(l * h)
        below = gain(mid) < need
        return jnp.where(below, mid, l), jnp.where(below, h, mid)

    lam_lo, _ = jax.lax.fori_loop(0, iterations, bisect, (lam_lo, lam_hi))
    # On the piece above lam_lo: G(lam) = sum_{saturated} |w| p + lam * sum_{free} |w| s.
    saturated = brk <= lam_lo
    fixed = jnp.sum(jnp.where(saturated, aw * room, 0.0), axis=1, keepdims=True)
    rate = jnp.sum(jnp.where(saturated, 0.0, aw * slope), axis=1, keepdims=True)
    lam = jnp.maximum((need - fixed) / jnp.maximum(rate, 1e-30), 0.0)
    move = jnp.where(feasible, jnp.minimum(lam * slope, room), room)
    return jnp.where(active, -jnp.sign(ws) * move, 0.0)


def _project_l1(t, w, b, bounds, iterations):
    """The L1 case of :func:`project_onto_hyperplane`.

    A unit of L1 distance on coordinate i gains ``|w_i|``, so the optimum moves
    the coordinates in decreasing order of ``|w_i|`` to the box until the gap is
    closed (the official FAB's ``projection_l1`` sorts them). Here the
    threshold ``tau`` on ``|w_i|`` that closes the gap is bracketed by
    ``2 * iterations`` bisection steps; coordinates above the bracket move fully
    and those inside it (equal ``|w_i|`` up to the bracket's width) share the
    rest of the gap.
    """
    lo, hi = bounds
    gap = jnp.sum(w * t, axis=1) - b
    ws = w * jnp.where(gap >= 0, 1.0, -1.0)[:, None]
    need = jnp.abs(gap)[:, None]
    aw = jnp.abs(ws)
    room = jnp.maximum(jnp.where(ws > 0, t - lo, hi - t), 0.0) * (aw > 0)
    gain = aw * room

    def above(tau):  # gain of moving every coordinate with |w_i| > tau to the box
        return jnp.sum(jnp.where(aw > tau, gain, 0.0), axis=1, keepdims=True)

    def bisect(_, bracket):
        l, h = bracket
        mid = 0.5 * (l + h)
        short = above(mid) < need
        return jnp.where(short, l, mid), jnp.where(short, mid, h)

    top = jnp.max(aw, axis=1, keepdims=True)
    l, h = jax.lax.fori_loop(0, 2 * iterations, bisect, (jnp.zeros_like(top), top))
    full = aw > h
    band = (aw > l) & ~full
    rest = need - above(h)
    band_gain = jnp.sum(jnp.where(band, gain, 0.0), axis=1, keepdims=True)
    frac = jnp.clip(rest / jnp.maximum(band_gain, 1e-30), 0.0, 1.0)
    move = jnp.where(full, room, jnp.where(band, frac * room, 0.0))
    return -jnp.sign(ws) * move
