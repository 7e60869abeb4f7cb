"""Randomized smoothing: certified L2 robustness of any classifier at any scale.

Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing"
(ICML 2019): PREDICT and CERTIFY (Algorithm 1) with its statistics; and the training of
the base classifier under noise: Gaussian data augmentation (the paper's) and SmoothAdv
(Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed
Classifiers", NeurIPS 2019).

  sampling  -- the votes of the base classifier under noise: a jitted loop over noise
               batches, keyed per example, sharded over the mesh.
  stats     -- Clopper-Pearson bounds, the binomial test, the certified radius.
  smoothed  -- ``predict`` and ``certify``.
  table     -- the certification table of a dataset, resumable.
  smoothadv -- Gaussian augmentation and SmoothAdv's attack on the soft smoothed classifier.
"""

from robustjax.smoothing import sampling, smoothadv, smoothed, stats, table
from robustjax.smoothing.smoothed import Certified, Prediction, certify, predict
from robustjax.smoothing.stats import certified_accuracy, lower_confidence_bound
from robustjax.smoothing.table import certify_table

__all__ = ["sampling", "stats", "smoothed", "smoothadv", "table", "certify_table", "predict",
           "certify", "Prediction", "Certified", "certified_accuracy", "lower_confidence_bound"]
