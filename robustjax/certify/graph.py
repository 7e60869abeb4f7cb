"""A JAX function as a flat graph of primitives, and sound interval (IBP) rules for each.

Interval bound propagation (Gowal et al., "On the Effectiveness of Interval
Bound Propagation for Training Verifiably Robust Models", 2018, Section 3):
every value that depends on the input is enclosed in a box ``[lo, hi]``, and
each primitive maps boxes to a box that contains all of its outputs.

:func:`trace` turns any ``logits_fn`` into a :class:`Graph` by tracing its
jaxpr and inlining every call the shared walker names
(:data:`robustjax.runtime.jaxprs.CALLS`: ``jit``, ``closed_call``, ``remat``,
``custom_jvp_call`` / ``custom_vjp_call`` by their primal), so the models of
:mod:`robustjax.models.paper` (with their custom-VJP convolutions and pooling) and
any Flax model in inference mode are read as plain primitives. Calls of the
activations in :data:`NAMED_CALLS` (``jax.nn.leaky_relu``, ``silu``...) stay
single nodes, so that their exact interval rule (and, in CROWN, their linear
relaxation) applies instead of the looser rules of their parts.

:func:`robustjax.certify.interval.ibp_node` is the interval rule of one node. The
rules:

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
normalisation constants) are computed exactly.

**Sound or refused, never silently wrong.** A named call is kept as one node
only when its body is, primitive for primitive, the body of the library's own
``jax.nn`` function of that name, and its parameters lie where the rule is
proven (leaky ReLU slope in [0, 1], elu alpha >= 0, celu alpha > 0); anything
else named ``relu`` (a user's own jitted function, a traced slope) is bounded
through its body. NaN in an interval means "unknown": it is widened to
(-inf, inf) after every node, and comparisons treat it as possibly true and
possibly false. Every ``dot_general`` and convolution runs at
``precision=HIGHEST`` (no TF32 or bfloat16 passes on GPUs and TPUs); a model
that computes in bfloat16 or float16 is refused unless ``trace(...,
upcast=True)``, which bounds its float32 upcast. Bounds are sound in exact
arithmetic; in float32 they hold up to rounding (as in auto_LiRPA and
jax_verify), which :func:`robustjax.certify.verifier.certified` covers with a relative
margin. Anything else (control flow, integer ops on bounded values, sorting)
raises :class:`UnsupportedPrimitiveError` naming the primitive, its
parameters and what is supported.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from robustjax.runtime import jaxprs

__all__ = ["Box", "Node", "Graph", "UnsupportedPrimitiveError", "trace", "is_box",
           "NAMED_CALLS", "SILU_ARGMIN"]


class UnsupportedPrimitiveError(ValueError, NotImplementedError):
    """A primitive (or named call) of the traced function has no sound bound rule here."""


class Box(NamedTuple):
    """Elementwise bounds ``lo <= v <= hi``. For booleans: lo = certainly true, hi = possibly."""

    lo: jax.Array
    hi: jax.Array


def is_box(v) -> bool:
    """True for an interval :class:`Box` (not a constant)."""
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
SILU_ARGMIN = -1.2784645427610738   # silu'(x*) = 0: silu(x*) = -0.27846454276


def _sub_jaxpr(eqn):
    """``(jaxpr, consts)`` of a call primitive's body (the primal for custom rules)."""
    found = jaxprs.body(eqn)
    if found is not None:
        return found
    raise UnsupportedPrimitiveError(f"certify: call primitive {eqn.primitive.name!r} has no "
                                    f"body to interpret")


# The parameter range in which each named activation is monotone (and, for the ReLU-like
# ones, in which CROWN's relaxation holds): name -> check of its extra arguments.
_PARAM_RANGES = {
    "leaky_relu": ("negative_slope in [0, 1]", lambda a: bool(np.all((a >= 0) & (a <= 1)))),
    "elu": ("alpha >= 0", lambda a: bool(np.all(a >= 0))),
    "celu": ("alpha > 0", lambda a: bool(np.all(a > 0))),
}
_LOW_PRECISION = frozenset({"bfloat16", "float16", "float8_e4m3fn", "float8_e5m2",
                            "float8_e4m3b11fnuz", "float8_e4m3fnuz", "float8_e5m2fnuz"})
_DTYPE_PARAMS = ("new_dtype", "preferred_element_type", "dtype")


@functools.lru_cache(maxsize=256)
def _library_body(name: str, avals: tuple) -> Optional[str]:
    """The printed body of ``jax.nn.<name>`` at these argument avals (None if it has none)."""
    fn = getattr(jax.nn, name, None)
    if fn is None:
        return None
    args = [jax.ShapeDtypeStruct(s, d, weak_type=w) for s, d, w in avals]
    try:
        closed = jax.make_jaxpr(fn)(*args)
    except Exception:  # noqa: BLE001 - a signature that does not fit: not the library's call
        return None

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("jit", "pjit") and eqn.params.get("name") == name:
                return str(eqn.params["jaxpr"])
            if jaxprs.kind(eqn) is not None:
                found = find(_sub_jaxpr(eqn)[0])
                if found is not None:
                    return found
        return None
    return find(closed.jaxpr)


def _named_call_ok(name: str, eqn, ins, consts) -> bool:
    """True when ``eqn`` is the library's own ``jax.nn.<name>`` with parameters in range."""
    avals = tuple((tuple(v.aval.shape), np.dtype(v.aval.dtype), bool(v.aval.weak_type))
                  for v in eqn.invars)
    if _library_body(name, avals) != str(eqn.params["jaxpr"]):
        return False
    extra = ins[1:]
    if not extra:
        return True
    if name not in _PARAM_RANGES:
        return False
    try:
        vals = [np.asarray(consts[i]) for i in extra]
    except (KeyError, TypeError, jax.errors.ConcretizationTypeError,
            jax.errors.TracerArrayConversionError):
        return False       # a parameter computed or traced: bound the body instead
    return all(_PARAM_RANGES[name][1](v) for v in vals)


def _low(dtype) -> bool:
    return np.dtype(dtype).name in _LOW_PRECISION


def _node_params(name: str, params: dict, upcast: bool) -> dict:
    """The node's parameters, with float32 HIGHEST precision for every dot and convolution."""
    params = dict(params)
    if name in ("dot_general", "conv_general_dilated"):
        params["precision"] = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
    if upcast:
        for k in _DTYPE_PARAMS:
            if params.get(k) is not None and _low(params[k]):
                params[k] = np.dtype(np.float32)
    return params


def trace(fn, x_shape: jax.ShapeDtypeStruct, *, upcast: bool = False) -> Graph:
    """The :class:`Graph` of ``fn`` at an input of ``x_shape`` (one array in, one out).

    A function that computes in bfloat16 / float16 raises ``ValueError`` unless
    ``upcast``, which bounds the same program with every value in float32.
    """
    closed = jax.make_jaxpr(fn)(x_shape)
    nodes, consts, shapes = [], {}, {}
    counter = iter(range(1 << 62))
    low = []

    def new_id(aval) -> int:
        i = next(counter)
        dtype = aval.dtype
        if jnp.issubdtype(dtype, jnp.floating) and _low(dtype):
            low.append(np.dtype(dtype).name)
            dtype = np.float32 if upcast else dtype
        shapes[i] = jax.ShapeDtypeStruct(aval.shape, dtype)
        return i

    def const(value) -> int:
        value = jnp.asarray(value) if not isinstance(value, jax.Array) else value
        i = new_id(value)
        if upcast and jnp.issubdtype(value.dtype, jnp.floating) and _low(value.dtype):
            value = value.astype(jnp.float32)
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
            if call_name in NAMED_CALLS and _named_call_ok(call_name, eqn, ins, consts):
                outs = tuple(new_id(v.aval) for v in eqn.outvars)
                nodes.append(Node("call", {}, ins, outs, call=eqn.params["jaxpr"],
                                  name=call_name))
            elif jaxprs.kind(eqn) is not None:
                body, bconsts = _sub_jaxpr(eqn)
                outs = tuple(run(body, bconsts, ins))
            else:
                outs = tuple(new_id(v.aval) for v in eqn.outvars)
                nodes.append(Node(eqn.primitive, _node_params(name, eqn.params, upcast), ins,
                                  outs, name=name))
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    in_ids = tuple(new_id(v.aval) for v in closed.jaxpr.invars)
    out_ids = tuple(run(closed.jaxpr, closed.consts, in_ids))
    if low and not upcast:
        raise ValueError(
            f"certify: the model computes in {sorted(set(low))[0]}; bounds are computed in "
            f"float32 only. Pass upcast=True to bound its float32 upcast (the same program "
            f"with every value in float32), or evaluate a float32 copy of the model")
    return Graph(nodes, in_ids, out_ids, consts, shapes)
