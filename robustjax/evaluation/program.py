"""What in a model's program can hide its gradients: a static scan of its jaxpr.

Athalye, Carlini & Wagner ("Obfuscated Gradients Give a False Sense of Security",
ICML 2018, Section 3) name the three ways a defence defeats gradient attacks without
being robust: shattered gradients (non-differentiable or zero-gradient operations),
stochastic gradients (randomness) and vanishing or exploding gradients (deep or
iterative computation). Tramer, Carlini, Brendel & Madry ("On Adaptive Attacks to
Adversarial Example Defenses", NeurIPS 2020) make finding them the first step of every
evaluation. In JAX the whole model is a program that can be read before it is attacked:
:func:`scan` traces ``logits_fn`` and follows the data flow from the input to the logits.

Each value carries whether it depends on the input, and which *sites* (operations that
cut the gradient, or draw random numbers) influence it. A site is reported only if it
reaches the logits:

* zero-gradient operations on the input: ``round``, ``floor``, ``ceil``, ``sign``,
  ``stop_gradient``, ``argmax``/``argmin``, comparisons, casts to integer or bool types;
* a ``select_n`` or ``cond`` chosen by the input whose branches do not depend on it (a
  step function). A comparison that only chooses between branches that do depend on
  the input is a piecewise definition (leaky ReLU, clipping) and is not reported;
* random-number primitives (the model is randomised). Values used only to make keys
  (an input-seeded draw) are not gradient cuts;
* custom derivative rules (``custom_jvp``/``custom_vjp``) defined outside JAX and
  robustjax's own layers: the attacks follow the rule, not the forward pass. If the
  rule's body has a cut of its own, the rule is a straight-through estimator (BPDA);
  otherwise :mod:`robustjax.evaluation.probes` compares the rule's gradient with the
  body's;
* ``sort``/``top_k`` of the input (differentiable, but piecewise);

and, wherever they sit on the input's path: ``while`` loops whose stopping test depends
on the input (iterative defences), and differentiation inside the forward pass (a
"dynamic" defence: the case the official AutoAttack's ``check_dynamic`` looks for).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from robustjax.runtime import jaxprs

__all__ = ["Finding", "MEANINGS", "Scan", "scan", "scan_jaxpr"]

_ZERO_GRAD = {"round", "floor", "ceil", "sign"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge", "is_finite"}
_INDEX = {"argmax", "argmin"}
_RNG_DRAW = {"random_bits", "threefry2x32", "rng_bit_generator", "rng_uniform"}
_RNG_KEY = {"random_seed", "random_fold_in", "random_split", "random_wrap", "random_unwrap",
            "random_clone"}
_SORT = {"sort", "top_k", "approx_top_k"}
_TRUSTED_RULES = ("/jax/_src/", "/jax/nn/", "/flax/", "/robustjax/models/", "/optax/")

MEANINGS = {
    "zero-gradient": "piecewise constant: its gradient is zero almost everywhere, so gradient "
                     "attacks get no signal through it (shattered gradients); attack through "
                     "robustjax.bpda (identity backward) or a differentiable approximation",
    "stop-gradient": "cuts the gradient on purpose: attacks only see the other paths; attack "
                     "through robustjax.bpda over it",
    "comparison": "a threshold of the input used as a value: a step function, zero gradient",
    "step": "a branch chosen by a threshold of the input between values that do not depend "
            "on it: a step function, zero gradient",
    "integer-cast": "a cast of the input to an integer or bool type: the gradient stops here",
    "index": "argmax/argmin of the input used downstream: no gradient flows through it",
    "custom-rule": "a custom derivative rule: the attacks follow the rule, not the forward "
                   "pass; check that the rule is the forward pass's gradient",
    "straight-through": "a custom derivative rule over a non-differentiable forward pass "
                        "(straight-through / BPDA): attacks see an approximate gradient",
    "random": "draws random numbers: the model is randomised; attack the expectation "
              "(robustjax.eot, AutoAttack version='rand') and evaluate with fresh draws",
    "loop": "a while-loop whose stopping test depends on the input (an iterative defence): "
            "gradients through it can vanish or explode; attack with BPDA or fewer iterations",
    "dynamic": "the forward pass differentiates (a jvp/vjp inside it): a test-time "
               "optimisation defence; AutoAttack alone may be insufficient (official "
               "check_dynamic)",
    "sort": "sort/top_k of the input: differentiable but piecewise, gradients switch abruptly",
}
_NOTES = ("sort",)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One kind of gradient-hiding construct at one place of the program.

    kind: a key of :data:`MEANINGS`. primitive: the JAX primitive (or the custom rule's
    function). where: the source line JAX recorded ("" if none). count: how many
    equations of the program it covers. severity: "warning" or "note".
    """
    kind: str
    primitive: str
    where: str
    count: int
    severity: str
    meaning: str

    def line(self) -> str:
        at = f" at {self.where}" if self.where else ""
        n = f" (x{self.count})" if self.count > 1 else ""
        return f"{self.primitive}{at}{n}: {self.meaning}"


@dataclasses.dataclass
class Scan:
    """The result of :func:`scan`: the findings, and the custom rules to check numerically.

    custom_rules: ``{source: [equations]}`` of custom-derivative calls on the input's
    path with no cut inside their body (checked by :mod:`robustjax.evaluation.probes`).
    closed: the traced program.
    """
    findings: list
    custom_rules: dict
    closed: object


class _Walker:
    def __init__(self):
        self.sites = []      # (kind, primitive, where)
        self.always = set()  # sites reported wherever they sit on the input's path
        self.custom = {}     # source -> [eqn]
        self.record = True

    def site(self, kind: str, primitive: str, where: str) -> int:
        self.sites.append((kind, primitive, where))
        return len(self.sites) - 1

    def dynamic(self, where: str) -> None:
        """One "dynamic" site for the whole program, at the first place it differentiates."""
        if not any(self.sites[s][0] == "dynamic" for s in self.always):
            self.always.add(self.site("dynamic", "jvp/vjp in the forward pass", where))

    def rng_only(self, origins):
        return frozenset(o for o in origins if self.sites[o][0] == "random")

    def run(self, jaxpr, taint: Sequence[bool], origins: Sequence[frozenset], where: str = ""):
        env = {}
        for v, t, o in zip(jaxpr.invars, taint, origins):
            env[v] = (t, o)

        def read(v):
            return env.get(v, (False, frozenset())) if not _is_literal(v) else (
                False, frozenset())

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins, where)
            for v, to in zip(eqn.outvars, outs):
                env[v] = to
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins, outer_where: str):
        name = eqn.primitive.name
        t = any(i[0] for i in ins)
        o = frozenset().union(*(i[1] for i in ins)) if ins else frozenset()
        n_out = len(eqn.outvars)
        own = jaxprs.source(eqn)
        where = own or outer_where  # inside a library's jitted function: the caller's line
        if t and self.record and "jvp(" in str(getattr(eqn.source_info, "name_stack", "")):
            self.dynamic(where)
        k = jaxprs.kind(eqn)
        if k in ("call", "remat"):
            inner = jaxprs.body(eqn)
            if inner is not None:
                return self.run(inner[0], [i[0] for i in ins], [i[1] for i in ins], where)
        if name == "stop_gradient" and (not own or _library_call(eqn)):
            return [(t, o)] * n_out  # a library's own (softmax's shift): value-preserving
        if k == "custom":
            return self.custom_call(eqn, ins, t, o, where)
        if name in _RNG_DRAW:
            return [(t, self.rng_only(o) | {self.site("random", name, where)})] * n_out
        if name in _RNG_KEY:
            return [(t, self.rng_only(o))] * n_out
        if name == "select_n":
            (pt, po), cases = ins[0], ins[1:]
            out = self.rng_only(po).union(*(c[1] for c in cases))
            if pt and not any(c[0] for c in cases):
                out = out | {self.site("step", "select_n", where)}
            return [(t, out)]
        if name in ("while", "scan", "cond") or _sub_jaxprs(eqn):
            return self.higher_order(eqn, ins, t, o, where)
        cut = self.cut_kind(eqn, ins)
        if cut is not None:
            o = o | {self.site(cut, name, where)}
        return [(t, o)] * n_out

    def cut_kind(self, eqn, ins) -> Optional[str]:
        name = eqn.primitive.name
        float_in = any(t and _inexact(v) for v, (t, _) in zip(eqn.invars, ins))
        if not float_in:
            return None
        if name in _ZERO_GRAD:
            return "zero-gradient"
        if name == "stop_gradient":
            return "stop-gradient"
        if name in _COMPARE:
            return "comparison"
        if name in _INDEX:
            return "index"
        if name in _SORT:
            return "sort"
        if name in ("convert_element_type", "bitcast_convert_type") and not all(
                _inexact(v) for v in eqn.outvars):
            return "integer-cast"
        return None

    def custom_call(self, eqn, ins, t, o, where):
        inner = jaxprs.body(eqn)
        rule, src = _rule_info(eqn)
        src = src or where
        if inner is None:
            return [(t, o)] * len(eqn.outvars)
        before = len(self.sites)
        outs = self.run(inner[0], [i[0] for i in ins], [i[1] for i in ins], where)
        if not t or any(s in src for s in _TRUSTED_RULES):
            return outs
        # Only what reaches the rule's outputs (a comparison that picks a branch does not).
        reached = [s for s in frozenset().union(*(oo for _, oo in outs)) if s >= before]
        created = [s for s in reached if self.sites[s][0] != "random"]
        rng = frozenset(s for s in reached if self.sites[s][0] == "random")
        if created:
            extra = {self.site("straight-through", rule, src)}
        else:
            extra = {self.site("custom-rule", rule, src)}
            self.custom.setdefault(src, []).append(eqn)
        return [(ot, o | rng | extra) for ot, _ in outs]

    def higher_order(self, eqn, ins, t, o, where):
        """Loops and branches: every body scanned with the inputs' taint (carries to a
        fixed point); outputs depend on every input and on what the bodies cut."""
        name = eqn.primitive.name
        before = len(self.sites)
        taint = [i[0] for i in ins]
        if name == "while":
            nc, nb = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
            body, cond = eqn.params["body_jaxpr"].jaxpr, eqn.params["cond_jaxpr"].jaxpr
            carry = self.fixed_point(body, taint[nc:nc + nb], taint[nc + nb:])
            self.run(body, taint[nc:nc + nb] + carry, [frozenset()] * len(body.invars), where)
            n = len(self.sites)
            stop = self.run(cond, taint[:nc] + carry, [frozenset()] * len(cond.invars), where)
            del self.sites[n:]  # the stopping test's comparisons choose, they are not values
            if any(s[0] for s in stop) and self.record:
                self.always.add(self.site("loop", "while", where))
        elif name == "scan":
            body = eqn.params["jaxpr"].jaxpr
            nc, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
            xs = taint[nc + ncarry:]
            carry = self.fixed_point(body, taint[:nc], taint[nc:nc + ncarry], xs)
            self.run(body, taint[:nc] + carry + xs, [frozenset()] * len(body.invars), where)
        elif name == "cond":
            o = self.rng_only(ins[0][1]).union(*(i[1] for i in ins[1:]))
            outs = [self.run(br.jaxpr, taint[1:], [frozenset()] * len(br.jaxpr.invars), where)
                    for br in eqn.params["branches"]]
            if taint[0] and not any(t_ for out in outs for t_, _ in out):
                o = o | {self.site("step", "cond", where)}
        else:
            for sub in _sub_jaxprs(eqn):
                self.run(sub, [t] * len(sub.invars), [frozenset()] * len(sub.invars), where)
        created = frozenset(range(before, len(self.sites))) - self.always
        return [(t, o | created)] * len(eqn.outvars)

    def fixed_point(self, body, consts, carry, xs=()):
        """The carries' taint after any number of iterations (recording nothing)."""
        carry, record = list(carry), self.record
        self.record = False
        try:
            for _ in range(len(carry) + 1):
                n = len(self.sites)
                outs = self.run(body, list(consts) + carry + list(xs),
                                [frozenset()] * len(body.invars))
                del self.sites[n:]
                new = [c or out[0] for c, out in zip(carry, outs[:len(carry)])]
                if new == carry:
                    break
                carry = new
        finally:
            self.record = record
        return carry


def _is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def _inexact(v) -> bool:
    aval = getattr(v, "aval", None)
    dtype = getattr(aval, "dtype", None)
    try:
        return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)
    except TypeError:  # key types
        return False


_LIBRARIES = ("/jax/", "/jaxlib/", "/flax/", "/optax/", "/haiku/", "/equinox/")


def _library_call(eqn) -> bool:
    """Whether ``lax.stop_gradient`` was called from inside a library (``jax.nn.softmax``,
    ``logsumexp``: the max-shift that keeps them stable and leaves their values unchanged)
    rather than from the user's code."""
    tb = getattr(eqn.source_info, "traceback", None)
    frames = list(getattr(tb, "frames", None) or [])
    for i, fr in enumerate(frames[:-1]):
        if fr.function_name == "stop_gradient" and fr.file_name.endswith("lax/lax.py"):
            caller = frames[i + 1].file_name.replace("\\", "/")
            return any(lib in caller for lib in _LIBRARIES)
    return False


def _sub_jaxprs(eqn) -> list:
    out = []
    for p in eqn.params.values():
        for j in (p if isinstance(p, (tuple, list)) else (p,)):
            inner = getattr(j, "jaxpr", j)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                out.append(inner)
    return out


def _rule_info(eqn) -> tuple[str, str]:
    """``(name, file:line)`` of a custom rule's function, from its body's debug info."""
    body = eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
    info = getattr(getattr(body, "jaxpr", body), "debug_info", None)
    fn, _, src = (getattr(info, "func_src_info", None) or "").partition(" at ")
    return f"{eqn.primitive.name}({fn or '?'})", src


def scan_jaxpr(closed, inputs: Sequence[bool]) -> Scan:
    """:func:`scan` of an already traced program; ``inputs[i]``: whether argument ``i`` of
    the program is the evaluated input (the others, parameters or keys, are not)."""
    jaxpr = closed.jaxpr
    if len(inputs) != len(jaxpr.invars):
        raise ValueError(f"inputs must flag each of the program's {len(jaxpr.invars)} "
                         f"arguments, got {len(inputs)}")
    w = _Walker()
    outs = w.run(jaxpr, list(inputs), [frozenset()] * len(inputs))
    reached = frozenset().union(*(o for _, o in outs)) | w.always
    groups = {}
    for s in sorted(reached):
        groups[w.sites[s]] = groups.get(w.sites[s], 0) + 1
    findings = [Finding(kind, prim, where, count, "note" if kind in _NOTES else "warning",
                        MEANINGS[kind]) for (kind, prim, where), count in groups.items()]
    custom = {src: eqns for src, eqns in w.custom.items()
              if any(k == "custom-rule" and wh == src for k, _, wh in groups)}
    return Scan(findings=findings, custom_rules=custom, closed=closed)


def scan(logits_fn: Callable, x, *args) -> Scan:
    """The static scan of ``logits_fn(x, *args)`` (``args``: a key for a randomised model);
    ``x`` may be an array or a ``jax.ShapeDtypeStruct``. Custom rules found here are checked
    numerically by :func:`robustjax.evaluation.probes.check_rules`, which drops those whose
    gradient is the forward pass's."""
    specs = [jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in (x, *args)]
    closed = jax.make_jaxpr(logits_fn)(*specs)
    flags = [True] + [False] * (len(closed.jaxpr.invars) - 1)
    return scan_jaxpr(closed, flags)
