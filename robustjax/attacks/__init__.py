"""Attacks: the inner maximisation of Madry et al. (ICLR 2018), Eq. (2.1), and its successors.

Every attack is a pure, jitted function of ``logits_fn`` and ``(x, y, key)`` with
explicit keyword settings, built on ``lax.fori_loop``, that returns arrays.

* :mod:`~robustjax.attacks.first_order`: FGSM, FGSM-RS (Fast AT, Wong et al. 2020),
  PGD with random restarts (L-inf, L2, L1; targeted; cross-entropy, CW and CW+
  losses), Section 2.1 of the paper.
* :mod:`~robustjax.attacks.geometry` and :mod:`~robustjax.attacks.l1`: the norm
  geometries (start, ascent, projection, distance), the exact L1-ball-and-box
  projection (Croce & Hein, ICML 2021).
* :mod:`~robustjax.attacks.apgd`, :mod:`~robustjax.attacks.apgd_l1`: Auto-PGD, the DLR
  loss and APGD-T (Croce & Hein, ICML 2020), and l1-APGD (ICML 2021).
* :mod:`~robustjax.attacks.fab`: FAB / FAB-T, the minimum-norm fast adaptive boundary
  attack (Croce & Hein, ICML 2020).
* :mod:`~robustjax.attacks.fmn`, :mod:`~robustjax.attacks.ddn`, :mod:`~robustjax.attacks.cw`:
  the minimum-norm attacks FMN in L0/L1/L2/L-inf (Pintor et al., NeurIPS 2021), DDN
  (Rony et al., CVPR 2019) and Carlini & Wagner's L2 attack with its binary search
  (IEEE S&P 2017); :mod:`~robustjax.attacks.min_norm` their result and distances,
  :mod:`~robustjax.attacks.l0` the L0 (changed pixels) geometry.
* :mod:`~robustjax.attacks.square`: the gradient-free Square attack (Andriushchenko
  et al., ECCV 2020).
* :mod:`~robustjax.attacks.adaptive`: BPDA, straight-through over a model's program, and
  EOT (Athalye, Carlini & Wagner, ICML 2018): wrappers that compose with every attack.

The AutoAttack ensemble, which runs these under validation, sharding and resume, is
:func:`robustjax.evaluation.autoattack`.

Imports: :mod:`robustjax.models` (the fast-gradient rewrite) and
:mod:`robustjax.runtime`.
"""

from robustjax.attacks import (adaptive, apgd, apgd_l1, cw, ddn, fab, first_order, fmn, geometry,
                               l0, l1, min_norm, square)
from robustjax.attacks.cw import cw_l2
from robustjax.attacks.min_norm import MinNormResult
from robustjax.attacks.adaptive import bpda, eot, straight_through
from robustjax.attacks.first_order import (L1, L2, LINF, NORMS, LogitsFn, Norm, attack_objective,
                                           cw_loss, fgsm, fgsm_rs, is_fooled, margin, pgd,
                                           pgd_step, select_best_restart, xent_loss)

# The modules apgd, fab and square keep their names here (robustjax.attacks.apgd.apgd);
# the functions are robustjax.apgd, robustjax.fab and robustjax.square at the top.
__all__ = ["first_order", "geometry", "l1", "l0", "apgd", "apgd_l1", "fab", "square", "adaptive",
           "fmn", "ddn", "cw", "min_norm", "cw_l2", "MinNormResult",
           "bpda", "eot", "straight_through",
           "fgsm", "fgsm_rs", "pgd", "pgd_step", "select_best_restart", "xent_loss", "cw_loss",
           "margin", "attack_objective", "is_fooled", "LogitsFn", "Norm", "LINF", "L2", "L1",
           "NORMS"]
