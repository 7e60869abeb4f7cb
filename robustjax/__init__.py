"""robustjax: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks"
(ICLR 2018) in JAX.

Modules:
  attacks  -- FGSM, PGD (L-inf / L2, restarts, targeted, CW / CW+ losses): the
              inner maximisation of the paper's saddle-point problem (Eq. 2.1).
  evaluate -- robust accuracy over a dataset with validated adversarial examples.
  models   -- the paper's MNIST CNN family and CIFAR-10 wide ResNet (Flax Linen).
  layers   -- a convolution whose input gradient is fast inside lax.fori_loop.
"""

from robustjax import attacks, evaluate, layers, models
from robustjax.attacks import fgsm, pgd
from robustjax.evaluate import RobustAccuracy, robust_accuracy
from robustjax.models import CifarResNet, MnistCNN

__all__ = ["attacks", "evaluate", "layers", "models", "fgsm", "pgd", "robust_accuracy",
           "RobustAccuracy", "MnistCNN", "CifarResNet"]
__version__ = "0.1.0"
