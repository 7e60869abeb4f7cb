"""l1-APGD: Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on
image classifiers" (ICML 2021), as the official code (fra31/auto-attack,
``APGDAttack`` with ``norm='L1'``) runs it.

One run differs from L-inf/L2 APGD (:mod:`robustjax.attacks.apgd`) in four ways:

* the step is **sparse**: the signs of the gradient's largest coordinates, a
  fraction ``k`` of them, scaled to unit L1 norm (:func:`robustjax.attacks.l1.sparse_ascent`),
  then the exact projection onto the L1 ball intersected with the box
  (:func:`robustjax.attacks.l1.project_l1_box`, Section 3 of the paper); no momentum;
* the start is a Gaussian point projected onto the ball and the box; the
  sparsity starts at k = 20% of the coordinates (from a given start, such as
  the phases of ``use_largereps``: at its number of nonzero coordinates / 1.5);
* every ``max(floor(0.04 N), 1)`` steps (a checkpoint), the sparsity adapts to
  the best point so far: with ``s`` its number of nonzero coordinates, k
  becomes ``s / (1.5 D)``; if ``s`` shrank by more than 5% since the last
  checkpoint, the step size is reset to eps and the iterate restarts from the
  best point, else the step size is divided by 1.5 (never below eps / 10);
* ``use_largereps`` (AutoAttack's L1 setting): the first 30% of the steps at
  radius 3 eps, the next 30% at 2 eps, the last 40% at eps, each phase starting
  from the previous phase's best point projected onto the smaller ball. Only
  the last phase (radius eps) decides whether an example is broken.

The run is one ``lax.fori_loop`` with all per-example state in the carry; the
three phases of ``use_largereps`` are a ``lax.scan`` over that loop (one compiled
body: the phase's radius and length are traced).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import l1 as _l1

__all__ = ["largereps_schedule", "apgd_l1_run"]

Array = jax.Array
_START_FRACTION = 0.2
_SPARSITY_DIVISOR = 1.5
_STEP_DIVISOR = 1.5
_MIN_STEP_FRACTION = 0.1


def largereps_schedule(num_steps: int) -> tuple[tuple[float, int], ...]:
    """``((radius multiple, steps), ...)``: 3 eps for ceil(0.3 N) steps, 2 eps for
    ceil(0.3 N), eps for the rest (the official code's ``use_largereps``)."""
    first = math.ceil(0.3 * num_steps)
    last = num_steps - 2 * first
    if last < 1:
        raise ValueError(f"use_largereps splits num_steps into three phases of at least one "
                         f"step (ceil(0.3 N), ceil(0.3 N), the rest): num_steps must be 3 or "
                         f">= 5, got {num_steps}")
    return ((3.0, first), (2.0, first), (1.0, last))


class _Carry(NamedTuple):
    x: Array
    grad: Array
    step: Array
    fraction: Array
    sparsity_old: Array
    x_best: Array
    loss_best: Array
    grad_best: Array
    x_adv: Array
    fooled: Array


def _phase(value_and_grad: Callable, x, y, x_start, *, eps, num_steps, every, lo, hi,
           fraction, sparsity_old, step_offset):
    """One l1-APGD run of ``num_steps`` steps from ``x_start`` (in the eps-ball and box).

    ``eps``, ``num_steps``, ``every`` (steps between checkpoints) and
    ``step_offset`` may be traced, so the phases of ``use_largereps`` share one
    compiled loop.
    """
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.ndim - 1)
    dim = math.prod(x.shape[1:])
    loss0, grad0, lg0 = value_and_grad(x_start, step_offset)
    eps_b = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (b,))
    carry = _Carry(x=x_start, grad=grad0, step=eps_b, fraction=fraction,
                   sparsity_old=sparsity_old, x_best=x_start, loss_best=loss0, grad_best=grad0,
                   x_adv=x_start, fooled=jnp.argmax(lg0, -1) != y)

    def body(i, c: _Carry) -> _Carry:
        z = c.x + c.step.reshape(bshape) * _l1.sparse_ascent(c.grad, c.fraction)
        x_new = _l1.project_l1_box(x, z, eps, lo, hi)
        loss, grad, lg = value_and_grad(x_new, step_offset + i + 1)
        wrong = jnp.argmax(lg, -1) != y
        better = loss > c.loss_best
        bb = better.reshape(bshape)
        x_best = jnp.where(bb, x_new, c.x_best)
        grad_best = jnp.where(bb, grad, c.grad_best)
        loss_best = jnp.where(better, loss, c.loss_best)
        check = (i + 1) % every == 0
        sparsity = _l1.l0_count(x_best - x)
        reset = check & (sparsity / c.sparsity_old < 0.95)
        step = jnp.where(reset, eps_b, c.step / _STEP_DIVISOR)
        step = jnp.where(check, jnp.clip(step, _MIN_STEP_FRACTION * eps_b, eps_b), c.step)
        rb = reset.reshape(bshape)
        return _Carry(x=jnp.where(rb, x_best, x_new), grad=jnp.where(rb, grad_best, grad),
                      step=step,
                      fraction=jnp.where(check, sparsity / dim / _SPARSITY_DIVISOR, c.fraction),
                      sparsity_old=jnp.where(check, sparsity, c.sparsity_old),
                      x_best=x_best, loss_best=loss_best, grad_best=grad_best,
                      x_adv=jnp.where(wrong.reshape(bshape), x_new, c.x_adv),
                      fooled=c.fooled | wrong)

    return jax.lax.fori_loop(0, num_steps, body, carry)


def apgd_l1_run(value_and_grad: Callable, x: Array, y: Array, key: Array, *, eps,
                num_steps: int, lo: float, hi: float, use_largereps: bool):
    """One l1-APGD run: ``(point, fooled [B], best loss [B])``, as :mod:`robustjax.attacks.apgd` returns.

    ``value_and_grad(z, i) -> (loss [B], grad, logits)`` evaluates the
    objective at ``z`` (``i`` numbers the evaluation, for EOT keys). ``y`` is
    the true label (success is ``argmax != y``). The point is, per example, a
    misclassified point met in the final phase if any, else the best point.
    """
    b = x.shape[0]
    dim = math.prod(x.shape[1:])
    bshape = (b,) + (1,) * (x.ndim - 1)
    noise = jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype)
    if not use_largereps:
        x_start = _l1.project_l1_box(x, x + noise, eps, lo, hi)
        c = _phase(value_and_grad, x, y, x_start, eps=eps, num_steps=num_steps,
                   every=max(int(0.04 * num_steps), 1), lo=lo, hi=hi,
                   fraction=jnp.full((b,), _START_FRACTION, jnp.float32),
                   sparsity_old=jnp.full((b,), float(dim), jnp.float32), step_offset=0)
    else:
        # Every phase starts from a given point (the official code's x_init): the random
        # start on the 3 eps ball, then the previous phase's best point projected onto the
        # smaller ball; the sparsity starts from that point's. The three phases are one
        # lax.scan, so the loop compiles once.
        phases = largereps_schedule(num_steps)
        mult = jnp.asarray([m for m, _ in phases], jnp.float32)
        steps = jnp.asarray([n for _, n in phases], jnp.int32)
        every = jnp.asarray([max(int(0.04 * n), 1) for _, n in phases], jnp.int32)
        offsets = jnp.asarray(np.cumsum([0] + [n + 1 for _, n in phases[:-1]]), jnp.int32)

        def phase(carry, inp):
            m, n, e, off = inp
            radius = m * eps
            x_start = _l1.project_l1_box(x, carry[0], radius, lo, hi)
            sparsity = _l1.l0_count(x_start - x)
            c = _phase(value_and_grad, x, y, x_start, eps=radius, num_steps=n, every=e,
                       lo=lo, hi=hi, fraction=sparsity / dim / _SPARSITY_DIVISOR,
                       sparsity_old=sparsity, step_offset=off)
            return (c.x_best, c.x_adv, c.fooled, c.loss_best), None

        init = (x + noise, x, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32))
        (best, adv, fooled, loss), _ = jax.lax.scan(phase, init, (mult, steps, every, offsets))
        return jnp.where(fooled.reshape(bshape), adv, best), fooled, loss
    return jnp.where(c.fooled.reshape(bshape), c.x_adv, c.x_best), c.fooled, c.loss_best
