"""The two architectures of Madry et al. (ICLR 2018), Section 4 and Appendix.

Both are Flax Linen modules that take NHWC float images in [0, 1] and return
logits. Any input normalisation happens *inside* the model, so perturbation
budgets (eps) are always expressed in pixel space, as in the paper.

* :class:`MnistCNN` is the MNIST capacity family of Section 5 ("Capacity"):
  conv 5x5 (2w) -> pool -> conv 5x5 (4w) -> pool -> FC (64w) -> FC 10.
  ``width=16`` is the network of Madry's ``mnist_challenge`` (32/64/1024).
* :class:`CifarResNet` is the pre-activation wide ResNet of Madry's
  ``cifar10_challenge``: ``width=1`` is the paper's "simple" network and
  ``width=10`` the "wide" WRN-34-10.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from robustjax.models import layers

__all__ = ["MnistCNN", "CifarResNet", "DMCNN", "DM_ARCHS", "max_pool_2x2", "per_image_standardization",
           "param_count"]


def _check_width(width) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")


max_pool_2x2 = layers.max_pool_2x2_autodiff
"""2x2 max-pooling (the paper's MNIST pooling) with JAX's own gradient."""


def per_image_standardization(x: jax.Array) -> jax.Array:
    """``tf.image.per_image_standardization`` as used by Madry's CIFAR-10 model.

    (x - mean) / max(std, 1/sqrt(N)), with mean and std over each image's
    H*W*C values. Keeping it inside the network is what makes eps = 8/255 a
    pixel-space budget (paper, Section 4 and Table 2).
    """
    axes = tuple(range(1, x.ndim))
    n = math.prod(x.shape[1:])
    mean = jnp.mean(x, axis=axes, keepdims=True)
    std = jnp.std(x, axis=axes, keepdims=True)
    return (x - mean) / jnp.maximum(std, 1.0 / math.sqrt(n))


def _conv_impl(loop_friendly: bool):
    return layers.conv_general_dilated if loop_friendly else lax.conv_general_dilated


def _pool_impl(loop_friendly: bool):
    return layers.max_pool_2x2 if loop_friendly else layers.max_pool_2x2_autodiff


def param_count(params) -> int:
    """Number of trainable scalars in a parameter pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


class MnistCNN(nn.Module):
    """The MNIST network of the paper's capacity study (Section 5, Figure 4).

    conv 5x5 with ``2*width`` filters (SAME) -> ReLU -> 2x2 max-pool ->
    conv 5x5 with ``4*width`` filters -> ReLU -> 2x2 max-pool ->
    dense ``64*width`` -> ReLU -> dense ``num_classes``.

    ``width=16`` is Madry's released ``mnist_challenge`` model
    (32 / 64 / 1024 units, 3,274,634 parameters). Initialisation follows that
    code: truncated normal (stddev 0.1) kernels and biases of 0.1. The model
    has no batch norm; ``train`` is accepted so that both architectures share
    one calling convention.

    ``loop_friendly`` (default True) uses :mod:`robustjax.models.layers` for the
    convolutions and pooling: the same function and gradients (up to the
    choice of subgradient at exactly tied maxima), but a PGD loop over the
    model runs about 3x faster on CPU. Set it to False for forward-mode
    autodiff through the model.
    """

    width: int = 16
    num_classes: int = 10
    loop_friendly: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no batch norm or dropout in this network
        _check_width(self.width)
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with rank 4, got shape {x.shape}")
        w = self.width
        kinit = nn.initializers.truncated_normal(stddev=0.1)
        binit = nn.initializers.constant(0.1)
        conv, pool = _conv_impl(self.loop_friendly), _pool_impl(self.loop_friendly)
        x = nn.Conv(2 * w, (5, 5), padding="SAME", kernel_init=kinit, bias_init=binit,
                    conv_general_dilated=conv, name="conv1")(x)
        x = pool(nn.relu(x))
        x = nn.Conv(4 * w, (5, 5), padding="SAME", kernel_init=kinit, bias_init=binit,
                    conv_general_dilated=conv, name="conv2")(x)
        x = pool(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64 * w, kernel_init=kinit, bias_init=binit, name="fc1")(x))
        return nn.Dense(self.num_classes, kernel_init=kinit, bias_init=binit, name="fc2")(x)


def _leaky_relu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, negative_slope=0.1)


class _PreActUnit(nn.Module):
    """One pre-activation residual unit of Madry's ``cifar10_challenge`` model.

    BN -> leaky ReLU -> conv 3x3 (stride) -> BN -> leaky ReLU -> conv 3x3, plus a
    shortcut. When ``activate_before_residual`` the shortcut starts after the
    first activation (first unit of the network), otherwise from the raw input.
    When the channel count changes, the shortcut is an average pool with the
    unit's stride followed by zero-padding of the channels on both sides.
    """

    out_filters: int
    stride: int
    activate_before_residual: bool
    bn_momentum: float
    bn_epsilon: float
    loop_friendly: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        in_filters = x.shape[-1]
        conv = _conv_impl(self.loop_friendly)
        conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        bn = lambda name: nn.BatchNorm(use_running_average=not train,  # noqa: E731
                                       momentum=self.bn_momentum,
                                       epsilon=self.bn_epsilon, name=name)
        if self.activate_before_residual:
            x = _leaky_relu(bn("init_bn")(x))
            shortcut = x
        else:
            shortcut = x
            x = _leaky_relu(bn("init_bn")(x))
        x = nn.Conv(self.out_filters, (3, 3), strides=self.stride, padding="SAME",
                    use_bias=False, kernel_init=conv_init, conv_general_dilated=conv,
                    name="conv1")(x)
        x = _leaky_relu(bn("bn2")(x))
        x = nn.Conv(self.out_filters, (3, 3), strides=1, padding="SAME", use_bias=False,
                    kernel_init=conv_init, conv_general_dilated=conv, name="conv2")(x)
        if in_filters != self.out_filters:
            s = self.stride
            shortcut = nn.avg_pool(shortcut, (s, s), strides=(s, s), padding="VALID")
            pad = (self.out_filters - in_filters) // 2
            extra = self.out_filters - in_filters - 2 * pad
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (pad, pad + extra)))
        return x + shortcut


class CifarResNet(nn.Module):
    """Madry's CIFAR-10 pre-activation wide ResNet (paper Section 4, Table 2).

    Per-image standardisation -> 3x3 conv (16) -> 3 stages x 5 pre-activation
    residual units with ``[16, 32, 64] * width`` filters and strides 1, 2, 2 ->
    BN -> leaky ReLU (0.1) -> global average pool -> dense ``num_classes``.
    Batch norm uses decay 0.9 and epsilon 1e-3 (the TF defaults of that code).

    ``width=10`` is WRN-34-10 (the paper's "wide" model), ``width=1`` its
    "simple" model. ``train`` is required: with ``train=True`` batch norm uses
    batch statistics and the caller must pass ``mutable=["batch_stats"]`` to
    ``apply``; with ``train=False`` it uses the running averages.
    ``loop_friendly`` is as in :class:`MnistCNN`.
    """

    width: int = 10
    num_classes: int = 10
    units_per_stage: int = 5
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    loop_friendly: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_width(self.width)
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with rank 4, got shape {x.shape}")
        conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        x = per_image_standardization(x)
        x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_init,
                    conv_general_dilated=_conv_impl(self.loop_friendly),
                    name="init_conv")(x)
        filters = [16 * self.width, 32 * self.width, 64 * self.width]
        strides = [1, 2, 2]
        for stage, (f, s) in enumerate(zip(filters, strides), start=1):
            for unit in range(self.units_per_stage):
                x = _PreActUnit(out_filters=f, stride=s if unit == 0 else 1,
                                activate_before_residual=(stage == 1 and unit == 0),
                                bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                                loop_friendly=self.loop_friendly,
                                name=f"unit_{stage}_{unit}")(x, train)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, name="final_bn")(x)
        x = jnp.mean(_leaky_relu(x), axis=(1, 2))
        dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="logit")(x)


# Gowal et al. 2018 ("On the Effectiveness of Interval Bound Propagation...", Table 1): the
# small, medium and large networks of IBP and CROWN-IBP. Each conv: (filters, kernel,
# stride, padding); then the hidden dense layers.
DM_ARCHS = {
    "dm_small": (((16, 4, 2, "VALID"), (32, 4, 1, "VALID")), (100,)),
    "dm_medium": (((32, 3, 1, "VALID"), (32, 4, 2, "VALID"), (64, 3, 1, "VALID"),
                   (64, 4, 2, "VALID")), (512, 512)),
    "dm_large": (((64, 3, 1, "SAME"), (64, 3, 1, "SAME"), (128, 3, 2, "SAME"),
                  (128, 3, 1, "SAME"), (128, 3, 1, "SAME")), (512,)),
}


class DMCNN(nn.Module):
    """The verifiable-training CNNs of Gowal et al. 2018 (DM-small / medium / large).

    Strided convolutions and ReLU, no pooling and no batch norm: the
    architectures IBP and CROWN-IBP (Zhang et al. 2020) certify best, since
    every layer has a tight interval rule and a linear relaxation. Inputs in
    [0, 1]; no normalisation.
    """

    arch: str = "dm_small"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        if self.arch not in DM_ARCHS:
            raise ValueError(f"arch must be one of {tuple(DM_ARCHS)}, got {self.arch!r}")
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with rank 4, got shape {x.shape}")
        convs, dense = DM_ARCHS[self.arch]
        for i, (f, k, s, pad) in enumerate(convs):
            x = nn.relu(nn.Conv(f, (k, k), strides=s, padding=pad, name=f"conv{i + 1}")(x))
        x = x.reshape(x.shape[0], -1)
        for i, units in enumerate(dense):
            x = nn.relu(nn.Dense(units, name=f"fc{i + 1}")(x))
        return nn.Dense(self.num_classes, name="logits")(x)
