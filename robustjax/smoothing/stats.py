"""The statistics of randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019, Section 3.2).

The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I), is
never evaluated exactly: its class probabilities are estimated from counts of the base
classifier's votes under noise, and every claim about g holds with probability at least
1 - alpha over those samples:

* PREDICT (Algorithm 1, left) returns the top class only if a two-sided binomial test
  rejects, at level alpha, that the two most-voted classes are equally likely
  (:func:`binomial_p_value`); otherwise it abstains.
* CERTIFY (Algorithm 1, right) bounds the top class's probability p_A from below by the
  one-sided Clopper-Pearson bound (:func:`lower_confidence_bound`, the paper's
  ``LowerConfBound(n_A, n, 1 - alpha)``), and certifies the L2 radius
  ``sigma * Phi^-1(p_A)`` (Theorem 1 with p_B = 1 - p_A; :func:`certified_radius`).

These run on the host, on the counts (NumPy and SciPy; the sampling is the jitted part,
:mod:`robustjax.smoothing.sampling`).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

__all__ = ["lower_confidence_bound", "binomial_p_value", "certified_radius",
           "certified_accuracy", "l2_radius"]


def lower_confidence_bound(k, n, alpha: float) -> np.ndarray:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    ``k`` successes out of ``n`` trials (arrays broadcast): the alpha-quantile of
    Beta(k, n - k + 1), and 0 where ``k = 0``. This is Cohen et al.'s
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("counts k must lie in [0, n]")
    safe_k = np.where(k > 0, k, 1.0)
    return np.where(k > 0, special.betaincinv(safe_k, n - safe_k + 1.0, alpha), 0.0)


def binomial_p_value(k, n) -> np.ndarray:
    """The two-sided exact binomial test's p-value of ``k`` successes in ``n`` trials
    against p = 1/2 (``scipy.stats.binomtest(k, n).pvalue``, vectorised): by symmetry,
    ``min(1, 2 P(X <= min(k, n - k)))``. It is 1 where ``n = 0``."""
    k, n = np.asarray(k, np.int64), np.asarray(n, np.int64)
    tail = stats.binom.cdf(np.minimum(k, n - k), np.maximum(n, 1), 0.5)
    return np.where(n > 0, np.minimum(1.0, 2.0 * tail), 1.0)


def certified_radius(p_lower, sigma: float) -> np.ndarray:
    """``sigma * Phi^-1(p_lower)`` where ``p_lower > 1/2`` (Theorem 1), else 0 (CERTIFY
    abstains there: it claims nothing when the bound on p_A is not above one half)."""
    p = np.asarray(p_lower, np.float64)
    return np.where(p > 0.5, sigma * stats.norm.ppf(np.where(p > 0.5, p, 0.75)), 0.0)


def certified_accuracy(prediction, radius, labels, radii) -> np.ndarray:
    """Certified accuracy at each radius of ``radii`` (Cohen et al.'s figures): the fraction
    of examples whose CERTIFY prediction equals the label with a radius ``>= r``
    (an abstention counts as wrong at every radius, 0 included)."""
    prediction, radius = np.asarray(prediction), np.asarray(radius)
    ok = (prediction == np.asarray(labels)) & (prediction >= 0)
    return np.asarray([float(np.mean(ok & (radius >= r))) for r in np.asarray(radii, float)])


def l2_radius(norm: str, eps: float, dim: int) -> float:
    """The smallest L2 radius whose ball holds the ``norm`` ball of radius ``eps`` in ``dim``
    dimensions: ``eps * sqrt(dim)`` for L-inf, ``eps`` for L2 and L1. A smoothing
    certificate of that L2 radius covers the ``norm`` ball."""
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"norm must be one of ('linf', 'l2', 'l1'), got {norm!r}")
    return float(eps) * (float(np.sqrt(dim)) if norm == "linf" else 1.0)
