"""FAB, the Fast Adaptive Boundary attack: Croce & Hein, "Minimally distorted
adversarial examples with a fast adaptive boundary attack" (ICML 2020), and its
targeted version FAB-T of AutoAttack (Croce & Hein 2020, Section 5).

FAB minimises the norm of the perturbation. Each step linearises the model at
the current iterate x_k, picks the decision hyperplane that looks closest
(untargeted: over all classes; targeted: the target's), and projects both x_k
and the original point x_orig onto it, inside the box of valid inputs
(Section 3.1, the projections of Section 3.2). The two projections are mixed
with weight alpha = min(|d_k| / (|d_k| + |d_orig|), alpha_max), the bias
towards the original point, and extrapolated by eta (Section 3.3):

    x_{k+1} = clip((1 - alpha)(x_k + eta d_k) + alpha (x_orig + eta d_orig)).

Whenever x_{k+1} is adversarial it is kept if it is the smallest so far, and
the iterate steps back towards x_orig by beta. A final search (the paper's
linear-approximation search on the segment from x_orig to the best point)
shrinks the perturbation further. An example counts as broken at radius eps
only if the smallest adversarial perturbation found has norm <= eps: the
eps-ball check of AutoAttack.

:func:`project_onto_hyperplane` solves min ||d||_p s.t. w.(t + d) = b,
lo <= t + d <= hi, for p = inf, 2 and 1 (FAB-L1: the coordinates of largest
|w_i| move to the box first, a fractional knapsack).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.attacks import adaptive as _adaptive
from robustjax.attacks import first_order as _a
from robustjax.attacks.fab_projection import project_onto_hyperplane
from robustjax.models import fastpath

__all__ = ["project_onto_hyperplane", "fab_min_norm", "fab"]

Array = jax.Array
_BIG = 1e10
_SEARCH_MARGIN = 1e-4


# ----------------------------------------------------------------------------
# The FAB iteration
# ----------------------------------------------------------------------------

def _dual_norm(v: Array, norm: str) -> Array:
    """||v||_q over the last axis, q the dual of the attack's norm.

    L-inf -> L1, L2 -> L2, L1 -> L-inf.
    """
    if norm == "linf":
        return jnp.sum(jnp.abs(v), axis=-1)
    if norm == "l1":
        return jnp.max(jnp.abs(v), axis=-1)
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _flat_norm(v: Array, norm: str) -> Array:
    if norm == "linf":
        return jnp.max(jnp.abs(v), axis=-1)
    if norm == "l1":
        return jnp.sum(jnp.abs(v), axis=-1)
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _hyperplane(logits_fn, x1, y, t, targeted: bool, norm: str):
    """The linearised decision boundary nearest to x1: ``(w [B, D], b [B])``.

    Targeted: f = z_t - z_y. Untargeted: f_k = z_k - z_y for every k != y (the
    full Jacobian: one forward, K backward passes), the one with the smallest
    |f_k| / ||grad f_k||_q.
    """
    bsz = x1.shape[0]
    flat = x1.reshape(bsz, -1)
    if targeted:
        def diff(z):
            lg = _checks.checked_logits(logits_fn, z)
            pick = lambda c: jnp.take_along_axis(lg, c[:, None], axis=1)[:, 0]
            return pick(t) - pick(y)
        f, vjp = jax.vjp(diff, x1)
        (g,) = vjp(jnp.ones_like(f))
        w = g.reshape(bsz, -1)
        fsel = f
    else:
        lg, vjp = jax.vjp(lambda z: _checks.checked_logits(logits_fn, z), x1)
        num_classes = lg.shape[-1]
        eye = jnp.eye(num_classes, dtype=lg.dtype)
        jac = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, lg.shape))[0])(eye)  # [K, B, ...]
        jac = jnp.moveaxis(jac.reshape(num_classes, bsz, -1), 0, 1)          # [B, K, D]
        own = jax.nn.one_hot(y, num_classes, dtype=bool)
        z_y = jnp.take_along_axis(lg, y[:, None], axis=1)
        df = jnp.where(own, _BIG, lg - z_y)
        dg = jac - jnp.take_along_axis(jac, y[:, None, None], axis=1)
        dist = jnp.abs(df) / (1e-12 + _dual_norm(dg, norm))
        ind = jnp.argmin(dist, axis=1)
        fsel = jnp.take_along_axis(df, ind[:, None], axis=1)[:, 0]
        w = jnp.take_along_axis(dg, ind[:, None, None], axis=1)[:, 0]
    b = jnp.sum(w * flat, axis=1) - fsel
    return w, b


def _final_search(logits_fn, x0, adv, y, found, steps: int):
    """The FAB paper's final search: bisect the segment [x_orig, adv] with the linearised margin.

    On the segment, the margin ``z_y - z_l`` (l: the adversarial class) is
    interpolated linearly between the current clean-side and adversarial-side
    points; the point where it crosses zero (aimed a little beyond, see below)
    becomes the new adversarial point if it is misclassified, else the new
    clean-side point. The adversarial end only
    moves towards x_orig, so its norm never grows. Here "misclassified" needs
    a margin of ``_SEARCH_MARGIN`` relative to the logits' scale: a point left
    on the boundary to within float rounding can flip when the model is
    evaluated again, and would then not count.
    """
    bshape = (x0.shape[0],) + (1,) * (x0.ndim - 1)

    def pair_margin(lg, lab):
        pick = lambda c: jnp.take_along_axis(lg, c[:, None], axis=1)[:, 0]
        return pick(y) - pick(lab)

    lab = jnp.argmax(logits_fn(adv), -1)
    keep = found.reshape(bshape)

    def body(_, c):
        a1, a2, lab = c
        m1 = pair_margin(logits_fn(a1), lab)
        lg2 = logits_fn(a2)
        m2 = pair_margin(lg2, lab)
        # Aim at a margin of twice the acceptance threshold beyond the boundary.
        aim = 2 * _SEARCH_MARGIN * (1.0 + jnp.max(jnp.abs(lg2), axis=-1))
        frac = (m1 + aim) / (m1 - m2 + 1e-10)
        frac = jnp.where((frac >= 0) & (frac <= 1), frac, 1.0).reshape(bshape)
        a3 = a1 * (1 - frac) + a2 * frac
        lg3 = logits_fn(a3)
        scale = 1.0 + jnp.max(jnp.abs(lg3), axis=-1)
        adversarial = _a.margin(lg3, y) > _SEARCH_MARGIN * scale
        adv_b = adversarial.reshape(bshape)
        return (jnp.where(~adv_b & keep, a3, a1), jnp.where(adv_b & keep, a3, a2),
                jnp.where(adversarial & found, jnp.argmax(lg3, -1), lab))

    _, adv, _ = jax.lax.fori_loop(0, steps, body, (x0, adv, lab))
    return adv


def _fab_single(logits_fn, x, y, t, key, *, norm, eps, num_steps, targeted, random_start,
                alpha_max, eta, beta, lo, hi, final_search_steps):
    """One FAB run; returns (smallest adversarial point [B, ...], its norm [B], inf if none)."""
    bsz = x.shape[0]
    x0 = x.reshape(bsz, -1)
    if random_start:  # half-way into the eps-ball, as the official code does
        if norm == "linf":
            r = jax.random.uniform(key, x0.shape, jnp.float32, -1.0, 1.0)
        else:  # L2 and L1: a Gaussian direction
            r = jax.random.normal(key, x0.shape, jnp.float32)
        r = r / (_flat_norm(r, norm)[:, None] + 1e-12)
        x1 = jnp.clip(x0 + 0.5 * eps * r, lo, hi)
    else:
        x1 = x0

    def body(_, c):
        x1, adv, best = c
        w, b = _hyperplane(logits_fn, x1.reshape(x.shape), y, t, targeted, norm)
        d1 = project_onto_hyperplane(x1, w, b, norm=norm, bounds=(lo, hi))
        d2 = project_onto_hyperplane(x0, w, b, norm=norm, bounds=(lo, hi))
        a1 = jnp.maximum(_flat_norm(d1, norm), 1e-8)[:, None]
        a2 = jnp.maximum(_flat_norm(d2, norm), 1e-8)[:, None]
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
        x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, lo, hi)
        is_adv = jnp.argmax(logits_fn(x1.reshape(x.shape)), -1) != y
        dist = _flat_norm(x1 - x0, norm)
        better = is_adv & (dist < best)
        adv = jnp.where(better[:, None], x1, adv)
        best = jnp.where(better, dist, best)
        x1 = jnp.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)
        return x1, adv, best

    init = (x1, x0, jnp.full((bsz,), jnp.inf, jnp.float32))
    _, adv, best = jax.lax.fori_loop(0, num_steps, body, init)
    found = jnp.isfinite(best)
    adv = adv.reshape(x.shape)
    if final_search_steps:
        adv = _final_search(logits_fn, x, adv, y, found, final_search_steps)
        best = jnp.where(found, _flat_norm((adv - x).reshape(bsz, -1), norm), jnp.inf)
    return adv.astype(x.dtype), best


def _check_fab(x, y, eps, norm, num_steps, restarts, alpha_max, eta, beta,
               final_search_steps, bounds):
    _checks.check_xy(x, y, targeted=False)
    if eps is not None:
        _checks.check_scalar("eps", eps)
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    _checks.check_int("num_steps", num_steps, 1)
    _checks.check_int("restarts", restarts, 1)
    _checks.check_int("final_search_steps", final_search_steps, 0)
    _checks.check_scalar("alpha_max", alpha_max)
    _checks.check_scalar("eta", eta, positive=True)
    _checks.check_scalar("beta", beta, positive=True)
    return _checks.check_bounds(bounds)


def fab_min_norm(logits_fn: Callable, x: Array, y: Array, key: Optional[Array], *,
                 norm: str = "linf", num_steps: int = 100, targeted: bool = True,
                 num_targets: int = 9, target_ranks=None, restarts: int = 1,
                 eps: Optional[float] = None, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, final_search_steps: int = 3,
                 bounds: tuple[float, float] = (0.0, 1.0),
                 eot_samples: int = 1) -> tuple[Array, Array]:
    """FAB as a minimum-norm attack: ``(x_adv, norm)`` with the smallest adversarial perturbation found.

    Per example, over every target (FAB-T: the classes ranked 2 ...
    num_targets + 1 on the clean input, or ``target_ranks``) and restart, the
    adversarial point of smallest ``norm``-distance and that distance; where
    none was found, ``x`` itself and ``inf``. Restart 0 starts at ``x``; later
    restarts start at a random point at distance ``eps / 2`` (``eps`` is
    then required). Clean misclassifications are returned as ``x`` with norm 0. With
    ``eot_samples > 1``, ``logits_fn`` is a randomised model ``(x, key) -> logits`` and FAB
    runs on the mean of its logits over that many draws (:func:`robustjax.attacks.adaptive.eot`).
    """
    lo, hi = _check_fab(x, y, eps, norm, num_steps, restarts, alpha_max, eta, beta,
                        final_search_steps, bounds)
    _checks.check_int("eot_samples", eot_samples, 1)
    if eot_samples > 1:
        key = jax.random.PRNGKey(0) if key is None else key
        key, keot = jax.random.split(key)
        logits_fn = _adaptive.eot(logits_fn, eot_samples, key=keot)
    if restarts > 1 and eps is None:
        raise ValueError("eps must be given for restarts > 1 (it sets the random starts)")
    if key is None and restarts > 1:
        raise ValueError("key must be a jax.random key when restarts > 1, got None")
    logits_fn = fastpath.auto(logits_fn)
    clean = _checks.checked_logits(logits_fn, x)
    num_classes = clean.shape[-1]
    if targeted:
        if target_ranks is None:
            _checks.check_int("num_targets", num_targets, 1)
            target_ranks = list(range(2, num_targets + 2))
        ranks = jnp.asarray(target_ranks, jnp.int32).reshape(-1)
        if _checks.is_concrete(ranks) and (int(ranks.min()) < 2 or int(ranks.max()) > num_classes):
            raise ValueError(f"target ranks must lie in [2, {num_classes}] (the number of "
                             f"classes), got {target_ranks}")
    else:
        ranks = jnp.zeros((1,), jnp.int32)
    order = jnp.argsort(clean, axis=-1)
    key = jax.random.PRNGKey(0) if key is None else key
    eps_start = 0.0 if eps is None else eps

    def run(carry, inp):
        adv, best = carry
        rank, r, k = inp
        t = jnp.take(order, num_classes - rank, axis=1) if targeted else y
        # Restart 0 without random start: a traced switch keeps one compiled body.
        x_adv, dist = _fab_single(logits_fn, x, y, t, k, norm=norm, eps=eps_start * (r > 0),
                                  num_steps=num_steps, targeted=targeted, random_start=True,
                                  alpha_max=alpha_max, eta=eta, beta=beta, lo=lo, hi=hi,
                                  final_search_steps=final_search_steps)
        better = dist < best
        bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return (jnp.where(better.reshape(bshape), x_adv, adv), jnp.minimum(dist, best)), None

    grid_ranks = jnp.repeat(ranks, restarts)
    grid_restart = jnp.tile(jnp.arange(restarts), ranks.shape[0])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(grid_ranks.shape[0]))
    init = (x, jnp.full((x.shape[0],), jnp.inf, jnp.float32))
    (adv, best), _ = jax.lax.scan(run, init, (grid_ranks, grid_restart, keys))
    wrong = jnp.argmax(clean, -1) != y
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return jnp.where(wrong.reshape(bshape), x, adv), jnp.where(wrong, 0.0, best)


def fab(logits_fn: Callable, x: Array, y: Array, key: Optional[Array], *, eps,
        norm: str = "linf", num_steps: int = 100, targeted: bool = True,
        num_targets: int = 9, target_rank=None, restarts: int = 1, alpha_max: float = 0.1,
        eta: float = 1.05, beta: float = 0.9, final_search_steps: int = 3,
        bounds: tuple[float, float] = (0.0, 1.0), eot_samples: int = 1) -> Array:
    """FAB within an eps-ball (Croce & Hein, ICML 2020, Algorithm 1): AutoAttack's FAB-T with
    the defaults (9 targets, 100 steps).

    Runs :func:`fab_min_norm` and returns, per example, the smallest adversarial
    point found if its ``norm`` distance is at most ``eps`` (the eps-ball
    check), else ``x`` unchanged: FAB's points beyond eps are not valid
    adversarial examples for this threat model.

    Args:
      logits_fn: ``x -> logits [B, K]``.
      x, y: clean inputs in ``bounds`` and their true labels.
      key: PRNG key for the random starts of restarts > 0 (may be None with 1 restart).
      eps: the radius of the threat model; also sets the random starts.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      num_steps: FAB iterations per run (100).
      targeted: FAB-T (the hyperplane of one target class per run) or untargeted
        FAB (the nearest of all class boundaries: a full Jacobian per step).
      num_targets: FAB-T's targets, the classes ranked 2 ... num_targets + 1.
      target_rank: FAB-T towards the class of this rank only (may be traced);
        overrides ``num_targets``.
      restarts: runs per target; restart 0 starts at x.
      alpha_max, eta, beta: the bias towards x, the extrapolation and the
        backward step of the FAB paper (0.1, 1.05, 0.9).
      final_search_steps: steps of the final search (the FAB paper: 3; 0: off).
      bounds: valid input range (the box of the projections).
      eot_samples: with more than 1, a randomised ``logits_fn(x, key)`` attacked through
        the mean of its logits over this many draws (as APGD's ``eot_samples``).
    """
    _checks.check_scalar("eps", eps)
    if target_rank is not None and _checks.is_concrete(target_rank):
        _checks.check_int("target_rank", target_rank, 2)
    adv, dist = fab_min_norm(logits_fn, x, y, key, norm=norm, num_steps=num_steps,
                             targeted=targeted, num_targets=num_targets, restarts=restarts,
                             target_ranks=None if target_rank is None else [target_rank],
                             eps=eps, alpha_max=alpha_max, eta=eta, beta=beta,
                             final_search_steps=final_search_steps, bounds=bounds,
                             eot_samples=eot_samples)
    ok = dist <= eps
    return jnp.where(ok.reshape((x.shape[0],) + (1,) * (x.ndim - 1)), adv, x)
