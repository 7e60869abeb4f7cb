"""Certified lower bounds on robust accuracy: IBP, CROWN-IBP and CROWN for any ``logits_fn``.

An attack (PGD, AutoAttack) gives an *upper* bound on robust accuracy; a
verifier gives a *lower* one: an example whose margins ``z_y - z_j`` provably
stay positive over the whole eps-ball cannot be broken by any attack.

* **IBP** (Gowal et al. 2018): interval bounds through the network
  (:mod:`robustjax.bound_graph`), with the trailing linear layers folded into the
  specification (their Section 3, "elision of the last layer"): the margins are
  bounded through ``(e_y - e_j)^T W`` rather than by subtracting logit bounds.
* **CROWN** (Zhang et al., "Efficient Neural Network Robustness Certification
  with General Activation Functions", NeurIPS 2018): linear bounds propagated
  backward from the specification through every affine primitive (by its
  transpose, ``jax.vjp``), relaxing ReLU / leaky ReLU / ``max`` with a constant by
  the triangle's upper chord and the adaptive lower slope (1 when u > -l,
  else the smallest slope). The bounds of each relaxed pre-activation are
  themselves computed by CROWN when it has at most ``crown_max_neurons``
  elements per example (IBP otherwise, which is exact for the first layer).
* **CROWN-IBP** (Zhang et al., ICLR 2020): IBP for the intermediate bounds, one
  CROWN pass from the specification (the cheap bound used in training).

Nodes without a linear relaxation (max-pooling, tanh, sigmoid, swish, products
of bounded values) are *concretised* in the backward pass: their interval is
used as is. That is sound and loses the tightness a pooling relaxation would
give (auto_LiRPA's ``BoundMaxPool``). The input set is the L-inf box clipped to
``bounds``; for L2 and L1 balls CROWN takes the better of the dual-norm bound
of the ball and the bound over its bounding box, and IBP uses the box.

Every bound is computed per example (the function is traced on a batch of one
and ``vmap``-ed), so models must treat examples independently: inference-mode
batch norm, as ``model_logits_fn`` gives.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.bound_graph import AFFINE, Box, UnsupportedPrimitiveError, ibp_node, is_box, trace

__all__ = ["METHODS", "NORMS", "bounds", "certified", "make_bound_fn", "margin_spec",
           "margin_lower_bounds", "certified_margins", "certified_loss", "check_settings",
           "UnsupportedPrimitiveError"]

METHODS = ("ibp", "crown_ibp", "crown")
NORMS = ("linf", "l2", "l1")


def check_settings(eps, norm, method) -> None:
    """Raises ValueError naming a bad eps (negative, not finite), norm or method."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    e = np.asarray(eps, dtype=np.float64)
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")


def _relu_like(node) -> float | None:
    """The negative slope if ``node`` is max(x, c) (0) or a leaky ReLU (its slope), else None."""
    if node.prim == "call" and node.name == "relu":
        return 0.0
    if node.prim == "call" and node.name == "leaky_relu":
        return "leaky"
    if node.name == "max":
        return 0.0
    return None


def _relaxation(lo, hi, slope):
    """Linear bounds a_l t + b_l <= sigma(t) <= a_u t + b_u of sigma(t) = max(t, slope*t), t in [lo, hi].

    Upper: the chord; lower: slope 1 when hi > -lo else ``slope`` (CROWN's adaptive choice).
    """
    active, inactive = lo >= 0, hi <= 0
    width = jnp.where(active | inactive, 1.0, hi - lo)
    a_u = (hi - slope * lo) / width
    b_u = slope * lo - a_u * lo
    a_u = jnp.where(active, 1.0, jnp.where(inactive, slope, a_u))
    b_u = jnp.where(active | inactive, 0.0, b_u)
    a_l = jnp.where(active, 1.0, jnp.where(inactive, slope, jnp.where(hi > -lo, 1.0, slope)))
    return a_l, jnp.zeros_like(lo), a_u, b_u


class _Bounder:
    """IBP forward pass over a :class:`Graph`, with backward linear (CROWN) passes on demand."""

    def __init__(self, graph, method: str, crown_max_neurons: int):
        self.g, self.method, self.max_neurons = graph, method, crown_max_neurons
        self.producer = graph.producer()

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x, eps, norm, box):
        lo_b, hi_b = box
        xin = Box(jnp.clip(x - eps, lo_b, hi_b), jnp.clip(x + eps, lo_b, hi_b))
        self.x, self.eps, self.norm, self.xin = x, eps, norm, xin
        vals = dict(self.g.consts)
        vals[self.g.inputs[0]] = xin
        self.vals = vals
        for i, node in enumerate(self.g.nodes):
            args = [vals[a] for a in node.inputs]
            if self.method == "crown" and _relu_like(node) is not None:
                for k, a in enumerate(args):
                    if is_box(a) and a.lo.dtype != jnp.bool_:
                        args[k] = vals[node.inputs[k]] = self._refine(node.inputs[k], a)
            for o, v in zip(node.outputs, ibp_node(node, args)):
                vals[o] = v
        return vals[self.g.outputs[0]]

    def _refine(self, vid, box):
        """CROWN bounds of value ``vid`` intersected with its IBP box (if small enough)."""
        shape = self.g.shapes[vid].shape
        n = math.prod(shape)
        if n > self.max_neurons or self.producer.get(vid) is None:
            return box
        spec = jnp.eye(n, dtype=jnp.float32).reshape((n,) + shape)
        lo, hi = self.backward(vid, spec, relax=True)
        return Box(jnp.maximum(box.lo, lo.reshape(shape)), jnp.minimum(box.hi, hi.reshape(shape)))

    # -- backward --------------------------------------------------------------------------
    def backward(self, start, spec, *, relax: bool):
        """Lower and upper bounds (shape [S]) of ``<spec[s], value(start)>`` for each row s."""
        S = spec.shape[0]
        lA, uA = {start: spec}, {start: spec}
        lb = jnp.zeros((S,), jnp.float32)
        ub = jnp.zeros((S,), jnp.float32)

        def add(d, k, a):
            d[k] = a if k not in d else d[k] + a

        def dot(a, v):
            return jnp.sum((a * v).reshape(S, -1), axis=1)

        def concretise(la, ua, box):
            return (dot(jnp.maximum(la, 0), box.lo) + dot(jnp.minimum(la, 0), box.hi),
                    dot(jnp.maximum(ua, 0), box.hi) + dot(jnp.minimum(ua, 0), box.lo))

        for idx in range(self.producer[start], -1, -1):
            node = self.g.nodes[idx]
            if not any(o in lA for o in node.outputs):
                continue
            las = [lA.pop(o, None) for o in node.outputs]
            uas = [uA.pop(o, None) for o in node.outputs]
            args = [self.vals[a] for a in node.inputs]
            boxed = [k for k, v in enumerate(args) if is_box(v)]
            slope = _relu_like(node)
            if node.name in AFFINE and node.prim != "call" and self._affine_ok(node, args):
                for las_, d, acc in ((las, lA, "l"), (uas, uA, "u")):
                    ins, bias = self._transpose(node, args, boxed, las_)
                    for k, a in zip(boxed, ins):
                        add(d, node.inputs[k], a)
                    if acc == "l":
                        lb = lb + bias
                    else:
                        ub = ub + bias
            elif relax and slope is not None and len(boxed) == 1 and (
                    node.name == "max" or boxed[0] == 0):
                k = boxed[0]
                xin = args[k]
                c = args[1 - k] if node.name == "max" else 0.0
                if slope == "leaky":
                    slope = args[1]
                la, ua = las[0], uas[0]
                a_l, b_l, a_u, b_u = _relaxation(xin.lo - c, xin.hi - c, slope)
                # sigma(x) = c + relu_slope(x - c): intercepts in x.
                b_l, b_u = b_l + c - a_l * c, b_u + c - a_u * c
                pos_l, neg_l = jnp.maximum(la, 0), jnp.minimum(la, 0)
                pos_u, neg_u = jnp.maximum(ua, 0), jnp.minimum(ua, 0)
                add(lA, node.inputs[k], pos_l * a_l + neg_l * a_u)
                add(uA, node.inputs[k], pos_u * a_u + neg_u * a_l)
                lb = lb + dot(pos_l, b_l) + dot(neg_l, b_u)
                ub = ub + dot(pos_u, b_u) + dot(neg_u, b_l)
            else:
                for o, la, ua in zip(node.outputs, las, uas):
                    if la is not None:
                        cl, cu = concretise(la, ua, self.vals[o])
                        lb, ub = lb + cl, ub + cu
        x_id = self.g.inputs[0]
        if x_id in lA:
            la, ua = lA.pop(x_id), uA.pop(x_id)
            cl, cu = concretise(la, ua, self.xin)
            if self.norm != "linf":
                # The ball itself: <a, x0> -/+ eps * ||a||_dual; keep the tighter of the two.
                q = 2 if self.norm == "l2" else jnp.inf
                norm_l = jnp.linalg.norm(la.reshape(S, -1), ord=q, axis=1)
                norm_u = jnp.linalg.norm(ua.reshape(S, -1), ord=q, axis=1)
                cl = jnp.maximum(cl, dot(la, self.x) - self.eps * norm_l)
                cu = jnp.minimum(cu, dot(ua, self.x) + self.eps * norm_u)
            lb, ub = lb + cl, ub + cu
        return lb, ub

    def _affine_ok(self, node, args) -> bool:
        name = node.name
        boxed = [is_box(v) for v in args]
        if name == "select_n" and boxed[0]:
            return False
        if name in ("mul", "dot_general", "conv_general_dilated") and all(boxed[:2]):
            return False
        if name == "div" and boxed[1]:
            return False
        if name in ("dynamic_slice", "gather") and any(boxed[1:]):
            return False
        return True

    def _transpose(self, node, args, boxed, cotangents):
        """Coefficients on the bounded inputs and the bias term, for every spec row."""
        def f(*xs):
            full = list(args)
            for k, v in zip(boxed, xs):
                full[k] = v
            outs = node.prim.bind(*full, **node.params)
            return tuple(outs) if node.prim.multiple_results else (outs,)

        zeros = [jnp.zeros_like(args[k].lo) for k in boxed]
        S = next(c for c in cotangents if c is not None).shape[0]
        data_args = range(1, len(args)) if node.name == "select_n" else range(len(args))
        affine = node.name in _MAY_OFFSET and any(not is_box(args[i]) for i in data_args)
        if affine:     # y = L(x) + f(0): the transpose of L, and the offset f(0)
            offsets, vjp = jax.vjp(f, *zeros)
        else:          # linear in the bounded inputs: no offset, no forward pass at zero
            vjp = jax.linear_transpose(f, *zeros)
            offsets = tuple(jax.eval_shape(f, *zeros))
        cts = tuple(c if c is not None else jnp.zeros((S,) + o.shape, o.dtype)
                    for c, o in zip(cotangents, offsets))
        ins = jax.vmap(vjp)(cts)
        bias = jnp.zeros((S,), jnp.float32)
        if affine:
            bias = sum(jnp.sum((c * o).reshape(S, -1), axis=1) for c, o in zip(cts, offsets))
        return ins, bias


# Affine primitives that add a constant when one of their data operands is not bounded.
_MAY_OFFSET = frozenset({"add", "add_any", "sub", "pad", "concatenate", "stack", "select_n"})


def margin_spec(y, num_classes: int):
    """Rows e_y - e_j (j = 0..K-1; row y is zero): the margins z_y - z_j. Shape [B, K, K]."""
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    return onehot[:, None, :] - jnp.eye(num_classes, dtype=jnp.float32)[None]


def _one_example(logits_fn, method, crown_max_neurons, norm, box, x1, eps1, spec1, beta):
    """Bounds of spec1 @ logits_fn(x1) for one example (x1 without its batch axis)."""
    x = x1[None]
    graph = trace(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    fwd_method = "crown" if method == "crown" else "ibp"
    bounder = _Bounder(graph, fwd_method, crown_max_neurons)
    bounder.forward(x, eps1, norm, box)
    out = graph.outputs[0]
    spec = spec1[:, None, :]                     # [S, 1, K] against logits [1, K]
    lo, hi = bounder.backward(out, spec, relax=(method != "ibp"))
    if method != "ibp":
        # The IBP bound (trailing linear layers elided) is sound too: CROWN and CROWN-IBP
        # take the tighter of the two, or (training, ``beta``) CROWN-IBP's mix.
        lo_i, hi_i = bounder.backward(out, spec, relax=False)
        if beta is None:
            lo, hi = jnp.maximum(lo, lo_i), jnp.minimum(hi, hi_i)
        else:
            lo, hi = beta * lo + (1 - beta) * lo_i, beta * hi + (1 - beta) * hi_i
    return lo, hi


def make_bound_fn(logits_fn: Callable, *, method: str = "ibp", norm: str = "linf",
                  bounds=(0.0, 1.0), crown_max_neurons: int = 4096, jit: bool = True):
    """``f(x, eps, spec) -> (lower, upper)`` of ``spec[b] @ logits_fn(x)[b]``, shape [B, S].

    ``eps`` is a scalar or one radius per example; ``spec`` is [B, S, K]. Build
    it once and call it on many batches: it compiles once per batch shape.
    """
    check_settings(0.0, norm, method)
    box = (float(bounds[0]), float(bounds[1]))

    def fn(x, eps, spec, beta=None):
        eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), x.shape[:1])
        one = functools.partial(_one_example, logits_fn, method, crown_max_neurons, norm, box,
                                beta=beta)
        return jax.vmap(one)(x, eps, spec)
    return jax.jit(fn) if jit else fn


def _bounds(logits_fn, x, eps, norm, method, box, spec, batch_size, crown_max_neurons):
    check_settings(eps, norm, method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = jnp.asarray(x, jnp.float32)
    k = jax.eval_shape(logits_fn, x[:1]).shape[-1]
    if spec is None:
        spec = jnp.broadcast_to(jnp.eye(k, dtype=jnp.float32), (x.shape[0], k, k))
    fn = make_bound_fn(logits_fn, method=method, norm=norm, bounds=box,
                       crown_max_neurons=crown_max_neurons)
    eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), x.shape[:1])
    los, his = [], []
    for i in range(0, x.shape[0], batch_size):
        lo, hi = fn(x[i:i + batch_size], eps[i:i + batch_size], spec[i:i + batch_size])
        los.append(lo)
        his.append(hi)
    return jnp.concatenate(los), jnp.concatenate(his)


def bounds(logits_fn: Callable, x, *, eps, norm: str = "linf", method: str = "ibp",
           bounds=(0.0, 1.0), spec=None, batch_size: int = 256, crown_max_neurons: int = 4096):
    """Sound lower and upper logits (or ``spec @ logits``) over the eps-ball, per example.

    Returns ``(lower, upper)`` of shape [B, K] (``[B, S]`` with a ``spec`` [B, S, K]).
    ``method`` is "ibp", "crown_ibp" or "crown"; ``norm`` "linf", "l2" or "l1";
    the ball is intersected with the box ``bounds``. Runs in batches of
    ``batch_size`` (use a few examples per batch for "crown" on conv nets: its
    intermediate passes hold one coefficient per neuron pair).
    """
    return _bounds(logits_fn, x, eps, norm, method, bounds, spec, batch_size, crown_max_neurons)


def certified_margins(logits_fn: Callable, x, y, *, eps, method: str = "ibp",
                      norm: str = "linf", bounds=(0.0, 1.0), batch_size: int = 256,
                      crown_max_neurons: int = 4096):
    """Lower bounds of the margins z_y - z_j over the ball, [B, K], with +inf at j = y."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y)
    k = jax.eval_shape(logits_fn, x[:1]).shape[-1]
    lo, _ = _bounds(logits_fn, x, eps, norm, method, bounds, margin_spec(y, k), batch_size,
                    crown_max_neurons)
    return jnp.where(jax.nn.one_hot(y, k, dtype=bool), jnp.inf, lo)


def certified(logits_fn: Callable, x, y, *, eps, method: str = "ibp", norm: str = "linf",
              bounds=(0.0, 1.0), batch_size: int = 256, crown_max_neurons: int = 4096):
    """True where every margin z_y - z_j (j != y) is provably positive over the ball. [B] bool."""
    lo = certified_margins(logits_fn, x, y, eps=eps, method=method, norm=norm, bounds=bounds,
                           batch_size=batch_size, crown_max_neurons=crown_max_neurons)
    return jnp.all(lo > 0, axis=1)


def margin_lower_bounds(logits_fn: Callable, x, y, *, eps, method: str = "ibp",
                        norm: str = "linf", bounds=(0.0, 1.0), beta=None,
                        crown_max_neurons: int = 4096):
    """Jittable lower bounds of z_y - z_j, [B, K] (0 at j = y), for training losses.

    With ``method="crown_ibp"`` and a ``beta``, the CROWN-IBP mix
    ``beta * CROWN-IBP + (1 - beta) * IBP`` (Zhang et al. 2020, Eq. 9).
    """
    k = jax.eval_shape(logits_fn, x[:1]).shape[-1]
    fn = make_bound_fn(logits_fn, method=method, norm=norm, bounds=bounds,
                       crown_max_neurons=crown_max_neurons, jit=False)
    lo, _ = fn(x, eps, margin_spec(y, k), beta)
    return jnp.where(jax.nn.one_hot(y, k, dtype=bool), 0.0, lo)


def certified_loss(logits_fn: Callable, x, y, *, eps, kappa, method: str = "ibp",
                   beta=None):
    """kappa * CE(clean) + (1 - kappa) * CE(worst-case logits): Gowal et al. 2018, Eq. 12.

    The worst-case logits are ``-lower(z_y - z_j)`` (0 for the true class):
    the elided specification of their Section 3. ``method="crown_ibp"`` with
    ``beta`` gives CROWN-IBP's objective (Zhang et al. 2020). Returns
    ``(loss, clean_logits, margin_lower)``.
    """
    clean = logits_fn(x)
    lower = margin_lower_bounds(logits_fn, x, y, eps=eps, method=method, beta=beta)
    ce = optax.softmax_cross_entropy_with_integer_labels
    loss = kappa * ce(clean, y).mean() + (1 - kappa) * ce(-lower, y).mean()
    return loss, clean, lower
