"""Fast input gradients for any model: a rewrite of the model's jaxpr.

Every first-order attack (Madry et al., Section 2.1: the PGD inner
maximisation; and FGSM, APGD, FAB, TRADES' KL attack, the loss landscape,
the eps sweeps) differentiates the model with respect to its *input* once
per iteration inside a ``lax.fori_loop``. On XLA's CPU backend the stock
input gradients of ``lax.conv_general_dilated`` and of ``reduce_window``
max-pooling run through slow generic loops inside a while loop
(:mod:`robustjax.models.layers` explains why), so a model written with
``flax.linen.Conv`` / ``nn.max_pool``, Haiku, Equinox or plain ``jax.lax``
was several times slower to attack than robustjax's own networks.

:func:`rewrite` fixes that for a model the user brings, without changing the
model: it traces ``logits_fn`` to a jaxpr and evaluates that jaxpr with

* ``conv_general_dilated`` replaced by :func:`robustjax.models.layers.conv_general_dilated`
  (the same convolution; a custom VJP whose input gradient reads a
  physically transposed kernel, and im2col + matmul for few input channels);
* ``reduce_window_max`` whose windows tile the input (window = stride, no
  padding, no dilation: 2x2/stride-2 pooling in any layout) replaced by
  :func:`robustjax.models.layers.max_pool_2x2` / :func:`robustjax.models.layers.max_pool_tiled`,
  which give the same gradient as JAX's (each window's to its first maximum);
* nested ``jit`` calls, ``closed_call`` and ``checkpoint`` (remat) rewritten
  inside.

Every other primitive is bound unchanged, and an operation that the rewrite
does not recognise (grouped convolutions, ``preferred_element_type``,
overlapping or padded pooling, convolutions inside ``scan`` / ``while`` /
``cond`` or custom-derivative functions) keeps its stock form. The rewritten
function computes the same values; gradients agree up to float summation
order (tests/test_fastpath.py).

The attacks call :func:`auto`, which rewrites on the backends where it is
measured faster (the CPU: ``benchmarks/thirdparty_speed.py``, figures in
``benchmarks/RESULTS.md``) and leaves the function alone elsewhere. To turn
it off: set the environment variable ``ROBUSTJAX_FAST_GRAD=0`` (read at each
call, so it can be changed from Python), or pass ``stock(logits_fn)`` to keep
one model's stock layers.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

from robustjax.models import layers
from robustjax.runtime import jaxprs

__all__ = ["rewrite", "auto", "stock", "enabled", "ENV_VAR", "FAST_BACKENDS"]

ENV_VAR = "ROBUSTJAX_FAST_GRAD"
"""``0`` / ``false`` / ``off`` turns the rewrite off in every attack; anything else leaves it on."""

FAST_BACKENDS = ("cpu",)
"""Backends on which :func:`auto` rewrites (where the rewrite was measured faster)."""

_REWRITTEN = "_robustjax_fastpath"  # attribute: the function is already rewritten or kept stock


def enabled() -> bool:
    """Whether :func:`auto` may rewrite: ``ROBUSTJAX_FAST_GRAD`` is not 0/false/off/no."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def stock(fn: Callable) -> Callable:
    """``fn`` marked so that the attacks never rewrite it (its stock layers are kept)."""
    @functools.wraps(fn)
    def kept(*args, **kwargs):
        return fn(*args, **kwargs)
    setattr(kept, _REWRITTEN, "stock")
    return kept


def auto(fn: Callable) -> Callable:
    """``rewrite(fn)`` on the backends in :data:`FAST_BACKENDS` when :func:`enabled`, else ``fn``.

    Idempotent: a function already rewritten (or marked with :func:`stock`) is
    returned as it is.
    """
    if getattr(fn, _REWRITTEN, None) is not None or not enabled():
        return fn
    if jax.default_backend() not in FAST_BACKENDS:
        return fn
    return rewrite(fn)


def rewrite(fn: Callable) -> Callable:
    """``fn`` with its convolutions and tiled max-pools in their loop-friendly forms.

    ``fn`` is any JAX-traceable function of positional array arguments (a
    ``logits_fn(x)``, or ``logits_fn(x, key)`` for a randomised model). The
    result computes the same values with the same gradients (up to float
    summation order). It traces ``fn`` once per call, which adds trace time,
    not run time, when it is called inside ``jax.jit``. A function that cannot
    be traced to a jaxpr (for example one with Python control flow on values,
    called outside ``jit``) is called as it is.
    """
    if getattr(fn, _REWRITTEN, None) is not None:
        return fn

    @functools.wraps(fn)
    def fast(*args, **kwargs):
        if kwargs:
            return fn(*args, **kwargs)
        specs = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), args)
        try:
            closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*specs)
        except Exception:  # noqa: BLE001 -- not traceable as a jaxpr: run it as it is
            return fn(*args)
        flat = jax.tree_util.tree_leaves(args)
        out = _eval(closed.jaxpr, closed.consts, flat)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    setattr(fast, _REWRITTEN, "rewritten")
    return fast


# ----------------------------------------------------------------------------
# The interpreter: eval_jaxpr with a few primitives replaced
# ----------------------------------------------------------------------------

def _eval(jaxpr, consts, args) -> list:
    return jaxprs.evaluate(jaxpr, consts, args, _rule)


def _rule(eqn, invals):
    rule = _RULES.get(eqn.primitive.name) or _BY_KIND.get(jaxprs.kind(eqn))
    return rule(eqn, invals) if rule is not None else None


def _call(eqn, invals):
    """A plain call (``jaxprs.kind == "call"``) evaluated inline, so its body is rewritten."""
    found = jaxprs.body(eqn)
    return None if found is None else _eval(found[0], found[1], invals)


def _checkpoint(eqn, invals):
    """A ``jax.checkpoint`` body rewritten, under ``jax.checkpoint`` again."""
    found = jaxprs.body(eqn)
    if found is None or found[0].constvars:
        return None
    jaxpr = found[0]
    fn = jax.checkpoint(lambda *a: _eval(jaxpr, (), a),
                        prevent_cse=eqn.params.get("prevent_cse", True),
                        policy=eqn.params.get("policy"))
    return fn(*invals)


def _conv(eqn, invals):
    p = eqn.params
    lhs, rhs = invals
    if (p.get("preferred_element_type") is not None or p.get("out_sharding") is not None
            or p["feature_group_count"] != 1 or p["batch_group_count"] != 1
            or not jnp.issubdtype(lhs.dtype, jnp.floating) or lhs.dtype != rhs.dtype):
        return None
    return layers.conv_general_dilated(
        lhs, rhs, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"],
        p["dimension_numbers"], precision=p["precision"])


def _max_pool(eqn, invals):
    p = eqn.params
    (x,) = invals
    window = tuple(p["window_dimensions"])
    if (tuple(p["window_strides"]) != window
            or any(lo or hi for lo, hi in p["padding"])
            or any(d != 1 for d in p["base_dilation"])
            or any(d != 1 for d in p["window_dilation"])
            or not jnp.issubdtype(x.dtype, jnp.floating)):
        return None
    if all(k == 1 for k in window):
        return None
    if x.ndim == 4 and window == (1, 2, 2, 1):
        return layers.max_pool_2x2(x)
    return layers.max_pool_tiled(x, window)


_RULES = {
    "conv_general_dilated": _conv,
    "reduce_window_max": _max_pool,
}
# Calls are opened as the shared walker says (custom-derivative calls keep their rules).
_BY_KIND = {"call": _call, "remat": _checkpoint}
