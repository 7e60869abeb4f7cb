"""Linear bound propagation over a bound graph: CROWN, CROWN-IBP and alpha-CROWN.

* **CROWN** (Zhang et al., "Efficient Neural Network Robustness Certification
  with General Activation Functions", NeurIPS 2018, Section 3): linear bounds
  propagated backward from a specification through every affine primitive (by
  its transpose), relaxing ReLU / leaky ReLU / ``max`` with a constant by the
  triangle's upper chord and the adaptive lower slope (1 when u > -l, else the
  smallest slope). Intermediate pre-activations with at most
  ``crown_max_neurons`` elements per example get CROWN bounds themselves (IBP
  otherwise, exact for the first layer).
* **CROWN-IBP** (Zhang et al., ICLR 2020, Section 3.2): IBP intermediate bounds
  and one backward pass from the specification.
* **alpha-CROWN** (Xu et al., "Fast and Complete: Enabling Complete Neural
  Network Verification with Rapid and Massively Parallel Incomplete
  Verifiers", ICLR 2021, Section 3.1): the lower slope of every unstable
  ReLU is a free variable alpha in [slope, 1] per specification row; projected
  Adam steps maximise the lower bound (and minimise the upper one). Here the
  intermediate bounds are CROWN's and only the final specification's alphas
  are optimised; the best bound seen (the first is CROWN's own) is kept, so
  alpha-CROWN is never looser than CROWN.

Nodes without a linear relaxation (max-pooling, tanh, sigmoid, swish, products
of bounded values, bool -> float conversions) are *concretised*: their
interval is used as is. The input set is the L-inf box clipped to ``bounds``;
for L2 and L1 balls the input term takes the better of the dual-norm bound of
the ball and the bound over its bounding box.

**The batch axis.** Values carry the batch on axis 0 and coefficient arrays
are ``[S, B, ...]`` (S specification rows), so shared kernels stay shared: a
transposed convolution runs once on ``S * B`` images, and the gradient of a
training loss with respect to the kernels is one convolution, not ``B``
per-example ones. :func:`batch_axis_ok` checks that a graph keeps every
example on its own row of axis 0; where it does not, callers ``vmap`` the
bounds over examples (``per_example=True``: one example per trace).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from robustjax.models import layers
from robustjax.certify.graph import Box, is_box
from robustjax.certify.interval import AFFINE, ibp_node

__all__ = ["Bounder", "batch_axis_ok", "relu_like"]


def relu_like(node):
    """The negative slope if ``node`` is max(x, c) (0.0) or a leaky ReLU ("leaky"), else None.

    :func:`robustjax.certify.graph.trace` keeps ``leaky_relu`` as a node only when its
    slope lies in [0, 1], where max(t, slope * t) is the function relaxed here.
    """
    if node.prim == "call" and node.name == "relu":
        return 0.0
    if node.prim == "call" and node.name == "leaky_relu":
        return "leaky"
    if node.name == "max":
        return 0.0
    return None


def _relaxation(lo, hi, slope):
    """Linear bounds a_l t <= sigma(t) <= a_u t + b_u of sigma(t) = max(t, slope*t), t in [lo, hi].

    Upper: the chord; lower: slope 1 when hi > -lo else ``slope`` (CROWN's adaptive
    choice). Also returns the mask of unstable neurons (lo < 0 < hi).
    """
    active, inactive = lo >= 0, hi <= 0
    width = jnp.where(active | inactive, 1.0, hi - lo)
    a_u = (hi - slope * lo) / width
    b_u = slope * lo - a_u * lo
    a_u = jnp.where(active, 1.0, jnp.where(inactive, slope, a_u))
    b_u = jnp.where(active | inactive, 0.0, b_u)
    a_l = jnp.where(active, 1.0, jnp.where(inactive, slope, jnp.where(hi > -lo, 1.0, slope)))
    return a_l, a_u, b_u, ~(active | inactive)


# Affine primitives that add a constant when one of their data operands is not bounded.
_MAY_OFFSET = frozenset({"add", "add_any", "sub", "pad", "concatenate", "stack", "select_n"})
# Primitives that act on each row of axis 0 separately whatever their parameters.
_ROWWISE = frozenset({
    "add", "add_any", "sub", "neg", "mul", "div", "max", "min", "abs", "square", "integer_pow",
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "sqrt", "rsqrt", "cbrt",
    "atan", "asinh", "sinh", "select_n", "clamp", "convert_element_type", "reduce_precision",
    "copy", "copy_p", "optimization_barrier", "ge", "gt", "le", "lt", "and", "or", "not"})


def _keeps_rows(node, shapes, boxed_ids) -> bool:
    """True when ``node`` acts on each row of axis 0 of its bounded inputs separately."""
    p, name = node.params, node.name
    rows = {shapes[i].shape[0] for i in boxed_ids}
    if len(rows) != 1 or any(shapes[o].shape[:1] != tuple(rows) for o in node.outputs):
        return False
    if node.prim == "call" or name in _ROWWISE:
        return True
    if name == "transpose":
        return p["permutation"][0] == 0
    if name == "broadcast_in_dim":
        return len(p["broadcast_dimensions"]) > 0 and p["broadcast_dimensions"][0] == 0
    if name in ("reduce_sum", "reduce_max", "reduce_min"):
        return 0 not in p["axes"]
    if name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min"):
        return (p["window_dimensions"][0] == 1 and p["window_strides"][0] == 1 and
                tuple(p["padding"][0]) == (0, 0) and p["base_dilation"][0] == 1 and
                p["window_dilation"][0] == 1)
    if name in ("cumsum", "cummax", "cummin"):
        return p["axis"] != 0
    if name == "slice":
        return p["strides"] is None or p["strides"][0] == 1
    if name == "pad":
        return tuple(p["padding_config"][0]) == (0, 0, 0)
    if name == "concatenate":
        return p["dimension"] != 0
    if name in ("stack", "split", "unstack"):
        return p["axis"] != 0
    if name in ("squeeze", "rev"):
        return 0 not in p["dimensions"]
    if name == "dot_general":
        (lc, _), (lb, rb) = p["dimension_numbers"]
        return node.inputs[0] in boxed_ids and not lb and not rb and 0 not in lc and (
            node.inputs[1] not in boxed_ids)
    if name == "conv_general_dilated":
        dn = p["dimension_numbers"]
        return (node.inputs[0] in boxed_ids and node.inputs[1] not in boxed_ids and
                p["batch_group_count"] == 1 and dn.lhs_spec[0] == 0 and dn.out_spec[0] == 0)
    return False


def batch_axis_ok(graph) -> bool:
    """True when every value that depends on the input keeps the examples in blocks of axis 0.

    Invariant: axis 0 of each bounded value has ``B * r`` rows, example b owning
    rows ``[b r, (b + 1) r)`` (so its elements are one contiguous block of the
    flattened value). Row-wise primitives keep it; a reshape keeps it when its
    new axis 0 is a multiple of B (row-major order is unchanged), as in an
    im2col convolution that folds the pixels into the batch.
    """
    batch = graph.shapes[graph.inputs[0]].shape[0]
    bounded = set(graph.inputs)
    for node in graph.nodes:
        boxed_ids = {i for i in node.inputs if i in bounded}
        if not boxed_ids:
            continue
        if node.name == "reshape":
            new = graph.shapes[node.outputs[0]].shape
            if node.params.get("dimensions") is not None or not new or new[0] % batch:
                return False
        elif not _keeps_rows(node, graph.shapes, boxed_ids):
            return False
        bounded.update(node.outputs)
    return graph.outputs[0] in bounded and graph.shapes[graph.outputs[0]].shape[:1] == (batch,)


class Bounder:
    """IBP forward pass over a :class:`Graph`, with backward linear (CROWN) passes on demand.

    ``batched``: values keep the batch on axis 0 (:func:`batch_axis_ok`) and
    bounds are per row; otherwise the graph holds one example (its every axis
    is that example's).
    """

    def __init__(self, graph, method: str, crown_max_neurons: int, *, batched: bool):
        self.g, self.method, self.max_neurons = graph, method, crown_max_neurons
        self.batched = batched
        self.producer = graph.producer()
        self.rows = graph.shapes[graph.inputs[0]].shape[0] if batched else 1

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x, eps, norm, box):
        """Interval bounds of every value over the ball; ``eps`` has one radius per row of x."""
        lo_b, hi_b = box
        e = jnp.reshape(eps, (-1,) + (1,) * (x.ndim - 1))
        xin = Box(jnp.clip(x - e, lo_b, hi_b), jnp.clip(x + e, lo_b, hi_b))
        self.x, self.eps, self.norm, self.xin = x, jnp.reshape(eps, (-1,)), norm, xin
        vals = dict(self.g.consts)
        vals[self.g.inputs[0]] = xin
        self.vals = vals
        for node in self.g.nodes:
            args = [vals[a] for a in node.inputs]
            if self.method == "crown" and relu_like(node) is not None:
                for k, a in enumerate(args):
                    if is_box(a) and jnp.issubdtype(a.lo.dtype, jnp.floating):
                        args[k] = vals[node.inputs[k]] = self._refine(node.inputs[k], a)
            for o, v in zip(node.outputs, ibp_node(node, args)):
                vals[o] = v
        return vals[self.g.outputs[0]]

    def _refine(self, vid, box):
        """CROWN bounds of value ``vid`` intersected with its IBP box (if small enough)."""
        shape = self.g.shapes[vid].shape
        n = math.prod(shape) // self.rows          # neurons per example
        if n > self.max_neurons or self.producer.get(vid) is None:
            return box
        eye = jnp.eye(n, dtype=jnp.float32)
        spec = jnp.broadcast_to(eye[:, None, :], (n, self.rows, n)).reshape((n,) + shape)
        lo, hi = self.backward(vid, spec, relax=True)          # [n, rows]
        lo, hi = (jnp.transpose(v).reshape(shape) for v in (lo, hi))
        return Box(jnp.maximum(box.lo, lo), jnp.minimum(box.hi, hi))

    # -- backward --------------------------------------------------------------------------
    def _dot(self, a, v):
        """<a[s, b], v[b]> per specification row s and example b: [S, rows]."""
        return jnp.sum((a * v).reshape(a.shape[0], self.rows, -1), axis=-1)

    def _concretise(self, la, ua, box):
        return (self._dot(jnp.maximum(la, 0), box.lo) + self._dot(jnp.minimum(la, 0), box.hi),
                self._dot(jnp.maximum(ua, 0), box.hi) + self._dot(jnp.minimum(ua, 0), box.lo))

    def backward(self, start, spec, *, relax: bool, alphas=None, collect=None):
        """Lower and upper bounds [S, rows] of ``<spec[s], value(start)>`` for each row s.

        ``alphas``: ``{node index: (alpha_lower_chain, alpha_upper_chain)}``, the
        lower slopes of unstable ReLUs (alpha-CROWN). ``collect``: a dict that
        receives ``{node index: (crown_lower_slope, min_slope)}`` of every relaxed node.
        """
        S = spec.shape[0]
        lA, uA = {start: spec}, {start: spec}
        lb = jnp.zeros((S, self.rows), jnp.float32)
        ub = jnp.zeros((S, self.rows), jnp.float32)

        def add(d, k, a):
            d[k] = a if k not in d else d[k] + a

        for idx in range(self.producer[start], -1, -1):
            node = self.g.nodes[idx]
            if not any(o in lA for o in node.outputs):
                continue
            las = [lA.pop(o, None) for o in node.outputs]
            uas = [uA.pop(o, None) for o in node.outputs]
            args = [self.vals[a] for a in node.inputs]
            boxed = [k for k, v in enumerate(args) if is_box(v)]
            slope = relu_like(node)
            if node.name in AFFINE and node.prim != "call" and _affine_ok(node, args):
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
                a_l, a_u, b_u, unstable = _relaxation(xin.lo - c, xin.hi - c, slope)
                if collect is not None:
                    collect[idx] = (a_l, slope, unstable)
                al_l = al_u = a_l
                if alphas is not None and idx in alphas:
                    al_l = jnp.where(unstable, alphas[idx][0], a_l)
                    al_u = jnp.where(unstable, alphas[idx][1], a_l)
                # sigma(x) = c + relu_slope(x - c): intercepts in x.
                bl_l, bl_u, b_u = c - al_l * c, c - al_u * c, b_u + c - a_u * c
                la, ua = las[0], uas[0]
                pos_l, neg_l = jnp.maximum(la, 0), jnp.minimum(la, 0)
                pos_u, neg_u = jnp.maximum(ua, 0), jnp.minimum(ua, 0)
                add(lA, node.inputs[k], pos_l * al_l + neg_l * a_u)
                add(uA, node.inputs[k], pos_u * a_u + neg_u * al_u)
                lb = lb + self._dot(pos_l, bl_l) + self._dot(neg_l, b_u)
                ub = ub + self._dot(pos_u, b_u) + self._dot(neg_u, bl_u)
            else:
                for o, la, ua in zip(node.outputs, las, uas):
                    if la is not None:
                        cl, cu = self._concretise(la, ua, self.vals[o])
                        lb, ub = lb + cl, ub + cu
        x_id = self.g.inputs[0]
        if x_id in lA:
            la, ua = lA.pop(x_id), uA.pop(x_id)
            cl, cu = self._concretise(la, ua, self.xin)
            if self.norm != "linf":
                # The ball itself: <a, x0> -/+ eps * ||a||_dual; keep the tighter of the two.
                q = 2 if self.norm == "l2" else jnp.inf
                norm_l = jnp.linalg.norm(la.reshape(S, self.rows, -1), ord=q, axis=-1)
                norm_u = jnp.linalg.norm(ua.reshape(S, self.rows, -1), ord=q, axis=-1)
                cl = jnp.maximum(cl, self._dot(la, self.x) - self.eps * norm_l)
                cu = jnp.minimum(cu, self._dot(ua, self.x) + self.eps * norm_u)
            lb, ub = lb + cl, ub + cu
        return lb, ub

    def alpha_crown(self, start, spec, *, steps: int, lr: float, upper: bool = True):
        """alpha-CROWN bounds [S, rows]: the best of CROWN and ``steps`` projected Adam steps."""
        info = {}
        lb0, ub0 = self.backward(start, spec, relax=True, collect=info)
        if not info or steps == 0:
            return lb0, ub0
        S = spec.shape[0]
        alphas = {i: (jnp.broadcast_to(a, (S,) + a.shape),) * 2 for i, (a, _, _) in info.items()}

        def project(al):
            return {i: tuple(jnp.clip(v, info[i][1], 1.0) for v in pair)
                    for i, pair in al.items()}

        def objective(al):
            lb, ub = self.backward(start, spec, relax=True, alphas=al)
            return -jnp.sum(lb) + (jnp.sum(ub) if upper else 0.0), (lb, ub)

        opt = optax.adam(lr)

        def body(_, carry):
            al, state, best_l, best_u = carry
            (_, (lb, ub)), grads = jax.value_and_grad(objective, has_aux=True)(al)
            updates, state = opt.update(grads, state, al)
            al = project(optax.apply_updates(al, updates))
            return al, state, jnp.maximum(best_l, lb), jnp.minimum(best_u, ub)

        al, _, best_l, best_u = jax.lax.fori_loop(
            0, steps, body, (alphas, opt.init(alphas), lb0, ub0))
        lb, ub = self.backward(start, spec, relax=True, alphas=al)
        return jnp.maximum(best_l, lb), jnp.minimum(best_u, ub)

    def _transpose(self, node, args, boxed, cotangents):
        """Coefficients on the bounded inputs and the bias term [S, rows], for every spec row."""
        def f(*xs):
            full = list(args)
            for k, v in zip(boxed, xs):
                full[k] = v
            outs = node.prim.bind(*full, **node.params)
            return tuple(outs) if node.prim.multiple_results else (outs,)

        S = next(c for c in cotangents if c is not None).shape[0]
        if _conv_fast_ok(node, boxed):
            (c,) = cotangents
            t = layers.conv_transpose(c.reshape((-1,) + c.shape[2:]), args[1],
                                      _conv_cfg(node, args[0].lo.shape))
            return [t.reshape((S,) + args[0].lo.shape)], jnp.zeros((S, self.rows), jnp.float32)
        zeros = [jnp.zeros_like(args[k].lo) for k in boxed]
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
        bias = jnp.zeros((S, self.rows), jnp.float32)
        if affine:
            bias = sum(self._dot(c, o) for c, o in zip(cts, offsets))
        return ins, bias


def _affine_ok(node, args) -> bool:
    """True when ``node`` is affine in its bounded inputs, which are all floats."""
    name = node.name
    boxed = [is_box(v) for v in args]
    if any(is_box(v) and not jnp.issubdtype(v.lo.dtype, jnp.floating) for v in args):
        return False
    if name == "select_n" and boxed[0]:
        return False
    if name in ("mul", "dot_general", "conv_general_dilated") and all(boxed[:2]):
        return False
    if name == "div" and boxed[1]:
        return False
    if name in ("dynamic_slice", "gather") and any(boxed[1:]):
        return False
    return True


# The backward pass's transposed convolutions, on the CPU with a matmul kernel gradient
# (robustjax.models.layers.conv_transpose: JAX's is a convolution that XLA:CPU runs slowly).
_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))   # lhs, rhs, out specs of NHWC x HWIO


def _conv_fast_ok(node, boxed) -> bool:
    if node.name != "conv_general_dilated" or boxed != [0] or jax.default_backend() != "cpu":
        return False
    p = node.params
    dn = p["dimension_numbers"]
    return ((tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _NHWC and
            p["feature_group_count"] == 1 and p["batch_group_count"] == 1 and
            all(d == 1 for d in p["lhs_dilation"]) and all(d == 1 for d in p["rhs_dilation"]) and
            all(lo >= 0 and hi >= 0 for lo, hi in p["padding"]) and
            p.get("preferred_element_type") is None)


def _conv_cfg(node, lhs_shape):
    p = node.params
    return (tuple(p["window_strides"]), tuple(tuple(q) for q in p["padding"]),
            tuple(lhs_shape[1:]))
