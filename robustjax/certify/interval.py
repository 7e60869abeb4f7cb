"""Sound interval (IBP) rules for the primitives of a :class:`robustjax.certify.graph.Graph`.

Interval bound propagation (Gowal et al., "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models", 2018, Section 3):
:func:`ibp_node` maps the boxes of a node's inputs to a box that contains all of
its outputs. Monotone primitives map the ends; linear ones with a constant
factor use centre and radius; products, quotients and squares use interval
arithmetic; comparisons give three-valued predicates (certainly / possibly
true) that ``select_n`` turns into a hull, and bool -> float conversions are
exact. NaN in an output interval is widened to (-inf, inf) ("unknown"). Any
other primitive on a bounded value raises
:class:`robustjax.certify.graph.UnsupportedPrimitiveError` naming it and its
parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from robustjax.certify.graph import (NAMED_CALLS, SILU_ARGMIN, Box, Node,
                                     UnsupportedPrimitiveError, is_box)

__all__ = ["ibp_node", "AFFINE"]

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
    if node.prim == "call":     # verified at trace time to be the library's own function
        return [getattr(jax.nn, node.name)(*args)]
    out = node.prim.bind(*args, **node.params)
    return list(out) if node.prim.multiple_results else [out]


def _describe_params(params: dict) -> str:
    shown = {k: v for k, v in params.items()
             if not isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr)) and not callable(v)}
    text = ", ".join(f"{k}={v!r}" for k, v in shown.items())
    return text if len(text) <= 300 else text[:297] + "..."


def _unsupported(node: Node, why: str = ""):
    raise UnsupportedPrimitiveError(
        f"certify: no sound bound rule for primitive {node.name!r} "
        f"({_describe_params(node.params) or 'no parameters'}) on a bounded input{why}; "
        f"supported: affine and monotone primitives on floats, mul/div, dot_general, "
        f"conv_general_dilated, max-pooling, comparisons feeding select_n, bool -> float "
        f"conversions, and the jax.nn activations {sorted(NAMED_CALLS)}")


def _unknown_as_unbounded(v):
    """NaN in an interval means unknown: (-inf, inf), never a value comparisons read as false."""
    if not is_box(v) or not jnp.issubdtype(v.lo.dtype, jnp.floating):
        return v
    return Box(jnp.where(jnp.isnan(v.lo), -jnp.inf, v.lo),
               jnp.where(jnp.isnan(v.hi), jnp.inf, v.hi))


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
    unknown = jnp.isnan(a.lo) | jnp.isnan(a.hi) | jnp.isnan(b.lo) | jnp.isnan(b.hi)
    return [Box(op(a.lo, b.hi) & ~unknown, op(a.hi, b.lo) | unknown)]


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
    """Output values of ``node``: exact arrays when no input is bounded, else :class:`Box` es.

    NaN in an output interval is widened to (-inf, inf) ("unknown").
    """
    if not any(is_box(v) for v in vals):
        return _bind(node, vals)
    return [_unknown_as_unbounded(v) for v in _ibp_rule(node, vals)]


def _ibp_rule(node: Node, vals) -> list:
    name = node.name
    boxed_types = {v.lo.dtype for v in vals if is_box(v)}
    if any(not (jnp.issubdtype(t, jnp.floating) or t == jnp.bool_) for t in boxed_types):
        _unsupported(node, " (a bounded integer value)")
    if jnp.bool_ in boxed_types:
        return _bool_rule(node, vals)
    index = _INDEX_ARGS.get(name)
    if index is not None and any(is_box(v) for v in vals[index]):
        if name == "select_n" and vals[0].lo.dtype == jnp.bool_:
            return _select(node, vals)
        _unsupported(node, " (a bounded index or predicate)")
    if name == "convert_element_type" and not jnp.issubdtype(node.params["new_dtype"],
                                                             jnp.floating):
        _unsupported(node, " (a conversion of a bounded value to a non-float type)")
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


def _bool_rule(node: Node, vals) -> list:
    """Three-valued logic on (certainly true, possibly true) pairs; bool -> float is exact."""
    name = node.name
    if name == "select_n":
        return _select(node, vals) if is_box(vals[0]) else _monotone(node, vals)
    if name in ("and", "or") and all(v.dtype == jnp.bool_ for v in vals if not is_box(v)):
        return _monotone(node, vals)
    if name == "not":
        return _monotone(node, vals, decreasing=(0,))
    if (name == "convert_element_type" and
            jnp.issubdtype(node.params["new_dtype"], jnp.floating)):
        return _monotone(node, vals)
    _unsupported(node, " (a bounded boolean, from a comparison)")
