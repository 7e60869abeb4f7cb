"""The one walker over a function's jaxpr: which primitives are calls, and their bodies.

Two parts of robustjax read a model as its program: the fast-gradient rewrite
(:mod:`robustjax.models.fastpath`), which re-evaluates the program with some primitives
replaced, and the verifier's graph (:mod:`robustjax.certify.graph`), which flattens it
into nodes. Both must agree on which primitives carry a body and how to open it; this
module is that single list, so that a call primitive JAX adds is taught here once.

Kinds of call primitive (``CALLS``):

* ``"call"``: a plain call whose body is the function (``jit``/``pjit``,
  ``closed_call``, ``core_call``); inlining it changes nothing.
* ``"remat"``: a body under ``jax.checkpoint`` (``checkpoint``, ``remat``,
  ``remat2``); inlining it keeps the values and drops the rematerialisation.
* ``"custom"``: a body with a custom derivative rule (``custom_jvp_call``,
  ``custom_vjp_call``, ``custom_vjp_call_jaxpr``, ``custom_lin``); the body is the
  primal computation, and inlining it drops the rule.
"""

from __future__ import annotations

from typing import Iterator, Optional

from jax.extend import core as jcore

__all__ = ["CALLS", "kind", "body", "eqns"]

CALLS = {
    "jit": "call", "pjit": "call", "closed_call": "call", "core_call": "call",
    "checkpoint": "remat", "remat": "remat", "remat2": "remat",
    "custom_jvp_call": "custom", "custom_vjp_call": "custom",
    "custom_vjp_call_jaxpr": "custom", "custom_lin": "custom",
}
_BODY_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def kind(eqn) -> Optional[str]:
    """``"call"``, ``"remat"`` or ``"custom"`` for a call primitive's equation, else None."""
    return CALLS.get(eqn.primitive.name)


def body(eqn) -> Optional[tuple]:
    """``(jaxpr, consts)`` of a call primitive's body (the primal for custom rules), or None."""
    for key in _BODY_KEYS:
        j = eqn.params.get(key)
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr, tuple(j.consts)
        if isinstance(j, jcore.Jaxpr):
            return j, ()
    return None


def eqns(jaxpr, *, depth: int = 0) -> Iterator[tuple]:
    """Every equation of ``jaxpr`` and of the bodies of its calls, as ``(eqn, depth)``.

    Bodies of call primitives (``CALLS``) are entered; other higher-order primitives
    (``scan``, ``while``, ``cond``) are reported but not entered.
    """
    for eqn in jaxpr.eqns:
        yield eqn, depth
        if kind(eqn) is not None:
            inner = body(eqn)
            if inner is not None:
                yield from eqns(inner[0], depth=depth + 1)
