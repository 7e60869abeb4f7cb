"""Numeric probes of a model's gradients: what the static scan cannot see.

The official AutoAttack (Croce & Hein, ICML 2020; ``autoattack/checks.py``) probes a
model for probability outputs, randomness and zero gradients. Athalye, Carlini &
Wagner (ICML 2018, Section 3) and Tramer et al. (NeurIPS 2020, Section 4) add what a
broken gradient looks like numerically: gradients that are NaN, zero or exploding, and
gradients that do not point up the loss (a step along the gradient raises the loss no
more than a random step of the same size). :func:`probe` measures all of these on a
batch; :func:`check_rules` tests each custom derivative rule that the static scan
(:mod:`robustjax.evaluation.program`) found against the gradient of its own forward pass.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import first_order as _a
from robustjax.runtime import jaxprs

__all__ = ["probe", "check_rules", "EXPLODING_NORM"]

EXPLODING_NORM = 1e6
"""An input gradient of the loss larger than this (L2) counts as exploding."""


def probe(logits_fn: Callable, x, y, key: jax.Array, *, randomized: bool = False,
          step: float = 0.01, directions: int = 4, bounds=(0.0, 1.0)) -> dict:
    """The numeric probes on ``(x, y)``; a dict of plain numbers (see the module).

    ``randomized``: ``logits_fn`` is ``(x, key) -> logits`` (each call gets a new key).
    ``step``: the L-inf size of the gradient and random steps. Keys: ``examples``,
    ``zero_gradient`` (fraction whose cross-entropy gradient is exactly zero, the official
    ``check_zero_gradients``), ``nan_gradient``, ``exploding_gradient`` (norm >
    :data:`EXPLODING_NORM`), ``gradient_norm_median``, ``output_spread`` (for a randomised
    model: the largest change of the L2-normalised logits between two draws on the same
    input, the official ``check_randomized``'s measure; 0 otherwise, where
    :func:`robustjax.evaluation.ensemble.output_checks` calls the model twice),
    ``gain_gradient_median`` and ``gain_random_median`` (the margin loss's rise after a
    step along the cross-entropy gradient's sign, and along random signs),
    ``gradient_not_better`` (fraction whose gradient step rises the margin no more than
    the best of ``directions`` random steps), ``randomized`` and ``step``.
    """
    lo, hi = bounds
    model = ((lambda z, k: logits_fn(z, k)) if randomized else (lambda z, k: logits_fn(z)))
    # The random directions are drawn on the host: threefry in the compiled program would
    # cost more compilation time (seconds on the CPU) than the whole probe otherwise.
    seed = np.asarray(jax.random.key_data(key)).ravel()
    shape = (directions,) + np.shape(x)
    signs = np.random.default_rng(seed).choice(np.float32([-1.0, 1.0]), shape)
    r = _probe_arrays(model, jnp.asarray(x, jnp.float32), jnp.asarray(y),
                      jax.random.split(key, 2), signs, step=step,
                      lo=lo, hi=hi, randomized=randomized)
    r = jax.tree_util.tree_map(np.asarray, r)
    finite, zero, norm = r["finite"], r["zero"], r["norm"]
    return dict(
        examples=int(x.shape[0]),
        zero_gradient=float(np.mean(zero & finite)),
        zero_gradient_count=int(np.sum(zero & finite)),
        nan_gradient=float(np.mean(~finite)),
        exploding_gradient=float(np.mean(finite & (norm > EXPLODING_NORM))),
        gradient_norm_median=float(np.median(norm[finite])) if finite.any() else float("nan"),
        output_spread=float(r["spread"]),
        gain_gradient_median=float(np.median(r["gain_grad"])),
        gain_random_median=float(np.median(r["gain_rand"])),
        gradient_not_better=float(np.mean(r["gain_grad"] <= r["gain_rand"].max(axis=0))),
        randomized=bool(randomized), step=float(step))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("randomized",))
def _probe_arrays(model, x, y, key, signs, *, step, lo, hi, randomized):
    """Every array the probes need, in one compiled call: one gradient and one forward
    pass over the clean, gradient-step and random-step inputs stacked, all with the same
    draw of a randomised model (plus a second draw on the clean inputs)."""
    kf, ks = key[0], key[1]
    grad = jax.grad(lambda z: jnp.sum(_a.xent_loss(model(z, kf), y)))(x)
    flat = grad.reshape(grad.shape[0], -1)
    finite = jnp.all(jnp.isfinite(flat), axis=1)
    norm = jnp.sqrt(jnp.sum(jnp.where(jnp.isfinite(flat), flat, 0.0) ** 2, axis=1))
    steps = jnp.concatenate([jnp.zeros((1,) + x.shape), jnp.sign(grad)[None], signs])
    stacked = jnp.clip(x[None] + step * steps, lo, hi)
    # One draw for every copy (common random numbers): a randomised model's steps are
    # compared under the same randomness, so the comparison measures the gradient.
    logits = jax.vmap(lambda z: model(z, kf))(stacked)
    gains = jax.vmap(lambda lg: _a.margin(lg, y) - _a.margin(logits[0], y))(logits[1:])
    if randomized:  # a second draw on the clean inputs
        a, b = logits[0], model(x, ks)
        na = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-10)
        nb = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-10)
        spread = jnp.max(jnp.linalg.norm(na - nb, axis=-1))
    else:  # a deterministic function of its input: spread is what ensemble's check calls
        spread = jnp.zeros(())
    return dict(finite=finite, zero=jnp.all(flat == 0, axis=1), norm=norm, gain_grad=gains[0],
                gain_rand=gains[1:], spread=spread)


def check_rules(closed, custom_rules: dict, x, y, *, rest=(), min_cosine: float = 0.99
                ) -> dict:
    """``{source: cosine}`` for each custom rule of ``custom_rules`` (from the static scan):
    the median cosine between the input gradient of the cross-entropy with the rules
    as defined and with that source's rules replaced by their own forward pass's
    gradient (its body inlined). A rule whose cosine is below ``min_cosine`` changes
    the gradient; gradients that are zero both ways count as cosine 1, zero one way as 0.

    ``closed`` is the traced program (``x`` first, then ``rest``) the scan read.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    out = {}

    def run(rule):
        def f(z):
            return jaxprs.evaluate(closed.jaxpr, closed.consts, [z, *rest], rule)[0]
        return jax.jit(jax.grad(lambda z: jnp.sum(_a.xent_loss(f(z), y))))(x)

    reference = run(None)
    for src, eqns in custom_rules.items():
        ids = {id(e) for e in eqns}
        inlined = run(_inline(ids))
        out[src] = _median_cosine(reference, inlined)
    return out


def _inline(ids: set) -> Callable:
    """A rule for :func:`robustjax.runtime.jaxprs.evaluate`: the custom calls in ``ids`` by
    their bodies (the primal), plain calls opened so that nested ones are found."""
    def rule(eqn, invals):
        k = jaxprs.kind(eqn)
        if k is None or (k == "custom" and id(eqn) not in ids):
            return None
        inner = jaxprs.body(eqn)
        return None if inner is None else jaxprs.evaluate(inner[0], inner[1], invals, rule)
    return rule


def _median_cosine(a, b) -> float:
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    na, nb = jnp.linalg.norm(a, axis=1), jnp.linalg.norm(b, axis=1)
    cos = jnp.sum(a * b, axis=1) / jnp.maximum(na * nb, 1e-30)
    cos = jnp.where((na == 0) & (nb == 0), 1.0, jnp.where((na == 0) | (nb == 0), 0.0, cos))
    return float(jnp.median(cos))
