"""Certified lower bounds on robust accuracy: IBP, CROWN-IBP, CROWN and alpha-CROWN.

An attack (PGD, AutoAttack) gives an *upper* bound on robust accuracy; a
verifier gives a *lower* one: an example whose margins ``z_y - z_j`` provably
stay positive over the whole eps-ball cannot be broken by any attack.

* **IBP** (Gowal et al. 2018): interval bounds through the network
  (:mod:`robustjax.certify.graph`), with the trailing linear layers folded into the
  specification (their Section 3, "elision of the last layer"): the margins are
  bounded through ``(e_y - e_j)^T W`` rather than by subtracting logit bounds.
* **CROWN**, **CROWN-IBP** and **alpha-CROWN** (:mod:`robustjax.certify.crown`):
  backward linear bounds, with CROWN / IBP / CROWN-plus-optimised-slopes
  intermediate and final bounds. CROWN variants keep the tighter of their
  bound and IBP's, so they are never looser than IBP.

**What "sound" means here.** In exact arithmetic every bound contains every
output of the function over the ball intersected with ``bounds``, for every
input :func:`bounds` accepts; a primitive, named call or parameter without a
proven rule is refused with :class:`UnsupportedPrimitiveError` (a
``ValueError``), never bounded by a guess. The computation runs in float32
with ``precision=HIGHEST`` for every dot and convolution, whatever the model's
dtype (bfloat16 / float16 models need ``upcast=True``) or the backend's
default; float32 rounding is covered in :func:`certified` by a relative margin
``margin_rtol`` (default 1e-5, about 100 float32 ulps): an example is certified
when every lower margin bound exceeds ``margin_rtol * (1 + max(|lower|,
|upper|))``. Inputs outside ``bounds`` are refused, not moved.

**Memory.** CROWN's intermediate passes hold one coefficient per pair of
neurons, per example. :func:`bounds` and :func:`certified` process examples
in chunks sized to ``memory_budget`` (default: half of the free memory of the
device), checked against XLA's own memory analysis of the compiled function,
and refuse with an error naming the layer when one example does not fit. The
bound function is compiled once per (function, shapes, settings) and reused.

The bounds of a batch are computed with the batch on axis 0 when the model
keeps each example on its own row (:func:`robustjax.certify.crown.batch_axis_ok`,
checked on its program), else per example with ``vmap``; models must treat
examples independently (inference-mode batch norm, as ``model_logits_fn``
gives).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.certify.graph import UnsupportedPrimitiveError, trace
from robustjax.certify.memory import Chunked, available_memory, memory_per_example, too_big
from robustjax.certify.crown import Bounder, batch_axis_ok
from robustjax.certify.spec import (METHODS, NORMS, canonical_method, check_box, check_inputs,
                                    check_settings, margin_rows, margin_spec, scatter_margins)

__all__ = ["METHODS", "NORMS", "bounds", "certified", "make_bound_fn", "margin_spec",
           "margin_lower_bounds", "certified_margins", "certified_loss", "check_settings",
           "check_inputs", "is_certified", "memory_per_example", "available_memory",
           "UnsupportedPrimitiveError", "MARGIN_RTOL"]

log = logging.getLogger("robustjax.certify.verifier")
MARGIN_RTOL = 1e-5


def _bound_rows(graph, settings, x, eps, spec, beta, *, batched):
    """Bounds [B, S] of spec[b] @ logits(x)[b] for a graph traced at x's shape."""
    method, crown_max_neurons, norm, box, alpha_steps, alpha_lr, upper = settings
    fwd = "crown" if method in ("crown", "alpha_crown") else "ibp"
    bounder = Bounder(graph, fwd, crown_max_neurons, batched=batched)
    bounder.forward(x, eps, norm, box)
    out = graph.outputs[0]
    spec = jnp.swapaxes(spec, 0, 1)              # [S, B, K] against logits [B, K]
    if method == "alpha_crown":
        lo, hi = bounder.alpha_crown(out, spec, steps=alpha_steps, lr=alpha_lr, upper=upper)
    else:
        lo, hi = bounder.backward(out, spec, relax=(method != "ibp"))
    if method != "ibp":
        # The IBP bound (trailing linear layers elided) is sound too: CROWN variants take the
        # tighter of the two, or (training, ``beta``) CROWN-IBP's mix.
        lo_i, hi_i = bounder.backward(out, spec, relax=False)
        if beta is None:
            lo, hi = jnp.maximum(lo, lo_i), jnp.minimum(hi, hi_i)
        else:
            lo, hi = beta * lo + (1 - beta) * lo_i, beta * hi + (1 - beta) * hi_i
    return jnp.transpose(lo), jnp.transpose(hi)


_CACHE_ATTR = "_robustjax_bound_fns"


def _cache_for(logits_fn) -> dict:
    """Built bound functions and compiled chunks of ``logits_fn``, kept on the function itself.

    ``{settings: jitted fn, (jitted fn, shapes, size): Chunked}``. Nothing global
    holds them, so they go when the user's function does, with the parameters it
    closes over. A callable that takes no attributes gets a throwaway dict.
    """
    cache = getattr(logits_fn, _CACHE_ATTR, None)
    if isinstance(cache, dict):
        return cache
    cache = {}
    try:
        setattr(logits_fn, _CACHE_ATTR, cache)
    except Exception:  # noqa: BLE001 - bound methods, frozen modules, builtins: no cache
        pass
    return cache


def make_bound_fn(logits_fn: Callable, *, method: str = "ibp", norm: str = "linf",
                  bounds=(0.0, 1.0), crown_max_neurons: int = 4096, jit: bool = True,
                  upcast: bool = False, per_example="auto", alpha_steps: int = 20,
                  alpha_lr: float = 0.5, upper: bool = True):
    """``f(x, eps, spec) -> (lower, upper)`` of ``spec[b] @ logits_fn(x)[b]``, shape [B, S].

    ``eps`` is a scalar or one radius per example; ``spec`` is [B, S, K]. Build
    it once and call it on many batches: it compiles once per batch shape (and a
    jitted one is itself built once per function and settings).
    ``per_example``: "auto" bounds the batch with its batch axis where the model's
    program keeps examples apart (:func:`robustjax.certify.crown.batch_axis_ok`), else
    vmaps over examples; True always vmaps, False requires the batch axis.
    ``upcast``: bound a bfloat16 / float16 model as its float32 upcast (else refused).
    ``alpha_steps`` / ``alpha_lr``: alpha-CROWN's projected Adam steps on the lower
    slopes (``upper=False`` optimises the lower bounds only).
    """
    method = canonical_method(method)
    check_settings(0.0, norm, method)
    if per_example not in ("auto", True, False):
        raise ValueError(f"per_example must be 'auto', True or False, got {per_example!r}")
    if isinstance(alpha_steps, bool) or not isinstance(alpha_steps, int) or alpha_steps < 0:
        raise ValueError(f"alpha_steps must be an integer >= 0, got {alpha_steps!r}")
    box = check_box(bounds)
    settings = (method, int(crown_max_neurons), norm, box, alpha_steps, float(alpha_lr),
                bool(upper))
    key = (settings, bool(upcast), per_example)
    cache = _cache_for(logits_fn) if jit else {}
    if key in cache:
        return cache[key]

    def fn(x, eps, spec, beta=None):
        eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), x.shape[:1])
        if per_example is not True:
            graph = trace(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), upcast=upcast)
            if batch_axis_ok(graph):
                return _bound_rows(graph, settings, x, eps, spec, beta, batched=True)
            if per_example is False:
                raise ValueError("per_example=False: the model's program mixes examples or "
                                 "moves the batch off axis 0; use per_example='auto' or True")

        def one(x1, eps1, spec1):
            x1 = x1[None]
            graph = trace(logits_fn, jax.ShapeDtypeStruct(x1.shape, x1.dtype), upcast=upcast)
            lo, hi = _bound_rows(graph, settings, x1, eps1[None], spec1[None], beta,
                                 batched=False)
            return lo[0], hi[0]
        return jax.vmap(one)(x, eps, spec)

    if not jit:
        return fn
    fn = jax.jit(fn)
    cache[key] = fn
    return fn


def _bounds(logits_fn, x, eps, norm, method, box, spec, batch_size, crown_max_neurons,
            memory_budget=None, upcast=False, alpha_steps=20, upper=True):
    method = canonical_method(method)
    check_settings(eps, norm, method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = check_inputs(x, box)
    n = x.shape[0]
    k = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + x.shape[1:], jnp.float32))
    k = k.shape[-1]
    spec = (np.broadcast_to(np.eye(k, dtype=np.float32), (n, k, k)) if spec is None
            else np.asarray(spec, np.float32))
    if spec.ndim != 3 or spec.shape[0] != n or spec.shape[2] != k:
        raise ValueError(f"spec must have shape [{n}, S, {k}], got {spec.shape}")
    eps = np.broadcast_to(np.asarray(eps, np.float32), (n,))
    budget = (0.5 * available_memory()) if memory_budget is None else float(memory_budget)
    if not budget > 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got "
                         f"{memory_budget!r}")
    per, where = memory_per_example(logits_fn, x.shape[1:], method=method,
                                    crown_max_neurons=crown_max_neurons, upcast=upcast)
    if per > budget:
        raise too_big(where, per, budget)
    # A power of two (at most the next one above n), so that calls on other numbers of
    # examples, and small changes of the free memory, reuse the compiled chunk.
    size = int(max(1, min(batch_size, budget // per, 1 << (n - 1).bit_length())))
    size = 1 << (size.bit_length() - 1)
    fn = make_bound_fn(logits_fn, method=method, norm=norm, bounds=box,
                       crown_max_neurons=crown_max_neurons, upcast=upcast,
                       alpha_steps=alpha_steps, upper=upper)
    cache, key = _cache_for(logits_fn), (fn, x.shape[1:], spec.shape[1:], size)
    chunked = cache.get(key) or Chunked(fn, x, spec, size, budget, where)
    cache[key] = chunked
    size = chunked.size
    los, his = [], []
    t0 = time.time()
    for i in range(0, n, size):
        m = min(size, n - i)
        pad = lambda a: np.concatenate([a, np.repeat(a[-1:], size - m, 0)]) if m < size else a  # noqa: E731,E501
        lo, hi = chunked.compiled(pad(x[i:i + size]), pad(eps[i:i + size]),
                                  pad(spec[i:i + size]))
        los.append(np.asarray(lo)[:m])
        his.append(np.asarray(hi)[:m])
        done, dt = i + m, time.time() - t0
        if n > size:
            log.info("certify %s: %d/%d examples, %.1f examples/s, ETA %.0f s", method, done, n,
                     done / max(dt, 1e-9), (n - done) * dt / done)
    return np.concatenate(los), np.concatenate(his)


def bounds(logits_fn: Callable, x, *, eps, norm: str = "linf", method: str = "ibp",
           bounds=(0.0, 1.0), spec=None, batch_size: int = 256, crown_max_neurons: int = 4096,
           memory_budget: Optional[float] = None, upcast: bool = False, alpha_steps: int = 20):
    """Sound lower and upper logits (or ``spec @ logits``) over the eps-ball, per example.

    Returns ``(lower, upper)`` of shape [B, K] (``[B, S]`` with a ``spec`` [B, S, K]).
    ``method`` is "ibp", "crown_ibp", "crown" or "alpha_crown"; ``norm`` "linf",
    "l2" or "l1"; the ball is intersected with the box ``bounds``, which must
    contain ``x``. Runs in chunks of at most ``batch_size`` examples that fit in
    ``memory_budget`` bytes (default: half of the device's free memory).
    """
    return _bounds(logits_fn, x, eps, norm, method, bounds, spec, batch_size, crown_max_neurons,
                   memory_budget, upcast, alpha_steps)


def _margins(logits_fn, x, y, eps, method, norm, bounds, batch_size, crown_max_neurons,
             memory_budget, upcast, alpha_steps):
    x = check_inputs(x, bounds)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be {x.shape[0]} integer labels, got shape {y.shape} and "
                         f"dtype {y.dtype}")
    k = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + x.shape[1:], jnp.float32))
    k = k.shape[-1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y must hold labels in [0, {k}), got values in [{y.min()}, {y.max()}]")
    lo, hi = _bounds(logits_fn, x, eps, norm, method, bounds, margin_rows(y, k),
                     batch_size, crown_max_neurons, memory_budget, upcast, alpha_steps,
                     upper=False)
    return scatter_margins(lo, y, k, np.inf), scatter_margins(hi, y, k, np.inf)


def certified_margins(logits_fn: Callable, x, y, *, eps, method: str = "ibp",
                      norm: str = "linf", bounds=(0.0, 1.0), batch_size: int = 256,
                      crown_max_neurons: int = 4096, memory_budget: Optional[float] = None,
                      upcast: bool = False, alpha_steps: int = 20):
    """Lower bounds of the margins z_y - z_j over the ball, [B, K], with +inf at j = y."""
    return _margins(logits_fn, x, y, eps, method, norm, bounds, batch_size, crown_max_neurons,
                    memory_budget, upcast, alpha_steps)[0]


def is_certified(lower, upper=None, *, margin_rtol: float = MARGIN_RTOL):
    """True per row where every lower margin bound exceeds the float32 rounding margin.

    ``lower`` / ``upper``: margin bounds [B, K] (+inf at the true class). A
    margin counts as positive when ``lower > margin_rtol * (1 + max(|lower|,
    |upper|))``; NaN is never positive.
    """
    lower = np.asarray(lower)
    scale = np.abs(lower) if upper is None else np.maximum(np.abs(lower), np.abs(upper))
    scale = np.where(np.isfinite(scale), scale, 0.0)
    return np.all(lower > margin_rtol * (1.0 + scale), axis=1)


def certified(logits_fn: Callable, x, y, *, eps, method: str = "ibp", norm: str = "linf",
              bounds=(0.0, 1.0), batch_size: int = 256, crown_max_neurons: int = 4096,
              memory_budget: Optional[float] = None, upcast: bool = False,
              alpha_steps: int = 20, margin_rtol: float = MARGIN_RTOL):
    """True where every margin z_y - z_j (j != y) is provably positive over the ball. [B] bool.

    "Provably positive" includes a relative margin ``margin_rtol`` for float32
    rounding (:func:`is_certified`).
    """
    lo, hi = _margins(logits_fn, x, y, eps, method, norm, bounds, batch_size, crown_max_neurons,
                      memory_budget, upcast, alpha_steps)
    return is_certified(lo, hi, margin_rtol=margin_rtol)


def margin_lower_bounds(logits_fn: Callable, x, y, *, eps, method: str = "ibp",
                        norm: str = "linf", bounds=(0.0, 1.0), beta=None,
                        crown_max_neurons: int = 4096, per_example="auto"):
    """Jittable lower bounds of z_y - z_j, [B, K] (0 at j = y), for training losses.

    With ``method="crown_ibp"`` and a ``beta``, the CROWN-IBP mix
    ``beta * CROWN-IBP + (1 - beta) * IBP`` (Zhang et al. 2020, Eq. 9). The whole
    batch is one computation, so only the training bounds (IBP, CROWN-IBP) are
    offered here; CROWN and alpha-CROWN, whose memory grows with the neurons of
    each layer squared, run in memory-sized chunks through :func:`certified_margins`.
    """
    if canonical_method(method) not in ("ibp", "crown_ibp"):
        raise ValueError(f"margin_lower_bounds takes method 'ibp' or 'crown_ibp', got "
                         f"{method!r}; use certified_margins for CROWN and alpha-CROWN (it "
                         f"runs in chunks that fit the memory)")
    k = jax.eval_shape(logits_fn, x[:1]).shape[-1]
    fn = make_bound_fn(logits_fn, method=method, norm=norm, bounds=bounds,
                       crown_max_neurons=crown_max_neurons, jit=False, per_example=per_example,
                       upper=False)
    lo, _ = fn(x, eps, margin_rows(y, k), beta)
    return scatter_margins(lo, y, k, 0.0)


def certified_loss(logits_fn: Callable, x, y, *, eps, kappa, method: str = "ibp",
                   beta=None, per_example="auto"):
    """kappa * CE(clean) + (1 - kappa) * CE(worst-case logits): Gowal et al. 2018, Eq. 12.

    The worst-case logits are ``-lower(z_y - z_j)`` (0 for the true class):
    the elided specification of their Section 3. ``method="crown_ibp"`` with
    ``beta`` gives CROWN-IBP's objective (Zhang et al. 2020). Returns
    ``(loss, clean_logits, margin_lower)``.
    """
    clean = logits_fn(x)
    lower = margin_lower_bounds(logits_fn, x, y, eps=eps, method=method, beta=beta,
                                per_example=per_example)
    ce = optax.softmax_cross_entropy_with_integer_labels
    loss = kappa * ce(clean, y).mean() + (1 - kappa) * ce(-lower, y).mean()
    return loss, clean, lower
