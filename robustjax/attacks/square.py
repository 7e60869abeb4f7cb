"""The Square attack: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
query-efficient black-box adversarial attack via random search" (ECCV 2020).

A score-based random search that only evaluates the model (no gradients), so
it is immune to gradient masking; AutoAttack runs it last (Croce & Hein 2020,
Section 5) with 5000 queries and p_init = 0.8. Each query changes one random
square window of side ``s`` and is kept if it lowers the margin loss
``z_y - max_{j != y} z_j`` (or misclassifies). The window covers a fraction p
of the image, ``s = round(sqrt(p * H * W))``, and p halves on the schedule of
the paper (Section 3, "Selection of p"): p_init for the first 10 queries,
then p_init / 2, / 4, ... after queries 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000.

* L-inf (Algorithm 2 of the paper): the start is vertical stripes of
  +-eps; a query sets the window, per channel, to a vertex x +- eps.
* L2 (Algorithm 3): the start is a grid of the paper's centred square
  patterns with random signs; a query moves the perturbation's mass out of a
  second window into the first, with a new pattern of two opposite halves
  (the ``eta`` of the paper), keeping the total norm at eps.
* L1 (the official code's L1 version, used by AutoAttack for L1): as L2, with
  patterns of weights 1 / (k + 1)^4 normalised in L1, the mass counted in L1,
  and every candidate projected exactly onto the L1 ball (radius
  eps (1 - 1e-6)) intersected with the box (:func:`robustjax.attacks.l1.project_l1_box`).

Windows, signs and the patterns' orientation are drawn per example (the
official code shares one window and sign across the batch). Everything runs
in one ``lax.while_loop`` that stops when the queries are spent, every
example is misclassified, or eps is 0; a misclassified example stops
spending queries.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import adaptive as _adaptive
from robustjax.attacks import first_order as _a
from robustjax.attacks import l1 as _l1

__all__ = ["SQUARE_LOSSES", "p_schedule", "square"]

Array = jax.Array
SQUARE_LOSSES = ("margin", "ce")
_SCHEDULE_QUERIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i, *, p_init: float = 0.8, num_queries: int = 5000, rescale: bool = False):
    """The fraction p of the image that query ``i`` (0-based) changes.

    ``rescale=True`` stretches the schedule, written for 10000 queries, to
    ``num_queries`` (AutoAttack runs it unstretched with 5000 queries).
    """
    it = jnp.asarray(i)
    if rescale:
        it = (it * (10000.0 / num_queries)).astype(jnp.int32)
    halvings = sum((it > q).astype(jnp.int32) for q in _SCHEDULE_QUERIES)
    return p_init / (2.0 ** halvings)


def _harmonic2(n_max: int, power: int = 2) -> np.ndarray:
    """H[n] = sum_{m=1}^{n} 1 / m^power, for n = 0 ... n_max."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_max + 1) ** power)]).astype(
        np.float32)


def _rectangle(i, j, nx, ny, h2):
    """The paper's rectangle pattern of size nx x ny at (i, j), before normalisation.

    Concentric rectangles around the centre, each adding 1 / (k + 1)^2: the value
    at Chebyshev distance d from the centre is sum_{k=d}^{K-1} 1 / (k + 1)^2.
    """
    cx, cy = nx // 2, ny // 2
    k = jnp.maximum(cx, cy) + 1
    d = jnp.maximum(jnp.abs(i - cx), jnp.abs(j - cy))
    inside = (i >= 0) & (i < nx) & (j >= 0) & (j < ny)
    return jnp.where(inside & (d < k), h2[k] - h2[jnp.minimum(d, k)], 0.0)


def _eta_table(s, size: int, norm: str = "l2") -> Array:
    """The pattern eta of side ``s`` (may be traced) on a ``size x size`` grid, unit norm.

    Rows [0, s // 2) hold one rectangle, rows [s // 2, s) the other with the
    opposite sign, each normalised to unit norm before the whole is (the paper's
    Algorithm 3, "meta-pattern"). Zero outside the s x s square. L2: rectangles
    of weight 1 / (k + 1)^2 and L2 norms; L1: 1 / (k + 1)^4 and L1 norms.
    """
    h2 = jnp.asarray(_harmonic2(size + 2, 4 if norm == "l1" else 2))
    i, j = jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing="ij")
    half = s // 2
    top = _rectangle(i, j, half, s, h2)
    bottom = _rectangle(i - half, j, s - half, s, h2)
    if norm == "l1":
        unit = lambda v: v / jnp.maximum(jnp.sum(jnp.abs(v)), 1e-12)  # noqa: E731
    else:
        unit = lambda v: v / jnp.maximum(jnp.sqrt(jnp.sum(v * v)), 1e-12)  # noqa: E731
    return unit(unit(top) - unit(bottom))  # s = 1: no top half


def _window_mask(rows, cols, vh, vw, s):
    """[B, H, W, 1] mask of the per-example windows [vh, vh + s) x [vw, vw + s)."""
    vh, vw = vh[:, None, None, None], vw[:, None, None, None]
    return (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)


def _place(table, rows, cols, vh, vw, transpose):
    """Per example, ``table`` (or its transpose) placed with its corner at (vh, vw)."""
    size = table.shape[0]
    r = jnp.clip(rows - vh[:, None, None, None], 0, size - 1)[..., 0]
    c = jnp.clip(cols - vw[:, None, None, None], 0, size - 1)[..., 0]
    r, c = jnp.where(transpose[:, None, None], c, r), jnp.where(transpose[:, None, None], r, c)
    return table[r, c][..., None]


def _sum_hw(v):
    return jnp.sum(v, axis=(1, 2), keepdims=True)


def _l2(v):
    return jnp.sqrt(jnp.sum(v * v, axis=(1, 2, 3), keepdims=True))


def _l1n(v):
    return jnp.sum(jnp.abs(v), axis=(1, 2, 3), keepdims=True)


def square(logits_fn: Callable, x: Array, y: Array, key: Array, *, eps, norm: str = "linf",
           num_queries: int = 5000, p_init: float = 0.8, loss: str = "margin",
           rescale_schedule: bool = False, bounds: tuple[float, float] = (0.0, 1.0),
           eot_samples: int = 1) -> Array:
    """Square attack (Andriushchenko et al. 2020), untargeted, L-inf, L2 or L1.

    AutoAttack's with the defaults.

    Args:
      logits_fn: ``x -> logits [B, K]``; only ever evaluated, never differentiated.
      x: clean images ``[B, H, W, C]`` (NHWC) in ``bounds``.
      y: true labels ``[B]``.
      key: PRNG key.
      eps: radius of the ``norm`` ball (>= 0; may be traced).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      num_queries: random-search iterations after the initial query (each one
        model evaluation per example still correctly classified).
      p_init: the window's initial fraction of the image (AutoAttack: 0.8).
      loss: ``"margin"`` (z_y - max_{j != y} z_j, AutoAttack's) or ``"ce"``
        (the negative cross-entropy); the search lowers it.
      rescale_schedule: stretch the p schedule (written for 10000 queries) to
        ``num_queries``; AutoAttack does not.
      bounds: valid input range.
      eot_samples: with more than 1, ``logits_fn`` is a randomised model ``(x, key) ->
        logits`` and every query scores the mean of the logits over this many draws
        (Expectation over Transformation, :func:`robustjax.attacks.adaptive.eot`), as
        APGD's ``eot_samples`` does for its gradients.

    Returns:
      Per example, the first misclassified point found, else the point of
      lowest loss; the shape and dtype of ``x``.
    """
    _checks.check_xy(x, y, targeted=False)
    _checks.check_int("eot_samples", eot_samples, 1)
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of images [B, H, W, C], got shape {x.shape}")
    _checks.check_scalar("eps", eps)
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    _checks.check_choice("loss", loss, SQUARE_LOSSES)
    _checks.check_int("num_queries", num_queries, 1)
    _checks.check_scalar("p_init", p_init, positive=True)
    if _checks.is_concrete(p_init) and float(p_init) > 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    if key is None:
        raise ValueError("key must be a jax.random key, got None")
    lo, hi = _checks.check_bounds(bounds)
    if eot_samples > 1:
        key, keot = jax.random.split(key)
        logits_fn = _adaptive.eot(logits_fn, eot_samples, key=keot)
    b, h, w, c = x.shape
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]
    side = min(h, w)

    def margin_and_loss(z):
        lg = _checks.checked_logits(logits_fn, z)
        margin = -_a.margin(lg, y)  # z_y - max_{j != y} z_j: > 0 while correct
        return margin, (margin if loss == "margin" else -_a.xent_loss(lg, y))

    kinit, kloop = jax.random.split(key)
    signs = lambda k, shape: jnp.where(jax.random.bernoulli(k, 0.5, shape), 1.0, -1.0)
    l1_radius = eps * (1.0 - 1e-6)
    if norm == "linf":
        x_best = jnp.clip(x + eps * signs(kinit, (b, 1, w, c)), lo, hi)
    elif norm == "l1":
        x_best = _l1.project_l1_box(x, x + _tiled_start(kinit, x.shape, "l1"), l1_radius,
                                    lo, hi)
    else:
        x_best = jnp.clip(x + eps * _tiled_start(kinit, x.shape, "l2"), lo, hi)
    x_best = x_best.astype(x.dtype)
    margin_min, loss_min = margin_and_loss(x_best)
    eta_size = side

    def body(carry):
        i, x_best, margin_min, loss_min, queries = carry
        k = jax.random.split(jax.random.fold_in(kloop, i), 6)
        p = p_schedule(i, p_init=p_init, num_queries=num_queries, rescale=rescale_schedule)
        s = jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32)
        if norm == "linf":
            s = jnp.clip(s, 1, side)
        else:
            s = jnp.maximum(s, 3)
            s = jnp.minimum(jnp.where(s % 2 == 0, s + 1, s), side)
        corner = lambda kk: jnp.floor(jax.random.uniform(kk, (2, b)) * (
            jnp.asarray([[h], [w]]) - s)).astype(jnp.int32)
        vh, vw = corner(k[0])
        win = _window_mask(rows, cols, vh, vw, s)
        sgn = signs(k[1], (b, 1, 1, c))
        if norm == "linf":
            cand = jnp.where(win, jnp.clip(x + eps * sgn, lo, hi), x_best)
        else:
            vh2, vw2 = corner(k[2])
            cand = _lp_candidate(norm, x, x_best, win, _window_mask(rows, cols, vh2, vw2, s),
                                 _place(_eta_table(s, eta_size, norm), rows, cols, vh, vw,
                                        jax.random.bernoulli(k[3], 0.5, (b,))),
                                 sgn, eps=eps, l1_radius=l1_radius, lo=lo, hi=hi)
        cand = cand.astype(x.dtype)
        margin, value = margin_and_loss(cand)
        active = margin_min > 0
        improved = active & (value < loss_min)
        take = improved | (active & (margin <= 0))
        tb = take.reshape(b, 1, 1, 1)
        return (i + 1, jnp.where(tb, cand, x_best), jnp.where(take, margin, margin_min),
                jnp.where(improved, value, loss_min), queries + active.astype(jnp.int32))

    def cond(carry):  # at eps 0 no query can change the input: stop at once
        i, _, margin_min, _, _ = carry
        return (i < num_queries) & jnp.any(margin_min > 0) & (eps > 0)

    init = (jnp.asarray(0, jnp.int32), x_best, margin_min, loss_min, jnp.ones(b, jnp.int32))
    _, x_best, _, _, _ = jax.lax.while_loop(cond, body, init)
    return x_best


def _lp_candidate(norm, x, x_best, win, win2, pattern, sgn, *, eps, l1_radius, lo, hi):
    """Square's L2 / L1 proposal (Andriushchenko et al. 2020, Algorithm 3 and the L1 version
    of Croce & Hein 2021): the perturbation's mass in both windows moved into the first,
    with a new pattern there, then scaled back onto the eps-sphere."""
    c = x.shape[-1]
    delta = x_best - x
    if norm == "l1":
        in1 = _sum_hw(jnp.abs(delta * win))
        in_both = _sum_hw(jnp.abs(delta * (win | win2)))
        new = pattern * sgn + delta * win / (1e-12 + in1)
        budget = (jnp.maximum(eps - _l1n(delta), 0.0) / c + in_both) * c
        new = new / (1e-12 + _sum_hw(jnp.abs(new))) * budget
        delta = jnp.where(win, new, jnp.where(win2, 0.0, delta))
        return _l1.project_l1_box(x, x + delta, l1_radius, lo, hi)
    in1 = jnp.sqrt(_sum_hw(jnp.square(delta * win)))
    in_both = jnp.sqrt(_sum_hw(jnp.square(delta * (win | win2))))
    new = pattern * sgn + delta * win / (1e-12 + in1)
    budget = jnp.sqrt(jnp.maximum(eps ** 2 - _l2(delta) ** 2, 0.0) / c + in_both ** 2)
    new = new / (1e-12 + jnp.sqrt(_sum_hw(new * new))) * budget
    delta = jnp.where(win, new, jnp.where(win2, 0.0, delta))
    return jnp.clip(x + eps * delta / (_l2(delta) + 1e-12), lo, hi)


def _tiled_start(key, shape, norm):
    """The L2 / L1 start: a grid of eta patterns of side H // 5 with random signs.

    L2: scaled to unit L2 norm (the caller multiplies by eps). L1: as the
    official code, the tiles themselves (each of unit L1 norm per channel); the
    caller projects them onto the eps-ball and the box.
    """
    b, h, w, c = shape
    s = h // 5
    if s < 1:
        raise ValueError(f"the {norm.upper()} Square attack needs images of height >= 5, "
                         f"got {h}")
    eta = _eta_table(s, s, norm)
    start = (h - 5 * s) // 2
    delta = jnp.zeros(shape, jnp.float32)
    ksign, kflip = jax.random.split(key)
    n_h, n_w = h // s, w // s
    sgn = jnp.where(jax.random.bernoulli(ksign, 0.5, (n_h, n_w, b, 1, 1, c)), 1.0, -1.0)
    flip = jax.random.bernoulli(kflip, 0.5, (n_h, n_w, b))
    for a in range(n_h):
        for bb in range(n_w):
            r0, c0 = start + a * s, start + bb * s
            if r0 + s > h or c0 + s > w:
                continue
            tile = jnp.where(flip[a, bb][:, None, None], eta.T[None], eta[None])[..., None]
            delta = delta.at[:, r0:r0 + s, c0:c0 + s, :].add(tile * sgn[a, bb])
    return delta if norm == "l1" else delta / (_l2(delta) + 1e-12)
