"""``robustjax.inspect``: everything that can hide a model's gradients, before it is attacked.

The first step of an adaptive evaluation (Tramer, Carlini, Brendel & Madry, "On
Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020, Section 4; Athalye,
Carlini & Wagner, ICML 2018, Section 3): read the defence, find what obfuscates its
gradients, then attack it through BPDA and EOT where needed. :func:`inspect` combines
the static scan of the model's program (:mod:`robustjax.evaluation.program`: shattered,
stochastic and custom gradients, loops, differentiation inside the forward pass) with
the numeric probes (:mod:`robustjax.evaluation.probes`: zero, NaN and exploding
gradients, output spread, gradients that do not point up the loss) and checks every
custom derivative rule against its forward pass. :func:`robustjax.autoattack` runs it
first and reports its warnings with the official code's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import numpy as np

from robustjax import _checks
from robustjax.evaluation import probes as _probes
from robustjax.evaluation import program as _program
from robustjax.evaluation.program import Finding

__all__ = ["Finding", "Inspection", "inspect", "ZERO_GRADIENT_WARNING"]

ZERO_GRADIENT_WARNING = ("there are {k} of {n} points with zero gradient (official "
                         "check_zero_gradients): gradient attacks get no signal there; "
                         "attack through robustjax.bpda or use Square")


@dataclasses.dataclass
class Inspection:
    """What :func:`inspect` found: ``findings`` (static, :class:`Finding`) and ``probes``
    (numbers, :func:`robustjax.evaluation.probes.probe`; empty when not run), plus
    ``rules`` (``{custom rule source: cosine}`` of the rule checks)."""
    findings: list
    probes: dict
    rules: dict

    @property
    def randomized(self) -> bool:
        """The program draws random numbers that reach the logits."""
        return any(f.kind == "random" for f in self.findings)

    @property
    def shattered(self) -> bool:
        """A zero-gradient, cut or step construct reaches the logits (BPDA's case)."""
        return any(f.kind in ("zero-gradient", "stop-gradient", "comparison", "step",
                              "integer-cast", "index") for f in self.findings)

    def warnings(self) -> list:
        """One line per warning finding, then the probes' (official wording where one exists)."""
        out = [f"inspection: {f.line()}" for f in self.findings if f.severity == "warning"]
        p = self.probes
        if not p:
            return out
        if p["zero_gradient_count"]:
            out.append(ZERO_GRADIENT_WARNING.format(k=p["zero_gradient_count"],
                                                    n=p["examples"]))
        if p["nan_gradient"]:
            out.append(f"{100 * p['nan_gradient']:.1f}% of the points have NaN or infinite "
                       "gradients: the attacks' steps are undefined there")
        if p["exploding_gradient"]:
            out.append(f"{100 * p['exploding_gradient']:.1f}% of the points have gradients "
                       f"larger than {_probes.EXPLODING_NORM:g}: exploding gradients")
        if p["randomized"] and not self.randomized and p["output_spread"] == 0:
            out.append("logits_fn was inspected as randomised, but two draws gave the same "
                       "outputs and its program draws no random numbers")
        if p["gradient_not_better"] > 0.5:
            out.append(f"on {100 * p['gradient_not_better']:.0f}% of the points a step along "
                       "the gradient raises the loss no more than a random step: the gradient "
                       "does not point up the loss (broken or masked gradients)")
        return out

    def table(self) -> str:
        """A markdown table of the findings and the probes."""
        lines = ["| severity | kind | operation | where | count |", "|---|---|---|---|---|"]
        for f in self.findings:
            lines.append(f"| {f.severity} | {f.kind} | `{f.primitive}` | {f.where or '-'} | "
                         f"{f.count} |")
        if not self.findings:
            lines.append("| - | nothing found on the input's path | | | |")
        if self.probes:
            lines += ["", "| probe | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in self.probes.items()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dict(findings=[dataclasses.asdict(f) for f in self.findings],
                    probes=self.probes, rules=self.rules, warnings=self.warnings())


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def inspect(logits_fn: Callable, x, y=None, *, key: Optional[jax.Array] = None,
            randomized: bool = False, probe: bool = True, examples: int = 32,
            step: float = 0.01, bounds=(0.0, 1.0), min_cosine: float = 0.99) -> Inspection:
    """Inspects ``logits_fn`` on the inputs ``x`` (labels ``y`` for the probes): the first
    step of an adaptive evaluation (Athalye, Carlini & Wagner, ICML 2018, Section 3; Tramer
    et al., NeurIPS 2020, Section 4).

    Args:
      logits_fn: ``x -> logits``, or ``(x, key) -> logits`` with ``randomized=True``.
      x, y: a batch of inputs (and labels); the first ``examples`` are used. ``y`` may be
        None when ``probe=False``.
      key: PRNG key of the probes (and of the randomised model's draws).
      probe: run the numeric probes and check the custom rules (else: the static scan only).
      step: the L-inf size of the probes' gradient and random steps.
      bounds: the valid input range.
      min_cosine: a custom rule whose gradient's median cosine to its forward pass's is
        below this is reported.

    Returns:
      an :class:`Inspection`; ``.table()`` prints it, ``.warnings()`` lists its warnings.
    """
    _checks.check_int("examples", examples, 1)
    _checks.check_scalar("step", step)
    lo, hi = _checks.check_bounds(bounds)
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be a function, got {type(logits_fn).__name__}")
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of inputs, got shape {x.shape}")
    x = x[:examples]
    key = jax.random.PRNGKey(0) if key is None else key
    rest = (jax.random.fold_in(key, 1),) if randomized else ()
    found = _program.scan(logits_fn, x, *rest)
    findings = list(found.findings)
    if not probe:
        return Inspection(findings=findings, probes={}, rules={})
    if y is None:
        raise ValueError("y (the labels of x) is required for the probes; or pass probe=False")
    y = np.asarray(y)[:examples]
    rules = _probes.check_rules(found.closed, found.custom_rules, x, y, rest=rest,
                                min_cosine=min_cosine)
    passed = {src for src, cos in rules.items() if cos >= min_cosine}
    findings = [f for f in findings if not (f.kind == "custom-rule" and f.where in passed)]
    findings = [dataclasses.replace(f, meaning=f"{f.meaning} (median cosine "
                                    f"{rules[f.where]:.3f})")
                if f.kind == "custom-rule" and f.where in rules else f for f in findings]
    numbers = _probes.probe(logits_fn, x, y, key, randomized=randomized, step=step,
                            bounds=(lo, hi))
    return Inspection(findings=findings, probes=numbers, rules=rules)
