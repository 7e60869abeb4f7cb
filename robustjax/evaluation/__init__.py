"""Evaluation: robust accuracy, AutoAttack, suites of attacks, sweeps, the loss landscape.

* :mod:`~robustjax.evaluation.accuracy`: :func:`robust_accuracy` over a dataset, with
  every adversarial example validated (inside the ball and the box, finite, misclassified
  as claimed).
* :mod:`~robustjax.evaluation.autoattack`: the AutoAttack ensemble (Croce & Hein, ICML
  2020; standard, plus, rand and custom versions), sharded and resumable.
* :mod:`~robustjax.evaluation.suite`: attack suites, the paper's Tables 1 and 2 as data,
  with the per-example worst case over all rows (Madry et al., Section 5).
* :mod:`~robustjax.evaluation.sweeps`: accuracy against eps (Figure 6) with eps traced,
  and the gradient-masking checks.
* :mod:`~robustjax.evaluation.distances`: per-example minimum adversarial distances
  (FMN, DDN, CW-L2, FAB) over a dataset, sharded and resumable, and the whole
  accuracy-against-eps curve from them (:func:`curve_from_norms`).
* :mod:`~robustjax.evaluation.landscape`: PGD from many random starts, the loss
  landscape of Section 3 (Figures 1-2).
* :mod:`~robustjax.evaluation.inspection` (:func:`robustjax.inspect`), with
  :mod:`~robustjax.evaluation.program` and :mod:`~robustjax.evaluation.probes`: what in a
  model's program and gradients can hide them (Athalye et al., ICML 2018).
* :mod:`~robustjax.evaluation.adaptive_eval`: AutoAttack on a defence as given and
  through BPDA / EOT, side by side (Tramer et al., NeurIPS 2020).
* :mod:`~robustjax.evaluation.bracket`: certified (lower) and attacked (upper) accuracy
  per example, and the check that no certified example is broken.

Imports: :mod:`robustjax.certify`, :mod:`robustjax.attacks`, :mod:`robustjax.models`,
:mod:`robustjax.runtime`.
"""

from robustjax.evaluation import (accuracy, adaptive_eval, autoattack, bracket, distances,
                                  inspection, landscape, probes, program, suite, sweeps)
from robustjax.evaluation.accuracy import InvalidAdversarialError, RobustAccuracy, robust_accuracy
from robustjax.evaluation.autoattack import AutoAttackResult
from robustjax.evaluation.distances import MinimumNorms, curve_from_norms, minimum_norms
from robustjax.evaluation.inspection import Inspection, inspect
from robustjax.evaluation.suite import AttackSpec, SuiteResult, markdown_table, run_suite

# The module autoattack keeps its name here; the function is robustjax.autoattack.
__all__ = ["accuracy", "autoattack", "suite", "sweeps", "landscape", "bracket", "inspection",
           "program", "probes", "adaptive_eval", "distances", "inspect", "Inspection",
           "minimum_norms", "MinimumNorms", "curve_from_norms",
           "robust_accuracy", "RobustAccuracy", "InvalidAdversarialError", "AutoAttackResult",
           "AttackSpec", "SuiteResult", "run_suite", "markdown_table"]
