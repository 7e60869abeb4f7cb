"""Norm geometries of the threat models S = {delta : ||delta|| <= eps} (Madry et al.
Section 2.1; L1: Croce & Hein, ICML 2021): a random start, the steepest-ascent
direction, the projection onto the ball (and the box of valid inputs) and the
distance. :mod:`robustjax.attacks.first_order` re-exports every name here; the attacks take
a :class:`Norm` by name through :data:`NORMS`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import l1 as _l1

__all__ = ["Norm", "LINF", "L2", "L1", "NORMS", "l1_geometry"]

Array = jax.Array
_TINY = 1e-12


def _per_example(fn, v: Array) -> Array:
    """Reduce over every axis but the batch axis, keeping dims for broadcasting."""
    return fn(v, axis=tuple(range(1, v.ndim)), keepdims=True)


def _l2_norm(v: Array) -> Array:
    return jnp.sqrt(_per_example(jnp.sum, jnp.square(v)))


class Norm(NamedTuple):
    """The geometry of a threat model S = {delta : ||delta|| <= eps}.

    ``random_init(key, shape, eps)``: a perturbation drawn uniformly from the ball.
    ``ascent(grad)``: the steepest-ascent direction of unit norm for this norm.
    ``project(delta, eps)``: the Euclidean projection of a perturbation onto the ball.
    ``distance(delta)``: per-example norm, shape ``[B]``.
    ``box_ascent(grad, x_adv, lo, hi)``: optional, the ascent direction at ``x_adv``
    given the box (see :meth:`direction`).
    ``project_box(x, z, eps, lo, hi)``: the point the attacks step to from ``z``:
    inside the ball around ``x`` and the box ``[lo, hi]``. L-inf: exact (the two
    constraints are per coordinate). L2: the ball's projection, then clipping,
    as Madry et al. and AutoAttack do. L1: the exact projection onto the
    intersection (:func:`robustjax.attacks.l1.project_l1_box`), since clipping after the
    ball's projection would leave part of the budget unused.
    """

    name: str
    random_init: Callable[[Array, tuple, Array], Array]
    ascent: Callable[[Array], Array]
    project: Callable[[Array, Array], Array]
    distance: Callable[[Array], Array]
    project_box: Optional[Callable] = None
    box_ascent: Optional[Callable] = None

    def direction(self, grad: Array, x_adv: Array, lo: float, hi: float) -> Array:
        """The step direction at ``x_adv``: ``box_ascent(grad, x_adv, lo, hi)`` if the
        geometry has one (L1: coordinates that the box stops are not chosen), else
        ``ascent(grad)``."""
        if self.box_ascent is not None:
            return self.box_ascent(grad, x_adv, lo, hi)
        return self.ascent(grad)

    def to_box(self, x: Array, z: Array, eps, lo: float, hi: float) -> Array:
        """``z`` moved into the threat model around ``x`` (see ``project_box``)."""
        if self.project_box is not None:
            return self.project_box(x, z, eps, lo, hi).astype(x.dtype)
        return jnp.clip(x + self.project(z - x, eps), lo, hi).astype(x.dtype)


def _linf_init(key, shape, eps):
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * eps


def _linf_project(delta, eps):
    return jnp.clip(delta, -eps, eps)


def _linf_distance(delta):
    return jnp.max(jnp.abs(delta.reshape(delta.shape[0], -1)), axis=1)


LINF = Norm("linf", _linf_init, jnp.sign, _linf_project, _linf_distance)
"""L-infinity ball (the paper's threat model): sign-gradient steps, clipping."""


def _l2_init(key, shape, eps):
    kdir, krad = jax.random.split(key)
    direction = jax.random.normal(kdir, shape, jnp.float32)
    direction = direction / jnp.maximum(_l2_norm(direction), _TINY)
    dim = int(np.prod(shape[1:]))
    radius = jax.random.uniform(krad, (shape[0],) + (1,) * (len(shape) - 1)) ** (1.0 / dim)
    return direction * radius * eps


def _l2_ascent(grad):
    return grad / jnp.maximum(_l2_norm(grad), _TINY)


def _l2_project(delta, eps):
    norm = _l2_norm(delta)
    return delta * jnp.where(norm > eps, eps / jnp.maximum(norm, _TINY), 1.0)


def _l2_distance(delta):
    return jnp.sqrt(jnp.sum(jnp.square(delta.reshape(delta.shape[0], -1)), axis=1))


L2 = Norm("l2", _l2_init, _l2_ascent, _l2_project, _l2_distance)
"""L2 ball (paper Figure 6's L2 curves): normalised-gradient steps, rescaling."""


def _l1_project(delta, eps):
    zero = jnp.zeros_like(delta)
    big = jnp.finfo(jnp.float32).max
    return _l1.project_l1_box(zero, delta, eps, -big, big)


def l1_geometry(top_fraction: float = 0.01) -> Norm:
    """The L1 ball with a sparse ascent on the top ``top_fraction`` of gradient coordinates.

    The L1 steepest-ascent direction is a single coordinate; steps on the
    largest ``top_fraction`` of coordinates (the signs, of unit L1 norm; Tramer &
    Boneh 2019's SLIDE, q = 99th percentile by default) make progress faster.
    In PGD the coordinates already at the box in the gradient's direction are
    left out of the choice (Croce & Hein 2021, Section 3: such a step would be
    clipped away and the attack would stall). The random start is uniform in the
    L1 ball, and every iterate is projected exactly onto the ball intersected
    with the box.
    """
    if not 0.0 < float(top_fraction) <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")

    def box_ascent(grad, x_adv, lo, hi):
        blocked = ((grad > 0) & (x_adv >= hi)) | ((grad < 0) & (x_adv <= lo))
        return _l1.sparse_ascent(jnp.where(blocked, 0.0, grad), top_fraction)

    return Norm("l1", _l1.l1_ball_uniform,
                lambda g: _l1.sparse_ascent(g, top_fraction), _l1_project,
                _l1.l1_distance, _l1.project_l1_box, box_ascent)


L1 = l1_geometry()
"""L1 ball (Croce & Hein 2021's threat model): sparse signed steps on the top 1% of
coordinates, the exact projection onto the ball intersected with the box."""

NORMS = {"linf": LINF, "l2": L2, "l1": L1}
