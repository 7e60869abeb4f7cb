"""Models: the paper's networks, the fast layers, and the fast-gradient rewrite of any model.

* :mod:`~robustjax.models.paper`: the MNIST CNN family (Madry et al., ICLR 2018,
  Section 4; its capacity family, Figure 4), the CIFAR-10 wide ResNet,
  and Gowal et al.'s (2018) verifiable-training CNNs, in Flax Linen.
* :mod:`~robustjax.models.layers`: convolution and pooling whose input gradients are
  fast inside ``lax.fori_loop``.
* :mod:`~robustjax.models.fastpath`: any model's convolutions and max-pools rewritten
  onto those layers (applied by the attacks on the CPU).
* :mod:`~robustjax.models.defences`: classic input-transformation defences (quantisation,
  JPEG, noise, random resize, test-time purification) as composable transforms.

Published models (RobustBench's and DeepMind's) are in :mod:`robustjax.zoo`.

Imports: :mod:`robustjax.runtime` only.
"""

from robustjax.models import defences, fastpath, layers, paper
from robustjax.models.paper import DM_ARCHS, DMCNN, CifarResNet, MnistCNN, param_count

__all__ = ["paper", "layers", "fastpath", "defences", "MnistCNN", "CifarResNet", "DMCNN",
           "DM_ARCHS", "param_count"]
