"""robustjax: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks"
(ICLR 2018) in JAX, and what robustness research has added since.

Subpackages, by concern (each imports only those above it in this list):

  runtime     -- XLA defaults, the device mesh over every host, the jaxpr walker, row files.
  data        -- datasets from their official files or TFDS; on-device augmentation.
  models      -- the paper's networks, the fast layers, any model's fast-gradient rewrite.
  zoo         -- published robust models in Flax, checkpoint converters, the registry.
  attacks     -- the inner maximisation (Eq. 2.1): FGSM, PGD, APGD, FAB, Square; the
                 minimum-norm attacks FMN, DDN, CW-L2; BPDA and EOT wrappers.
  certify     -- sound bounds (IBP, CROWN, CROWN-IBP, alpha-CROWN) of any logits_fn.
  smoothing   -- randomized smoothing (Cohen et al. 2019): PREDICT, CERTIFY, certified L2
                 radii of any model at any scale; Gaussian and SmoothAdv noise training.
  evaluation  -- robust accuracy, AutoAttack, the inspection of a model's gradients,
                 adaptive evaluation, the paper's tables as suites, sweeps, curves
                 from minimum distances,
                 the loss landscape, the certified/attacked bracket.
  training    -- the outer minimisation: config, state, the Danskin step, the loop, the
                 run directory, validation.

The names most code needs are importable from here: ``robustjax.pgd``,
``robustjax.autoattack``, ``robustjax.robust_accuracy``, ``robustjax.certify.bounds``,
``robustjax.zoo.load``, ``robustjax.train_and_evaluate``, ``robustjax.load_model``...
The flat module paths of version 0.1 (``robustjax.evaluate``...) still import, with a
warning naming the new place (:mod:`robustjax._compat`).
"""

# Before anything can start a JAX backend: XLA reads XLA_FLAGS only once.
from robustjax.runtime import xla_defaults as _xla_defaults  # isort: skip

_xla_defaults.apply()

from robustjax import (attacks, certify, data, evaluation, models, runtime,  # noqa: E402
                       smoothing, training, zoo)
from robustjax.attacks.adaptive import bpda, eot  # noqa: E402
from robustjax.attacks.apgd import apgd, apgd_t  # noqa: E402
from robustjax.attacks.cw import cw_l2  # noqa: E402
from robustjax.attacks.ddn import ddn  # noqa: E402
from robustjax.attacks.fab import fab  # noqa: E402
from robustjax.attacks.first_order import fgsm, fgsm_rs, pgd  # noqa: E402
from robustjax.attacks.fmn import fmn  # noqa: E402
from robustjax.attacks.square import square  # noqa: E402
from robustjax.evaluation.accuracy import RobustAccuracy, robust_accuracy  # noqa: E402
from robustjax.evaluation.autoattack import autoattack  # noqa: E402
from robustjax.evaluation.distances import curve_from_norms, minimum_norms  # noqa: E402
from robustjax.evaluation.inspection import inspect  # noqa: E402
from robustjax.evaluation.suite import AttackSpec, run_suite  # noqa: E402
from robustjax.models.paper import CifarResNet, MnistCNN  # noqa: E402
from robustjax.training.config import TrainConfig  # noqa: E402
from robustjax.training.loop import train_and_evaluate  # noqa: E402
from robustjax.training.workdir import load_model, load_run  # noqa: E402
from robustjax import _compat  # noqa: E402  isort: skip

_compat.install(__name__)

__all__ = ["runtime", "data", "models", "zoo", "attacks", "certify", "smoothing", "evaluation",
           "training",
           "fgsm", "fgsm_rs", "pgd", "apgd", "apgd_t", "fab", "square", "autoattack",
           "inspect", "bpda", "eot", "fmn", "ddn", "cw_l2", "minimum_norms", "curve_from_norms",
           "robust_accuracy", "RobustAccuracy", "run_suite", "AttackSpec", "MnistCNN",
           "CifarResNet", "TrainConfig", "train_and_evaluate", "load_model", "load_run"]
__version__ = "0.2.0"
