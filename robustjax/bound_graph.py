"""A JAX function as a flat graph of primitives, and sound interval (IBP) rules for each.

Interval bound propagation (Gowal et al., "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models", 2018, Section 3):
every value that depends on the input is enclosed in a box ``[lo, hi]``, and
each primitive maps boxes to a box that contains all of its outputs.

:func:`trace` turns any ``logits_fn`` into a :class:`Graph` by tracing its
jaxpr and inlining every call (``jit``, ``custom_jvp_call``,
``custom_vjp_call`` by its primal, ``closed_call``, ``remat``), so the models of
:mod:`robustjax.models` (with their custom-VJP convolutions and pooling) and
any Flax model in inference mode are read as plain primitives. Calls of the
activations in :data:`NAMED_CALLS` (``jax.nn.leaky_relu``, ``silu``...) stay
single nodes, so that their exact interval rule (and, in CROWN, their linear
relaxation) applies instead of the looser rules of their parts.

:func:`ibp_node` is the interval rule of one node. The rules:

* monotone primitives (sums, structural ops, max/min and max-pooling in both
  its ``reduce_window`` and reshape-and-max forms, exp, tanh, logistic, the
  named activations...) map the lower and upper ends separately;
* linear ones with a constant factor (``mul``/``div`` by a constant,
  ``dot_general``, ``conv_general_dilated`` with any padding, strides, dilation
  and feature groups) use centre and radius: ``c' = L(c)``, ``r' = |L|(r)``;
* products, quotients and squares of two boxes use their interval arithmetic;
  ``silu`` its exact minimum at x* = -1.2785; comparisons give a three-valued
  predicate (certainly / possibly true) that ``select_n`` turns into a hull.

Values that do not depend on the input (parameters, batch-norm statistics,
normalisation constants) are computed exactly. Bounds are sound in exact
arithmetic; in float32 they hold up to rounding (as in auto_LiRPA and
jax_verify), which the tests allow for with a 1e-5 relative tolerance.
Anything else (control flow, integer ops on bounded values, sorting)
raises :class:`UnsupportedPrimitiveError` naming the primitive.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

__all__ = ["Box", "Node", "Graph", "UnsupportedPrimitiveError", "trace", "ibp_node",
           "is_box", "NAMED_CALLS", "AFFINE", "SILU_ARGMIN"]


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive of the traced function has no bound rule."""


class Box(NamedTuple):
    """Elementwise bounds ``lo <= v <= hi``. For booleans: lo = certainly true, hi = possibly."""

    lo: jax.Array
    hi: jax.Array


def is_box(v) -> bool:
    return isinstance(v, Box)


@dataclasses.dataclass(frozen=True)
class Node:
    """One primitive application: ``outputs = prim(*inputs, **params)`` on value ids."""

    prim: Any                      # a jax Primitive, or "call" for a named activation
    params: dict
    inputs: tuple
    outputs: tuple
    call: Optional[Any] = None     # the ClosedJaxpr of a named call
    name: str = ""                 # the primitive's name, or the call's


@dataclasses.dataclass
class Graph:
    """A function flattened to nodes in topological order; values are integer ids."""

    nodes: list
    inputs: tuple
    outputs: tuple
    consts: dict                   # id -> array (parameters, literals, folded values)
    shapes: dict                   # id -> ShapeDtypeStruct

    def producer(self) -> dict:
        """id -> index of the node that computes it."""
        return {o: i for i, n in enumerate(self.nodes) for o in n.outputs}


# Activations kept as one node: monotone, with an exact interval rule.
NAMED_CALLS = frozenset({"relu", "relu6", "leaky_relu", "elu", "celu", "selu", "softplus",
                         "sigmoid", "hard_tanh", "log_sigmoid", "hard_sigmoid", "soft_sign",
                         "silu"})
_CALL_PRIMS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
               "custom_vjp_call_jaxpr", "remat", "checkpoint", "custom_lin")
SILU_ARGMIN = -1.2784645427610738   # silu'(x*) = 0: silu(x*) = -0.27846454276


def _sub_jaxpr(eqn):
    """``(jaxpr, consts)`` of a call primitive's body (the primal for custom rules)."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr, j.consts
        if isinstance(j, jcore.Jaxpr):
            return j, ()
    raise UnsupportedPrimitiveError(f"certify: call primitive {eqn.primitive.name!r} has no "
                                    f"body to interpret")


def trace(fn, x_shape: jax.ShapeDtypeStruct) -> Graph:
    """The :class:`Graph` of ``fn`` at an input of ``x_shape`` (one array in, one out)."""
    closed = jax.make_jaxpr(fn)(x_shape)
    nodes, consts, shapes = [], {}, {}
    counter = iter(range(1 << 62))

    def new_id(aval) -> int:
        i = next(counter)
        shapes[i] = jax.ShapeDtypeStruct(aval.shape, aval.dtype)
        return i

    def const(value) -> int:
        value = jnp.asarray(value) if not isinstance(value, jax.Array) else value
        i = new_id(value)
        consts[i] = value
        return i

    def run(jaxpr, jconsts, in_ids):
        env = {}
        for v, c in zip(jaxpr.constvars, jconsts):
            env[v] = const(c)
        for v, i in zip(jaxpr.invars, in_ids):
            env[v] = i

        def read(a):
            return const(a.val) if isinstance(a, jcore.Literal) else env[a]

        for eqn in jaxpr.eqns:
            ins = tuple(read(a) for a in eqn.invars)
            name = eqn.primitive.name
            call_name = eqn.params.get("name") if name in ("jit", "pjit") else None
            if call_name in NAMED_CALLS:
                outs = tuple(new_id(v.aval) for v in eqn.outvars)
                nodes.append(Node("call", {}, ins, outs, call=eqn.params["jaxpr"],
                                  name=call_name))
            elif name in _CALL_PRIMS:
                body, bconsts = _sub_jaxpr(eqn)
                outs = tuple(run(body, bconsts, ins))
            else:
                outs = tuple(new_id(v.aval) for v in eqn.outvars)
                nodes.append(Node(eqn.primitive, dict(eqn.params), ins, outs, name=name))
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    in_ids = tuple(new_id(v.aval) for v in closed.jaxpr.invars)
    out_ids = tuple(run(closed.jaxpr, closed.consts, in_ids))
    return Graph(nodes, in_ids, out_ids, consts, shapes)


# ---------------------------------------------------------------------------------------------
# Interval rules.

_INCREASING = frozenset({
    "add", "add_any", "max", "min", "reduce_max", "reduce_min", "reduce_sum",
    "reduce_window_max", "reduce_window_min", "reduce_window_sum", "reshape", "transpose",
    "broadcast_in_dim", "squeeze", "expand_dims", "slice", "dynamic_slice", "gather", "pad",
    "concatenate", "stack", "unstack", "split", "tile", "rev", "copy", "copy_p",
    "convert_element_type", "reduce_precision", "cumsum", "cummax", "cummin", "exp", "exp2",
    "log", "log1p", "expm1", "tanh", "logistic", "erf", "sqrt", "cbrt", "atan", "asinh", "sinh",
    "select_n", "clamp", "optimization_barrier", "sharding_constraint"})
_DECREASING_ARGS = {"sub": (1,), "neg": (0,), "rsqrt": (0,)}
_SCALED = frozenset({"mul", "div", "dot_general", "conv_general_dilated"})
_INDEX_ARGS = {"dynamic_slice": slice(1, None), "gather": slice(1, 2), "select_n": slice(0, 1)}

# Primitives affine in their bounded inputs (given the constant ones): what backward linear
# propagation (CROWN) passes through exactly.
AFFINE = frozenset({
    "add", "add_any", "sub", "neg", "reshape", "transpose", "broadcast_in_dim", "squeeze",
    "expand_dims", "slice", "dynamic_slice", "gather", "pad", "concatenate", "stack", "unstack",
    "split", "tile", "rev", "copy", "copy_p", "convert_element_type", "reduce_sum", "cumsum",
    "select_n", "reduce_window_sum", "mul", "div", "dot_general", "conv_general_dilated",
    "optimization_barrier", "sharding_constraint"})


def _bind(node: Node, args):
    if node.prim == "call":
        return jcore.jaxpr_as_fun(node.call)(*args)
    out = node.prim.bind(*args, **node.params)
    return list(out) if node.prim.multiple_results else [out]


def _unsupported(node: Node, why: str = ""):
    raise UnsupportedPrimitiveError(
        f"certify: no bound rule for primitive {node.name!r} on a bounded input{why}; "
        f"supported: affine and monotone primitives, mul/div, dot_general, "
        f"conv_general_dilated, max-pooling and the activations {sorted(NAMED_CALLS)}")


def _monotone(node: Node, vals, decreasing=()):
    lo_args = [v if not is_box(v) else (v.hi if i in decreasing else v.lo)
               for i, v in enumerate(vals)]
    hi_args = [v if not is_box(v) else (v.lo if i in decreasing else v.hi)
               for i, v in enumerate(vals)]
    return [Box(a, b) for a, b in zip(_bind(node, lo_args), _bind(node, hi_args))]


def _mul_boxes(a: Box, b: Box) -> Box:
    p = (a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi)
    return Box(jnp.minimum(jnp.minimum(p[0], p[1]), jnp.minimum(p[2], p[3])),
               jnp.maximum(jnp.maximum(p[0], p[1]), jnp.maximum(p[2], p[3])))


def _as_box(v) -> Box:
    return v if is_box(v) else Box(v, v)


def _reciprocal(b: Box) -> Box:
    """1 / [lo, hi]; unbounded when the interval contains 0."""
    ok = (b.lo > 0) | (b.hi < 0)
    return Box(jnp.where(ok, 1.0 / b.hi, -jnp.inf), jnp.where(ok, 1.0 / b.lo, jnp.inf))


def _scaled(node: Node, vals):
    """Linear in one bounded operand with constant factors: centre and radius."""
    boxed = [i for i, v in enumerate(vals) if is_box(v)]
    name = node.name
    if name == "mul" and len(boxed) == 2:
        return [_mul_boxes(vals[0], vals[1])]
    if name == "div" and 1 in boxed:
        return [_mul_boxes(_as_box(vals[0]), _reciprocal(vals[1]))]
    if len(boxed) != 1:
        _unsupported(node, " (a product of two bounded operands)")
    (k,) = boxed
    box = vals[k]
    centre, radius = (box.lo + box.hi) / 2, (box.hi - box.lo) / 2
    c_args = [centre if i == k else v for i, v in enumerate(vals)]
    r_args = [radius if i == k else jnp.abs(v) for i, v in enumerate(vals)]
    (c,), (r,) = _bind(node, c_args), _bind(node, r_args)
    return [Box(c - r, c + r)]


def _square(lo, hi):
    straddle = (lo < 0) & (hi > 0)
    a, b = lo * lo, hi * hi
    return Box(jnp.where(straddle, 0.0, jnp.minimum(a, b)), jnp.maximum(a, b))


def _silu(box: Box) -> Box:
    """Exact bounds of x * sigmoid(x): decreasing below x*, increasing above."""
    f = jax.nn.silu
    low = jnp.where(box.hi < SILU_ARGMIN, f(box.hi),
                    jnp.where(box.lo > SILU_ARGMIN, f(box.lo), f(jnp.float32(SILU_ARGMIN))))
    return Box(low, jnp.maximum(f(box.lo), f(box.hi)))


def _compare(node: Node, vals):
    a, b = _as_box(vals[0]), _as_box(vals[1])
    name = node.name
    if name in ("lt", "le"):
        a, b = b, a
        name = "gt" if name == "lt" else "ge"
    op = jnp.greater if name == "gt" else jnp.greater_equal
    return [Box(op(a.lo, b.hi), op(a.hi, b.lo))]


def _select(node: Node, vals):
    pred, cases = vals[0], [_as_box(v) for v in vals[1:]]
    if len(cases) != 2:
        _unsupported(node, " (a bounded predicate choosing among more than two cases)")
    sure, maybe = pred.lo, pred.hi      # certainly true, possibly true
    lo = jnp.where(sure, cases[1].lo, jnp.where(maybe, jnp.minimum(cases[0].lo, cases[1].lo),
                                                cases[0].lo))
    hi = jnp.where(sure, cases[1].hi, jnp.where(maybe, jnp.maximum(cases[0].hi, cases[1].hi),
                                                cases[0].hi))
    return [Box(lo, hi)]


def ibp_node(node: Node, vals) -> list:
    """Output values of ``node``: exact arrays when no input is bounded, else :class:`Box` es."""
    if not any(is_box(v) for v in vals):
        return _bind(node, vals)
    name = node.name
    index = _INDEX_ARGS.get(name)
    if index is not None and any(is_box(v) for v in vals[index]):
        if name == "select_n" and vals[0].lo.dtype == jnp.bool_:
            return _select(node, vals)
        _unsupported(node, " (a bounded index or predicate)")
    if name == "convert_element_type" and not jnp.issubdtype(node.params["new_dtype"],
                                                             jnp.floating):
        _unsupported(node, " (conversion to a non-float type)")
    if node.prim == "call":
        if any(is_box(v) for v in vals[1:]):
            _unsupported(node, " (a bounded activation parameter)")
        return [_silu(vals[0])] if name == "silu" else _monotone(node, vals)
    if name in _INCREASING:
        return _monotone(node, vals)
    if name in _DECREASING_ARGS:
        return _monotone(node, vals, decreasing=_DECREASING_ARGS[name])
    if name in _SCALED:
        return _scaled(node, vals)
    if name in ("ge", "gt", "le", "lt"):
        return _compare(node, vals)
    if name == "square":
        return [_square(vals[0].lo, vals[0].hi)]
    if name == "integer_pow":
        n, b = node.params["y"], vals[0]
        if n % 2 and n > 0:
            return [Box(b.lo ** n, b.hi ** n)]
        if n > 0:
            sq = _square(b.lo, b.hi)
            return [Box(sq.lo ** (n // 2), sq.hi ** (n // 2))]
        _unsupported(node, " (a negative power)")
    if name == "abs":
        b = vals[0]
        return [Box(jnp.maximum(jnp.maximum(b.lo, -b.hi), 0.0),
                    jnp.maximum(jnp.abs(b.lo), jnp.abs(b.hi)))]
    _unsupported(node)
