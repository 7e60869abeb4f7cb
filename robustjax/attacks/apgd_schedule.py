"""APGD's step-size rule: Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks" (ICML 2020), Section 3.2.

The step size starts at 2 eps and is halved at checkpoints w_j (Eq. 4) when too few of
the last steps raised the loss (condition 1) or when neither step size nor best loss
changed since the last checkpoint (condition 2). :func:`checkpoint_schedule` gives the
checkpoints, :func:`rule_step` is the rule inside the attack's ``lax.fori_loop``, and
:func:`step_size_halvings` replays it on a recorded loss sequence (for tests and plots).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks

__all__ = ["checkpoint_schedule", "checkpoint_table", "RuleState", "rule_init", "rule_step",
           "step_size_halvings"]

Array = jax.Array


def checkpoint_schedule(num_steps: int) -> tuple[int, ...]:
    """The checkpoints w_j = ceil(p_j * N) after which the step-size rule is checked.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06). In
    steps, as the official code rounds them: the first interval is
    max(floor(0.22 N), 1), each next one shrinks by max(floor(0.03 N), 1) down to
    max(floor(0.06 N), 1). For N = 100: (22, 41, 57, 70, 80, 87, 93, 99).
    """
    _checks.check_int("num_steps", num_steps, 1)
    first = max(int(0.22 * num_steps), 1)
    shrink = max(int(0.03 * num_steps), 1)
    smallest = max(int(0.06 * num_steps), 1)
    out, w, k = [], 0, first
    while w + k <= num_steps:
        w += k
        out.append(w)
        k = max(k - shrink, smallest)
    return tuple(out)


def checkpoint_table(num_steps: int):
    """Per step i (0-based): whether step i ends an interval, and that interval's length."""
    is_ckpt = np.zeros(num_steps, bool)
    length = np.ones(num_steps, np.int32)
    prev = 0
    for w in checkpoint_schedule(num_steps):
        is_ckpt[w - 1] = True
        length[w - 1] = w - prev
        prev = w
    return is_ckpt, length


class RuleState(NamedTuple):
    """Per-example bookkeeping of the step-size rule between checkpoints."""

    increases: Array       # steps since the last checkpoint whose loss went up
    loss_prev: Array       # loss of the previous iterate
    best_at_check: Array   # best loss at the last checkpoint
    halved_at_check: Array  # whether the step was halved at the last checkpoint


def rule_init(loss0: Array) -> RuleState:
    """The rule's state before the first step, from the starting losses ``[B]``."""
    b = loss0.shape[0]
    # At the first checkpoint condition 2 does not apply (as if halved before).
    return RuleState(jnp.zeros(b, jnp.int32), loss0, loss0, jnp.ones(b, bool))


def rule_step(state: RuleState, loss: Array, best: Array, is_ckpt, length, rho):
    """One step of the rule: the loss of the new iterate and the best loss so far.

    Returns the new state and a ``[B]`` mask of the examples whose step is
    halved now (all False off the checkpoints).
    """
    increases = state.increases + (loss > state.loss_prev).astype(jnp.int32)
    oscillates = increases.astype(jnp.float32) <= rho * length.astype(jnp.float32)
    stalled = ~state.halved_at_check & (state.best_at_check >= best)
    halve = is_ckpt & (oscillates | stalled)
    new = RuleState(
        increases=jnp.where(is_ckpt, 0, increases),
        loss_prev=loss,
        best_at_check=jnp.where(is_ckpt, best, state.best_at_check),
        halved_at_check=jnp.where(is_ckpt, halve, state.halved_at_check))
    return new, halve


def step_size_halvings(losses, *, rho: float = 0.75) -> np.ndarray:
    """The rule alone on a given loss sequence: which examples halve at which checkpoint.

    ``losses`` is ``[N + 1, B]``: the loss at the start, then after each of the
    N steps. Returns bool ``[len(checkpoint_schedule(N)), B]``. This is exactly
    the bookkeeping :func:`apgd` runs (the restart from the best point does not
    change the best loss, so the rule depends on the losses alone).
    """
    losses = jnp.asarray(losses, jnp.float32)
    if losses.ndim != 2 or losses.shape[0] < 2:
        raise ValueError(f"losses must have shape [N + 1, B] with N >= 1, got {losses.shape}")
    n = losses.shape[0] - 1
    is_ckpt, length = checkpoint_table(n)

    def body(carry, inp):
        state, best = carry
        loss, ck, ln = inp
        best = jnp.maximum(best, loss)
        state, halve = rule_step(state, loss, best, ck, ln, rho)
        return (state, best), halve

    _, halves = jax.lax.scan(body, (rule_init(losses[0]), losses[0]),
                             (losses[1:], jnp.asarray(is_ckpt), jnp.asarray(length)))
    return np.asarray(halves)[is_ckpt]
