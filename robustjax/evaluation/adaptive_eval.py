"""An adaptive evaluation: AutoAttack on a defence as given, then through the wrappers that
its inspection calls for, side by side.

The recipe of Athalye, Carlini & Wagner (ICML 2018, Section 4) and Tramer, Carlini,
Brendel & Madry (NeurIPS 2020, Section 5): inspect the defence
(:func:`robustjax.inspect`), then attack it with Backward Pass Differentiable
Approximation over every non-differentiable part (:func:`robustjax.bpda` over each
shattered input transform, :func:`robustjax.attacks.adaptive.straight_through` over
what the model's own program rounds or cuts) and Expectation over Transformation over its
randomness (:func:`robustjax.eot`). The defence is always *evaluated* as given: a
randomised one with one fresh draw per call, keyed by the input
(:func:`robustjax.eot` with one sample); only the attacks see the adaptive stand-in.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from robustjax import _checks
from robustjax.attacks import adaptive
from robustjax.evaluation import autoattack as _aa
from robustjax.evaluation import inspection, program
from robustjax.models import defences

__all__ = ["AdaptiveResult", "adaptive_autoattack", "markdown"]


@dataclasses.dataclass
class AdaptiveResult:
    """``inspection``: the report on the defended model. ``given``, ``adaptive``: the two
    :class:`robustjax.evaluation.autoattack.AutoAttackResult`. ``wrappers``: what the
    adaptive attacks went through. ``rows``: the side-by-side table."""
    inspection: inspection.Inspection
    given: _aa.AutoAttackResult
    adaptive: _aa.AutoAttackResult
    wrappers: list
    rows: list

    def to_json(self) -> dict:
        return dict(inspection=self.inspection.to_json(), wrappers=self.wrappers, rows=self.rows,
                    given=_summary(self.given), adaptive=_summary(self.adaptive))


def _summary(res) -> dict:
    return dict(clean_acc=res.clean_accuracy, robust_acc=res.robust_accuracy,
                accuracy_after=res.accuracy_after, seconds=res.seconds, warnings=res.warnings)


def adaptive_autoattack(logits_fn: Callable, x, y, key: jax.Array, *,
                        transforms: Sequence[defences.Transform] = (), eps: float,
                        norm: str = "linf", version: str = "standard",
                        attacks: Optional[Sequence[str]] = None, eot_samples: int = 20,
                        resume_dir: Optional[str] = None, **autoattack_kw) -> AdaptiveResult:
    """AutoAttack on ``defend(logits_fn, *transforms)`` as given and adaptively.

    Args:
      logits_fn: the undefended classifier ``x -> logits``.
      x, y, key: the examples and the key (both runs use the same key).
      transforms: the defence's input transforms (:mod:`robustjax.models.defences`).
      eps, norm, version, attacks: the threat model and the AutoAttack version, the same
        for both runs (``attacks`` with ``version="custom"``).
      eot_samples: EOT draws per step of the adaptive attacks on a randomised defence.
      resume_dir: stages of each run stored under ``resume_dir/given`` and ``/adaptive``.
      autoattack_kw: the rest of :func:`robustjax.autoattack`'s settings.
    """
    _checks.check_int("eot_samples", eot_samples, 1)
    transforms = tuple(transforms)
    defended = defences.defend(logits_fn, *transforms)
    randomized = any(t.randomized for t in transforms)
    kdraw, kinspect, keot = jax.random.split(jax.random.fold_in(key, 7), 3)
    given = adaptive.eot(defended, 1, key=kdraw) if randomized else defended
    x = np.asarray(x, np.float32)
    report = inspection.inspect(defended, x, y, key=kinspect, randomized=randomized)
    attack_fn, wrappers = _adaptive_model(logits_fn, transforms, x, keot,
                                          eot_samples=eot_samples)

    def run(name, attack):
        return _aa.autoattack(given, x, y, key, eps=eps, norm=norm, version=version,
                              attacks=attacks, attack_fn=attack, inspect=False,
                              resume_dir=None if resume_dir is None else f"{resume_dir}/{name}",
                              **autoattack_kw)

    res_given = run("given", None)
    res_given.warnings[:0] = [w for w in report.warnings() if w not in res_given.warnings]
    res_adaptive = run("adaptive", attack_fn)
    return AdaptiveResult(inspection=report, given=res_given, adaptive=res_adaptive,
                          wrappers=wrappers, rows=_rows(res_given, res_adaptive))


def _adaptive_model(logits_fn, transforms, x, key, *, eot_samples):
    """The stand-in the attacks differentiate, and a list naming each wrapper used."""
    wrappers, parts = [], []
    probe = x[:2]
    for i, t in enumerate(transforms):
        found = program.scan(lambda z, t=t: t(z, jax.random.PRNGKey(0)), probe).findings
        if not t.randomized and any(f.kind != "random" for f in found):
            wrappers.append(f"bpda({t.name})")
            parts.append(defences.Transform(f"bpda({t.name})", _bpda_transform(t)))
        else:
            parts.append(t)
    inner = program.scan(logits_fn, probe).findings
    model = logits_fn
    if any(f.kind in ("zero-gradient", "stop-gradient") for f in inner):
        wrappers.append("straight_through(model)")
        model = adaptive.straight_through(logits_fn)
    stand_in = defences.defend(model, *parts)
    if any(t.randomized for t in transforms):
        wrappers.append(f"eot({eot_samples})")
        stand_in = adaptive.eot(stand_in, eot_samples, key=key)
    return stand_in, wrappers


def _bpda_transform(t):
    def apply(x, key=None):
        return adaptive.bpda(lambda z: t(z, key))(x)
    return apply


def _rows(given, adapted) -> list:
    rows = [dict(attack="clean", given=given.clean_accuracy, adaptive=adapted.clean_accuracy)]
    for name in given.accuracy_after:
        rows.append(dict(attack=f"after {name}", given=given.accuracy_after[name],
                         adaptive=adapted.accuracy_after.get(name)))
    rows.append(dict(attack="AutoAttack", given=given.robust_accuracy,
                     adaptive=adapted.robust_accuracy))
    for r in rows:
        r["gap"] = None if r["adaptive"] is None else r["given"] - r["adaptive"]
    return rows


def markdown(rows: Sequence[dict]) -> str:
    """The side-by-side table: accuracy as given, adaptively, and the gap (points)."""
    lines = ["| | as given | adaptive | gap |", "|---|---:|---:|---:|"]
    for r in rows:
        cells = [f"{100 * r['given']:.2f}%",
                 "-" if r["adaptive"] is None else f"{100 * r['adaptive']:.2f}%",
                 "-" if r["gap"] is None else f"{100 * r['gap']:.2f}"]
        lines.append(f"| {r['attack']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
