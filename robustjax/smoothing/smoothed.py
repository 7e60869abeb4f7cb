"""PREDICT and CERTIFY of randomized smoothing: Cohen, Rosenfeld & Kolter, "Certified
Adversarial Robustness via Randomized Smoothing" (ICML 2019), Algorithm 1.

The smoothed classifier of a base classifier f is
``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)`` (Eq. 1). If the top
class's probability is at least p_A > 1/2, g is constant on the L2 ball of radius
``sigma * Phi^-1(p_A)`` around x (Theorem 1). Both functions below take the base model as
a ``logits_fn`` (it must return logits or any scores, not probabilities: see
:func:`check_inputs`) and are exact to the paper's algorithm:

* :func:`predict`: n samples; the two most-voted classes c_A, c_B; return c_A if the
  two-sided binomial test of n_A against n_A + n_B, p = 1/2, has p-value <= alpha, else
  abstain (-1). g's prediction is then wrong with probability at most alpha.
* :func:`certify`: n0 samples select c_A; n fresh samples count n_A; p_A is the
  (1 - alpha) Clopper-Pearson lower bound; abstain if p_A <= 1/2, else return c_A with
  radius ``sigma * Phi^-1(p_A)``. With probability at least 1 - alpha, g(x') = c_A for
  every ``||x' - x||_2 < radius``.

The sampling is :mod:`robustjax.smoothing.sampling` (jitted, sharded over the mesh, keyed
per example); the statistics are :mod:`robustjax.smoothing.stats`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.smoothing import sampling, stats

__all__ = ["Prediction", "Certified", "predict", "certify", "check_inputs"]


class Prediction(NamedTuple):
    """Output of :func:`predict`, per example ``[N]`` (``counts``: ``[N, classes]``)."""

    prediction: np.ndarray   # c_A, or -1 (abstain)
    p_value: np.ndarray      # the binomial test's p-value of n_A against n_A + n_B
    counts: np.ndarray


class Certified(NamedTuple):
    """Output of :func:`certify`, per example ``[N]``.

    prediction: c_A, or -1 where CERTIFY abstains (p_lower <= 1/2).
    radius: the certified L2 radius ``sigma * Phi^-1(p_lower)``; 0 where it abstains.
    selected: c_A chosen by the n0 selection samples (even where it then abstains).
    count: n_A, the votes for c_A among the n estimation samples.
    p_lower: the Clopper-Pearson lower bound on p_A.
    selection_counts, counts: ``[N, classes]`` votes of the n0 and the n samples.
    """

    prediction: np.ndarray
    radius: np.ndarray
    selected: np.ndarray
    count: np.ndarray
    p_lower: np.ndarray
    selection_counts: np.ndarray
    counts: np.ndarray


def check_inputs(logits_fn, x, *, sigma, alpha, **sample_sizes) -> int:
    """Checks the arguments of :func:`predict` / :func:`certify`; returns the class count.

    Raises ValueError naming the argument: ``sigma`` must be a finite number > 0,
    ``alpha`` in (0, 1), each sample size an integer >= 1, ``x`` a float batch, and
    ``logits_fn`` must not return probabilities (outputs in [0, 1] summing to 1 on the
    first inputs): randomized smoothing needs the base classifier's scores, and a
    softmax layer in the model is usually a mistake elsewhere too (attacks, SmoothAdv).
    """
    for name, value in (("sigma", sigma), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or (
                not np.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (the noise's standard deviation), got {sigma!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (the failure probability), got {alpha!r}")
    for name, value in sample_sizes.items():
        _checks.check_int(name, value, 1)
    if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty batch of inputs (rank >= 2, batch first), "
                         f"got shape {getattr(x, 'shape', None)}")
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {np.asarray(x).dtype}")
    probe = np.asarray(_checks.checked_logits(logits_fn, jnp.asarray(np.asarray(x)[:8])),
                       np.float64)
    if probe.shape[-1] < 2:
        raise ValueError(f"logits_fn must return scores of >= 2 classes, got {probe.shape}")
    if (probe.min() >= -1e-6 and probe.max() <= 1 + 1e-6
            and np.all(np.abs(probe.sum(-1) - 1) < 1e-4)):
        raise ValueError("logits_fn seems to return probabilities (outputs in [0, 1] that sum "
                         "to 1): pass the model's logits, without the softmax")
    return int(probe.shape[-1])


def predict(logits_fn, x, key: jax.Array, *, sigma: float, n: int = 100_000,
            alpha: float = 0.001, batch: int = 1000, indices=None, mesh=None) -> Prediction:
    """Cohen et al.'s PREDICT (Algorithm 1): the smoothed classifier's class, or -1.

    Args:
      logits_fn: the base classifier's logits, ``[B, ...] -> [B, classes]``.
      x: inputs ``[N, ...]`` (host or device array).
      key: example ``i``'s noise comes from ``fold_in(key, indices[i])``.
      sigma: the noise's standard deviation (the smoothing level), > 0.
      n: noise samples per example; alpha: the test's level in (0, 1).
      batch: noisy copies of each example per forward pass (memory grows with
        ``len(x) * batch``, not with ``n``).
      indices: the examples' global indices (default ``0..N-1``); mesh: the devices.
    """
    k = check_inputs(logits_fn, x, sigma=sigma, alpha=alpha, n=n, batch=batch)
    counts = sampling.sample_counts(logits_fn, x, key, sigma=sigma, num=n, batch=batch,
                                    stream="predict", num_classes=k, indices=indices, mesh=mesh)
    order = np.argsort(-counts, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    n_a = np.take_along_axis(counts, top[:, None], 1)[:, 0]
    n_b = np.take_along_axis(counts, second[:, None], 1)[:, 0]
    p_value = stats.binomial_p_value(n_a, n_a + n_b)
    return Prediction(prediction=np.where(p_value <= alpha, top, -1).astype(np.int32),
                      p_value=p_value, counts=counts)


def certify(logits_fn, x, key: jax.Array, *, sigma: float, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, batch: int = 1000, indices=None, mesh=None,
            progress: Optional[callable] = None) -> Certified:
    """Cohen et al.'s CERTIFY (Algorithm 1): the class and certified L2 radius, or abstain.

    Selection draws ``n0`` samples and takes the most-voted class c_A (ties: the lowest
    index); estimation draws ``n`` fresh samples (another noise stream) and counts n_A;
    ``p_lower`` is the one-sided (1 - alpha) Clopper-Pearson bound on p_A; the example is
    certified with radius ``sigma * Phi^-1(p_lower)`` if ``p_lower > 1/2``, else CERTIFY
    abstains (prediction -1, radius 0). Arguments as :func:`predict`'s;
    ``progress(done, total)`` runs after each call of the estimation.
    """
    k = check_inputs(logits_fn, x, sigma=sigma, alpha=alpha, n0=n0, n=n, batch=batch)
    common = dict(sigma=sigma, batch=batch, num_classes=k, indices=indices, mesh=mesh)
    counts0 = sampling.sample_counts(logits_fn, x, key, num=n0, stream="select", **common)
    counts = sampling.sample_counts(logits_fn, x, key, num=n, stream="estimate",
                                    progress=progress, **common)
    selected = np.argmax(counts0, axis=1).astype(np.int32)
    n_a = np.take_along_axis(counts, selected[:, None], 1)[:, 0]
    p_lower = stats.lower_confidence_bound(n_a, n, alpha)
    certified = p_lower > 0.5
    return Certified(prediction=np.where(certified, selected, -1).astype(np.int32),
                     radius=stats.certified_radius(p_lower, sigma), selected=selected,
                     count=n_a.astype(np.int64), p_lower=p_lower, selection_counts=counts0,
                     counts=counts)
