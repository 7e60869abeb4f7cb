"""The one walker over a function's jaxpr: which primitives are calls, and their bodies.

Parts of robustjax read a model as its program: the fast-gradient rewrite
(:mod:`robustjax.models.fastpath`), which re-evaluates the program with some primitives
replaced, and the verifier's graph (:mod:`robustjax.certify.graph`), which flattens it
into nodes. Both must agree on which primitives carry a body and how to open it; this
module is that single list, so that a call primitive JAX adds is taught here once.

A third reads it to find what hides gradients (:mod:`robustjax.evaluation.program`);
:func:`evaluate` is the interpreter the rewrites share, :func:`source` the user's line.

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

from typing import Callable, Iterator, Optional

from jax.extend import core as jcore

__all__ = ["CALLS", "kind", "body", "eqns", "bind", "evaluate", "source"]

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


def bind(eqn, invals):
    """The equation evaluated as it is (what ``jax.core.eval_jaxpr`` does for one equation)."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        return eqn.primitive.bind(*subfuns, *invals, **params)
    return eqn.primitive.bind(*invals, **params)


def evaluate(jaxpr, consts, args, rule: Optional[Callable] = None) -> list:
    """``jaxpr`` evaluated on ``args``, each equation by ``rule(eqn, invals)`` where that
    returns a value (the outputs, a list for multiple-result primitives), else as it is.

    ``rule`` opens call bodies itself (by calling :func:`evaluate` on :func:`body`) when
    it wants to rewrite inside them.
    """
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts):
        env[v] = val
    for v, val in zip(jaxpr.invars, args):
        env[v] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        out = rule(eqn, invals) if rule is not None else None
        if out is None:
            out = bind(eqn, invals)
        if eqn.primitive.multiple_results:
            for v, val in zip(eqn.outvars, out):
                env[v] = val
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def source(eqn) -> str:
    """Where the equation was written (``file:line (function)``, as JAX records it), or ""."""
    try:
        from jax._src import source_info_util  # private: the summary JAX prints in errors
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 -- a JAX without it: no location
        return ""
