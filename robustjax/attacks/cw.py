"""Carlini & Wagner's L2 attack with its binary search over the constant: "Towards
Evaluating the Robustness of Neural Networks" (IEEE S&P 2017), Section V.A.

The attack minimises, over ``w`` (the change of variables ``x' = a + b tanh(w)`` keeps
``x'`` in the box ``[a - b, a + b]``),

    ||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0)

(targeted: ``max(max_{j != t} z_j - z_t + kappa, 0)``) with Adam (learning rate 0.01)
for ``steps`` steps from ``w = arctanh(x)``, keeping the adversarial point of smallest
L2 distance. The constant ``c`` is searched per example over ``binary_search_steps``
runs: from ``initial_const``, times 10 until a run succeeds, then bisected between the
largest failing and the smallest succeeding ``c``. With ``abort_early``, a run stops
once its loss has not fallen by 0.01% over a tenth of the steps (the authors' check,
made per example). With 10 or more search steps, the last run uses the smallest
succeeding ``c``, as foolbox does.

Defaults are the authors' (and foolbox 3.3.4's ``L2CarliniWagnerAttack``): 9 search
steps, 10,000 steps, learning rate 0.01, ``initial_const`` 0.001, ``kappa`` 0, early
abort. Each step costs one forward and one backward pass; the passes an example spent
(its steps before it stopped, over every run) are reported. In a batch the loop runs
until every example of it has stopped; the ones that stopped earlier do not move.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from robustjax import _checks
from robustjax.attacks import min_norm as _mn
from robustjax.models import fastpath

__all__ = ["cw_l2"]

Array = jax.Array
_TANH_SHRINK = 0.999999  # keeps arctanh finite at the box's edges (the authors' constant)


def _check(steps, binary_search_steps, learning_rate, initial_const, kappa):
    _checks.check_int("binary_search_steps", binary_search_steps, 1)
    _checks.check_scalar("learning_rate", learning_rate, positive=True)
    _checks.check_scalar("initial_const", initial_const, positive=True)
    _checks.check_scalar("kappa", kappa)


def _run(objective, w0, best, steps: int, abort_early: bool, learning_rate):
    """One Adam run over ``w`` for a fixed constant (a ``lax.while_loop``): the updated
    ``best``, ``found`` (an adversarial point seen in this run) and the passes, per example.

    ``objective(w, best, found) -> (grad, loss, best, found)``.
    """
    opt = optax.adam(learning_rate)
    check_every = max(1, math.ceil(steps / 10))

    def cond(carry):
        step, *_, active = carry
        return (step < steps) & jnp.any(active)

    def body(carry):
        step, w, state, best, found, prev, passes, active = carry
        grad, loss, best_new, found_new = objective(w, best, found)

        def keep(new, old):  # an example that stopped keeps its state
            return jax.tree_util.tree_map(
                lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
                if n.ndim and n.shape[0] == active.shape[0] else n, new, old)
        best, found = keep((best_new, found_new), (best, found))
        updates, state_new = opt.update(grad, state, w)
        w, state = keep((optax.apply_updates(w, updates), state_new), (w, state))
        passes = passes + active.astype(jnp.int32)
        if abort_early:
            check = step % check_every == 0
            stalled = check & ~(loss <= 0.9999 * prev)
            prev = jnp.where(check, loss, prev)
            active = active & ~stalled
        return step + 1, w, state, best, found, prev, passes, active

    bsz = w0.shape[0]
    init = (0, w0, opt.init(w0), best, jnp.zeros((bsz,), bool), jnp.full((bsz,), jnp.inf),
            jnp.zeros((bsz,), jnp.int32), jnp.ones((bsz,), bool))
    _, _, _, best, found, _, passes, _ = jax.lax.while_loop(cond, body, init)
    return best, found, passes


def cw_l2(logits_fn, x: Array, y: Array, key: Optional[Array] = None, *, steps: int = 10000,
          binary_search_steps: int = 9, targeted: bool = False, learning_rate: float = 0.01,
          initial_const: float = 0.001, kappa: float = 0.0, abort_early: bool = True,
          bounds: tuple[float, float] = (0.0, 1.0)) -> _mn.MinNormResult:
    """Carlini & Wagner's L2 attack with its binary search (IEEE S&P 2017, Section V.A).

    Args:
      logits_fn: ``x -> logits [B, K]``.
      x, y: inputs in ``bounds`` and their labels (targets when ``targeted``).
      key: unused (the attack is deterministic); accepted so every attack takes
        ``(x, y, key)``.
      steps: Adam steps per value of the constant.
      binary_search_steps: values of the constant tried per example.
      targeted: find points classified as ``y``.
      learning_rate: Adam's.
      initial_const: the first constant ``c``.
      kappa: the confidence: a point counts as adversarial once the margin passes it.
      abort_early: stop a run whose loss stalls (module docstring).
      bounds: the box of valid inputs.

    Returns:
      A :class:`robustjax.attacks.min_norm.MinNormResult` (``norms`` in L2).
    """
    lo, hi = _mn.check_common(x, y, norm="l2", steps=steps, bounds=bounds, targeted=targeted)
    _check(steps, binary_search_steps, learning_rate, initial_const, kappa)
    logits_fn = fastpath.auto(logits_fn)
    mid, half = (hi + lo) / 2.0, (hi - lo) / 2.0
    w_x = jnp.arctanh((x.astype(jnp.float32) - mid) / half * _TANH_SHRINK)
    x_rec = mid + half * jnp.tanh(w_x)
    bsz = x.shape[0]
    shift = -kappa if targeted else kappa  # the adversarial test with confidence

    def to_x(w):
        return (mid + half * jnp.tanh(w)).astype(x.dtype)

    def make_objective(const):
        def total(w):
            x_new = to_x(w)
            logits = _checks.checked_logits(logits_fn, x_new)
            hinge = jnp.maximum(_mn.logit_difference(logits, y, targeted=targeted) + kappa, 0.0)
            dist = jnp.sum(jnp.square((x_new - x_rec).reshape(bsz, -1)), axis=1)
            loss = const * hinge + dist
            return jnp.sum(loss), (loss, x_new, logits)

        def objective(w, best, found):
            grad, (loss, x_new, logits) = jax.grad(total, has_aux=True)(w)
            adjusted = logits + shift * jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
            pred = jnp.argmax(adjusted, axis=1)
            is_adv = pred == y if targeted else pred != y
            best = _mn.record_best(best, x_new, x, adjusted, y, "l2", targeted=targeted)
            return grad, loss, best, found | is_adv
        return objective

    def search(i, carry):
        best, const, lower, upper, passes = carry
        if binary_search_steps >= 10:
            const = jnp.where(i == binary_search_steps - 1, jnp.minimum(upper, 1e10), const)
        best, found, run_passes = _run(make_objective(const), w_x, best, steps, abort_early,
                                       learning_rate)
        upper = jnp.where(found, const, upper)
        lower = jnp.where(found, lower, const)
        const = jnp.where(jnp.isinf(upper), const * 10.0, (lower + upper) / 2.0)
        return best, const, lower, upper, passes + run_passes

    best0 = (x, jnp.full((bsz,), jnp.inf, jnp.float32), jnp.zeros((bsz,), bool))
    init = (best0, jnp.full((bsz,), initial_const, jnp.float32), jnp.zeros((bsz,), jnp.float32),
            jnp.full((bsz,), jnp.inf, jnp.float32), jnp.zeros((bsz,), jnp.int32))
    best, _, _, _, passes = jax.lax.fori_loop(0, binary_search_steps, search, init)
    return _mn.finish(x, best, "l2", (passes, passes))
