"""Auto-PGD and the DLR loss: Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks" (ICML 2020).

* :func:`apgd` is APGD (Section 3, Algorithm 1): PGD whose step size starts at
  2 eps and is halved per example at the checkpoints w_j = ceil(p_j N) with
  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), when

  1. the loss increased in at most rho (0.75) of the steps since the last
     checkpoint, or
  2. the step was not halved at the last checkpoint and the best loss has not
     improved since then;

  a halving also restarts the iterate from the best point found. Every step
  has momentum 0.75 (none on the first step). Per example the attack returns a
  misclassified point if it met one, else the point of highest loss.
* :func:`dlr_loss` and :func:`dlr_loss_targeted`: the Difference of Logits
  Ratio (Section 4), shift- and scale-invariant in the logits, and its targeted
  version used by APGD-T.
* :func:`apgd_t`: APGD-T, targeted APGD on the DLR loss towards the classes
  ranked 2, 3, ..., num_targets + 1 by the model on the clean input.
* ``norm="l1"`` runs l1-APGD (Croce & Hein, ICML 2021) instead of Algorithm 1:
  sparse steps, the exact projection onto the L1 ball and the box, adaptive
  sparsity and AutoAttack's large-eps schedule (:mod:`robustjax.attacks.apgd_l1`);
  losses, restarts, targets, EOT and the keep-best rule are shared.

Where the paper and the official code (fra31/auto-attack) differ, the choice
is stated: condition 1 counts "at most rho of the steps" as the code does (the
paper writes "fewer than"), and the first step of the first interval is
compared with the loss at the starting point, as in the paper (the code
compares it with a zero-initialised buffer).

Conventions are those of :mod:`robustjax.attacks.first_order`: pure functions of
``(logits_fn, x, y, key)`` plus keyword settings, loops as ``lax.fori_loop`` /
``lax.scan``, all per-example state in the loop carry; settings that change the
program (norm, loss, steps, restarts, targets) are static, ``eps`` may be traced.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.attacks import apgd_l1 as _apgd_l1
from robustjax.attacks import first_order as _a
from robustjax.models import fastpath
from robustjax.attacks import apgd_schedule as _schedule
from robustjax.attacks import geometry as _geometry
from robustjax.attacks.apgd_schedule import checkpoint_schedule, step_size_halvings  # noqa: F401

__all__ = ["APGD_LOSSES", "dlr_loss", "dlr_loss_targeted", "checkpoint_schedule",
           "step_size_halvings", "apgd", "apgd_t"]

Array = jax.Array
APGD_LOSSES = ("ce", "xent", "dlr", "cw")
"""APGD losses: "ce" (cross-entropy; "xent" is the same, the name :func:`pgd` uses), "dlr", "cw"."""

_DLR_EPS = 1e-12


# ----------------------------------------------------------------------------
# DLR losses (Section 4)
# ----------------------------------------------------------------------------

def dlr_loss(logits: Array, labels: Array) -> Array:
    """Untargeted Difference of Logits Ratio, ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``.

    ``z_pi1 >= z_pi2 >= ...`` are the sorted logits. An attack maximises it;
    it is positive iff the example is misclassified. Needs >= 3 classes.
    """
    _check_classes(logits, 3, "dlr_loss")
    srt = jnp.sort(logits, axis=-1)
    return _a.margin(logits, labels) / (srt[:, -1] - srt[:, -3] + _DLR_EPS)


def dlr_loss_targeted(logits: Array, labels: Array, targets: Array) -> Array:
    """Targeted DLR, ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; needs >= 4 classes."""
    _check_classes(logits, 4, "dlr_loss_targeted")
    srt = jnp.sort(logits, axis=-1)
    z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + _DLR_EPS)


def _check_classes(logits, minimum, what):
    if logits.ndim != 2 or logits.shape[-1] < minimum:
        raise ValueError(f"{what} needs logits of shape [B, K] with K >= {minimum} classes, "
                         f"got {logits.shape}")


def _objective(loss: str, targeted: bool, cw_kappa: float):
    """``(logits, labels, targets) -> [B]``, the quantity APGD ascends."""
    if loss in ("ce", "xent"):
        if targeted:
            return lambda lg, y, t: -_a.xent_loss(lg, t)
        return lambda lg, y, t: _a.xent_loss(lg, y)
    if loss == "dlr":
        if targeted:
            return dlr_loss_targeted
        return lambda lg, y, t: dlr_loss(lg, y)
    if targeted:
        return lambda lg, y, t: jnp.minimum(-_a.margin(lg, t), cw_kappa)
    return lambda lg, y, t: _a.cw_loss(lg, y, cw_kappa)


# ----------------------------------------------------------------------------
# APGD (Algorithm 1)
# ----------------------------------------------------------------------------

def _value_and_grad(logits_fn, objective, x, y, t, key, eot_samples):
    """Objective, its input gradient and the logits; averaged over EOT samples if > 1.

    With ``eot_samples > 1`` the model is randomised and called as
    ``logits_fn(x, key)``; loss and gradient are averaged over the samples and
    the logits are the last sample's (as the official code does).
    """
    def single(z, k):
        def total(zz):
            lg = logits_fn(zz) if k is None else logits_fn(zz, k)
            v = objective(lg, y, t)
            return jnp.sum(v), (v, lg)
        (_, (v, lg)), g = jax.value_and_grad(total, has_aux=True)(z)
        return v, g, lg

    if eot_samples == 1:
        return single(x, None)

    def acc(carry, k):
        v, g, _ = single(x, k)
        return (carry[0] + v, carry[1] + g), None

    keys = jax.random.split(key, eot_samples)
    v0, g0, lg = single(x, keys[-1])
    (v, g), _ = jax.lax.scan(acc, (v0, g0), keys[:-1])
    return v / eot_samples, g / eot_samples, lg


def _predict(logits_fn, x, key, eot_samples):
    """Logits of the clean inputs (one sample of a randomised model)."""
    if eot_samples == 1:
        return _checks.checked_logits(logits_fn, x)
    return _checks.checked_logits(lambda z: logits_fn(z, key), x)


class _Carry(NamedTuple):
    x: Array
    x_prev: Array
    grad: Array
    step: Array
    x_best: Array
    loss_best: Array
    grad_best: Array
    x_adv: Array
    fooled: Array
    rule: _schedule.RuleState


def _apgd_single(logits_fn, objective, geometry, x, y, t, key, *, eps, num_steps, rho,
                 lo, hi, eot_samples):
    """One APGD run from a random start; returns (point, fooled [B], best loss [B])."""
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.ndim - 1)
    kinit, kloop = jax.random.split(key)
    if geometry.name == "linf":
        d = jax.random.uniform(kinit, x.shape, jnp.float32, -1.0, 1.0)
        d = d / (_geometry._per_example(jnp.max, jnp.abs(d)) + 1e-12)
    else:
        d = jax.random.normal(kinit, x.shape, jnp.float32)
        d = d / (_geometry._l2_norm(d) + 1e-12)
    x0 = jnp.clip(x + eps * d, lo, hi).astype(x.dtype)

    def project(z):
        return jnp.clip(x + geometry.project(z - x, eps), lo, hi).astype(x.dtype)

    loss0, grad0, lg0 = _value_and_grad(logits_fn, objective, x0, y, t,
                                        jax.random.fold_in(kloop, num_steps), eot_samples)
    fooled0 = jnp.argmax(lg0, -1) != y
    is_ckpt, length = (jnp.asarray(a) for a in _schedule.checkpoint_table(num_steps))
    carry = _Carry(x=x0, x_prev=x0, grad=grad0,
                   step=jnp.broadcast_to(jnp.asarray(2.0 * eps, jnp.float32), (b,)),
                   x_best=x0, loss_best=loss0, grad_best=grad0, x_adv=x0, fooled=fooled0,
                   rule=_schedule.rule_init(loss0))

    def body(i, c: _Carry) -> _Carry:
        momentum = jnp.where(i > 0, 0.75, 1.0)
        z = project(c.x + c.step.reshape(bshape) * geometry.ascent(c.grad))
        x_new = project(c.x + momentum * (z - c.x) + (1.0 - momentum) * (c.x - c.x_prev))
        loss, grad, lg = _value_and_grad(logits_fn, objective, x_new, y, t,
                                         jax.random.fold_in(kloop, i), eot_samples)
        wrong = jnp.argmax(lg, -1) != y
        better = loss > c.loss_best
        loss_best = jnp.where(better, loss, c.loss_best)
        x_best = jnp.where(better.reshape(bshape), x_new, c.x_best)
        grad_best = jnp.where(better.reshape(bshape), grad, c.grad_best)
        rule, halve = _schedule.rule_step(c.rule, loss, loss_best, is_ckpt[i], length[i], rho)
        hb = halve.reshape(bshape)
        return _Carry(x=jnp.where(hb, x_best, x_new), x_prev=c.x,
                      grad=jnp.where(hb, grad_best, grad),
                      step=jnp.where(halve, 0.5 * c.step, c.step),
                      x_best=x_best, loss_best=loss_best, grad_best=grad_best,
                      x_adv=jnp.where(wrong.reshape(bshape), x_new, c.x_adv),
                      fooled=c.fooled | wrong, rule=rule)

    c = jax.lax.fori_loop(0, num_steps, body, carry)
    out = jnp.where(c.fooled.reshape(bshape), c.x_adv, c.x_best)
    return out, c.fooled, c.loss_best


def _keep_best(carry, run):
    """Per example: the first fooling run wins, else the run of highest loss."""
    x_out, fooled, best = carry
    xr, fr, lr = run
    bshape = (x_out.shape[0],) + (1,) * (x_out.ndim - 1)
    take = (~fooled & fr) | (~fooled & ~fr & (lr > best))
    return (jnp.where(take.reshape(bshape), xr, x_out), fooled | fr,
            jnp.where(take, lr, best))


def _check_common(x, y, eps, num_steps, restarts, rho, eot_samples, norm, bounds,
                  use_largereps=False):
    _checks.check_xy(x, y, targeted=False)
    _checks.check_scalar("eps", eps)
    _checks.check_int("num_steps", num_steps, 1)
    _checks.check_int("restarts", restarts, 1)
    _checks.check_int("eot_samples", eot_samples, 1)
    _checks.check_scalar("rho", rho)
    if _checks.is_concrete(rho) and not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    if use_largereps:
        if norm != "l1":
            raise ValueError(f"use_largereps is l1-APGD's schedule (norm='l1'), got "
                             f"norm={norm!r}")
        _apgd_l1.largereps_schedule(num_steps)
    return _checks.check_bounds(bounds)


def _run_apgd(logits_fn, x, y, key, *, eps, norm, loss, num_steps, restarts, rho,
              eot_samples, cw_kappa, bounds, targeted, target_ranks, use_largereps=False):
    """Runs over the target ranks (or once, untargeted) x restarts; returns (x, fooled, loss)."""
    lo, hi = bounds
    logits_fn = fastpath.auto(logits_fn)
    objective = _objective(loss, targeted, cw_kappa)
    geometry = _a.NORMS[norm]
    kclean, kruns = jax.random.split(key)
    clean = _predict(logits_fn, x, kclean, eot_samples)
    num_classes = clean.shape[-1]
    if loss == "dlr":
        _check_classes(clean, 4 if targeted else 3, "the DLR loss" + (
            " (targeted)" if targeted else ""))
    ranks = jnp.asarray(target_ranks if targeted else [0], jnp.int32)
    if targeted and _checks.is_concrete(ranks) and int(ranks.max()) > num_classes:
        raise ValueError(f"target rank {int(ranks.max())} exceeds the {num_classes} classes")
    order = jnp.argsort(clean, axis=-1)  # ascending: the class of rank r is order[:, K - r]

    def run(rank, k):
        t = jnp.take(order, num_classes - rank, axis=1) if targeted else y
        if norm == "l1":
            kinit, kloop = jax.random.split(k)

            def value_and_grad(z, i):
                return _value_and_grad(logits_fn, objective, z, y, t,
                                       jax.random.fold_in(kloop, i), eot_samples)
            return _apgd_l1.apgd_l1_run(value_and_grad, x, y, kinit, eps=eps,
                                        num_steps=num_steps, lo=lo, hi=hi,
                                        use_largereps=use_largereps)
        return _apgd_single(logits_fn, objective, geometry, x, y, t, k, eps=eps,
                            num_steps=num_steps, rho=rho, lo=lo, hi=hi,
                            eot_samples=eot_samples)

    def over_runs(carry, inp):
        rank, k = inp
        return _keep_best(carry, run(rank, k)), None

    n = len(ranks) * restarts
    grid_ranks = jnp.repeat(ranks, restarts)
    # Run i (target-major, then restart) uses fold_in(key, i) whatever the number of
    # runs, so a longer schedule repeats a shorter one's runs first.
    keys = jax.vmap(lambda i: jax.random.fold_in(kruns, i))(jnp.arange(n))
    init = (x, jnp.zeros(x.shape[0], bool), jnp.full(x.shape[0], -jnp.inf, jnp.float32))
    if n == 1:
        return _keep_best(init, run(grid_ranks[0], keys[0]))
    out, _ = jax.lax.scan(over_runs, init, (grid_ranks, keys))
    return out


def apgd(logits_fn: Callable, x: Array, y: Array, key: Array, *, eps, norm: str = "linf",
         loss: str = "ce", num_steps: int = 100, restarts: int = 1, targeted: bool = False,
         target_rank: int = 2, rho: float = 0.75, eot_samples: int = 1,
         cw_kappa: float = 0.0, bounds: tuple[float, float] = (0.0, 1.0),
         use_largereps: bool = False) -> Array:
    """Auto-PGD (Croce & Hein 2020, Section 3, Algorithm 1); AutoAttack's APGD-CE with the defaults.

    Args:
      logits_fn: ``x -> logits [B, K]``. With ``eot_samples > 1``, a randomised
        model called as ``logits_fn(x, key)``.
      x: clean inputs ``[B, ...]`` in ``bounds``.
      y: the true labels ``[B]``, also when ``targeted`` (unlike :func:`robustjax.attacks.first_order.pgd`).
      key: PRNG key (random start, restarts, EOT samples).
      eps: radius of the ``norm`` ball (>= 0; may be traced).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (l1-APGD of Croce & Hein 2021, see
        :mod:`robustjax.attacks.apgd_l1`: sparse steps, the exact projection onto the L1
        ball and the box, an adaptive sparsity; ``rho`` does not apply).
      loss: ``"ce"`` (cross-entropy, alias ``"xent"``), ``"dlr"`` (:func:`dlr_loss`;
        targeted: :func:`dlr_loss_targeted`) or ``"cw"`` (the CW margin with ``cw_kappa``).
      num_steps: iterations N (the paper: 100).
      restarts: random restarts, run one after another (``lax.scan``); per
        example the first that fools the model is kept, else the highest loss.
      targeted: attack towards the class that the model ranks ``target_rank``
        on the clean input (2: the runner-up). Success is still any misclassification.
      rho: the oscillation threshold of condition 1 (the paper: 0.75).
      eot_samples: Expectation over Transformation samples per gradient
        (AutoAttack's "rand" version: 20).
      bounds: valid input range.
      use_largereps: (``norm="l1"`` only) AutoAttack's L1 schedule: the first
        30% of the steps at radius 3 eps, the next 30% at 2 eps, the rest at eps.

    Returns:
      Adversarial inputs with the shape and dtype of ``x``: per example a
      misclassified point if one was met, else the point of highest loss.
    """
    bounds = _check_common(x, y, eps, num_steps, restarts, rho, eot_samples, norm, bounds,
                           use_largereps)
    _checks.check_choice("loss", loss, APGD_LOSSES)
    _checks.check_scalar("cw_kappa", cw_kappa)
    if targeted and _checks.is_concrete(target_rank):
        _checks.check_int("target_rank", target_rank, 2)
    return _run_apgd(logits_fn, x, y, key, eps=eps, norm=norm, loss=loss, num_steps=num_steps,
                     restarts=restarts, rho=rho, eot_samples=eot_samples, cw_kappa=cw_kappa,
                     bounds=bounds, targeted=targeted, target_ranks=[target_rank],
                     use_largereps=use_largereps)[0]


def apgd_t(logits_fn: Callable, x: Array, y: Array, key: Array, *, eps, norm: str = "linf",
           num_targets: int = 9, num_steps: int = 100, restarts: int = 1,
           loss: str = "dlr", rho: float = 0.75, eot_samples: int = 1,
           bounds: tuple[float, float] = (0.0, 1.0), use_largereps: bool = False) -> Array:
    """APGD-T (AutoAttack, Section 5): targeted APGD towards each of the top ``num_targets`` wrong classes.

    Runs :func:`apgd` with ``targeted=True`` for target ranks 2 ... num_targets + 1
    (one after another in a ``lax.scan``) and keeps per example the first run
    that fools the model, else the run of highest loss. ``y`` are the true
    labels. AutoAttack's standard version uses 9 targets, 100 steps, 1 restart
    (for L1: 5 targets with ``use_largereps``).
    """
    bounds = _check_common(x, y, eps, num_steps, restarts, rho, eot_samples, norm, bounds,
                           use_largereps)
    _checks.check_int("num_targets", num_targets, 1)
    _checks.check_choice("loss", loss, APGD_LOSSES)
    return _run_apgd(logits_fn, x, y, key, eps=eps, norm=norm, loss=loss, num_steps=num_steps,
                     restarts=restarts, rho=rho, eot_samples=eot_samples, cw_kappa=0.0,
                     bounds=bounds, targeted=True,
                     target_ranks=list(range(2, num_targets + 2)),
                     use_largereps=use_largereps)[0]
