"""Adaptive-attack wrappers that compose with every attack: BPDA and EOT.

* :func:`bpda`: the Backward Pass Differentiable Approximation of Athalye, Carlini &
  Wagner, "Obfuscated Gradients Give a False Sense of Security" (ICML 2018,
  Section 4.1): the forward pass as given, the backward pass of a differentiable
  stand-in (identity by default: the "straight-through" estimator), through
  ``jax.custom_vjp``.
* :func:`straight_through`: BPDA over every ``round``, ``floor``, ``ceil``, ``sign``
  and ``stop_gradient`` inside a model's program, found by reading its jaxpr: the
  adaptive attack the static inspection (:func:`robustjax.inspect`) calls for when it
  finds shattered gradients, without editing the model's code.
* :func:`eot`: Expectation over Transformation (Athalye et al. 2018, Section 4.3;
  Athalye, Engstrom, Ilyas & Kwok, ICML 2018): a randomised model ``(x, key) ->
  logits`` turned into ``x -> mean of the logits over samples draws``, whose input
  gradient is the mean of the draws' gradients.

Both return ordinary ``logits_fn(x)`` functions, so every attack of robustjax (and any
attack written for a ``logits_fn``) runs through them unchanged: ``pgd(bpda(model),
...)``, ``square(eot(model, 20, key=k), ...)``.

EOT's randomness: the draw of sample ``s`` for example row ``x_j`` is keyed by
``fold_in(fold_in(key, h(x_j)), s)``, where ``h`` hashes the row's bits. So the
wrapped function stays pure (the same input gives the same output, under ``jit``,
``vmap`` and any sharding, whatever the batch or the example's place in it), while an
attack sees fresh randomness at every step, because each step changes the input.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from robustjax import _checks
from robustjax.runtime import jaxprs

__all__ = ["bpda", "eot", "input_keys", "straight_through", "STRAIGHT_THROUGH"]

STRAIGHT_THROUGH = ("round", "floor", "ceil", "sign", "stop_gradient")
"""The primitives :func:`straight_through` gives an identity backward pass."""

Array = jax.Array


def bpda(forward: Callable, backward: Optional[Callable] = None) -> Callable:
    """``forward`` on the forward pass, the vector-Jacobian product of ``backward`` on the
    backward pass (Athalye et al. 2018, Section 4.1.1).

    Args:
      forward: ``x -> y``, any function of one array (a quantiser, a JPEG compression,
        a whole non-differentiable defence, or a model with one inside).
      backward: a differentiable ``x -> y'`` of the same output shape whose gradient
        stands in for ``forward``'s; default: the identity (``forward`` must then keep
        the shape and dtype of its input, as preprocessing defences do).

    Returns:
      ``x -> forward(x)``, differentiable with ``backward``'s gradient at ``x``.
    """
    if not callable(forward):
        raise TypeError(f"forward must be a function, got {type(forward).__name__}")
    if backward is not None and not callable(backward):
        raise TypeError(f"backward must be a function or None, got {type(backward).__name__}")

    @jax.custom_vjp
    def approx(x):
        return _forward(x)

    def _forward(x):
        out = forward(x)
        if backward is None and (jnp.shape(out) != jnp.shape(x)
                                 or jnp.result_type(out) != jnp.result_type(x)):
            raise ValueError(f"bpda with the identity backward needs forward to keep its "
                             f"input's shape and dtype ({jnp.shape(x)} {jnp.result_type(x)}), "
                             f"got {jnp.shape(out)} {jnp.result_type(out)}; pass backward=")
        return out

    def fwd(x):
        return _forward(x), x

    def bwd(x, g):
        if backward is None:
            return (g,)
        _, vjp = jax.vjp(backward, x)
        return vjp(g)

    approx.defvjp(fwd, bwd)
    return approx


def input_keys(key: Array, x: Array) -> Array:
    """One key per row of ``x``, ``fold_in(key, h(x_j))`` with ``h`` a hash of the row's bits.

    The hash is a multiply-xorshift mix of the row's 32-bit words, weighted by position,
    so two inputs that differ in one coordinate get different keys.
    """
    flat = lax.stop_gradient(x).reshape(x.shape[0], -1).astype(jnp.float32)
    words = lax.bitcast_convert_type(flat, jnp.uint32)
    pos = jnp.arange(words.shape[1], dtype=jnp.uint32) * jnp.uint32(0x9E3779B1) + 1
    mixed = words * pos
    mixed = mixed ^ (mixed >> 15)
    h = jnp.sum(mixed * jnp.uint32(0x85EBCA6B), axis=1, dtype=jnp.uint32)
    return jax.vmap(lambda v: jax.random.fold_in(key, v))(h)


def eot(randomised_logits_fn: Callable, samples: int, *, key: Optional[Array] = None,
        average: str = "logits") -> Callable:
    """Expectation over Transformation (Athalye et al. 2018, Section 4.3) of a randomised model.

    Args:
      randomised_logits_fn: ``(x, key) -> logits [B, K]``; the key draws the model's
        randomness (noise, a random resize, dropout at test time...) for the whole batch.
      samples: draws per call (>= 1); the mean is taken over them.
      key: the randomness' root key (default ``PRNGKey(0)``); see the module for how
        draws are keyed per example and per sample.
      average: ``"logits"`` (the mean of the logits: the gradient of a loss of the mean)
        or ``"log_probs"`` (the log of the mean of the softmax probabilities: the
        expected classifier's log-probabilities, as used for randomised smoothing).

    Returns:
      ``x -> logits [B, K]``: pure and deterministic, differentiable through every draw.
      With ``samples=1`` it is one draw of the model per example, keyed as above.
    """
    _checks.check_int("samples", samples, 1)
    _checks.check_choice("average", average, ("logits", "log_probs"))
    if not callable(randomised_logits_fn):
        raise TypeError("randomised_logits_fn must be a function (x, key) -> logits, got "
                        f"{type(randomised_logits_fn).__name__}")
    root = jax.random.PRNGKey(0) if key is None else key

    def one_row(xj, kj, s):
        return randomised_logits_fn(xj[None], jax.random.fold_in(kj, s))[0]

    def draw(x, keys, s):
        out = jax.vmap(one_row, in_axes=(0, 0, None))(x, keys, s)
        return out if average == "logits" else jax.nn.softmax(out, axis=-1)

    def expected(x):
        keys = input_keys(root, x)
        if samples == 1:
            total = draw(x, keys, 0)
        else:
            total = lax.fori_loop(1, samples, lambda s, acc: acc + draw(x, keys, s),
                                  draw(x, keys, 0))
        mean = total / samples
        return mean if average == "logits" else jnp.log(jnp.maximum(mean, 1e-30))

    return expected


def straight_through(fn: Callable) -> Callable:
    """``fn`` with every primitive of :data:`STRAIGHT_THROUGH` in its program (nested calls
    included) replaced by :func:`bpda` of itself: the same forward values, the identity's
    gradient through each (Athalye et al. 2018, Section 4.1.1, "straight-through").

    ``fn`` takes positional arrays (``logits_fn(x)``, or ``(x, key)``); it is traced at each
    call's shapes (trace time, not run time, under ``jit``). Primitives inside loops,
    branches and custom-derivative rules keep their own gradients.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")

    @functools.wraps(fn)
    def approximated(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = jaxprs.evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args),
                              _straight_rule)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    return approximated


def _straight_rule(eqn, invals):
    if eqn.primitive.name in STRAIGHT_THROUGH and len(invals) == 1 and jnp.issubdtype(
            jnp.result_type(invals[0]), jnp.inexact):
        return bpda(lambda v: jaxprs.bind(eqn, [v]))(invals[0])
    if jaxprs.kind(eqn) in ("call", "remat"):
        inner = jaxprs.body(eqn)
        if inner is not None:
            return jaxprs.evaluate(inner[0], inner[1], invals, _straight_rule)
    return None
