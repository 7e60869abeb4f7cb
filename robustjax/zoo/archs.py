"""Published CIFAR architectures in Flax Linen, numerically equal to their PyTorch originals.

Each network takes NHWC images in [0, 1] and returns logits. Where the original
normalises its input inside the model, so does this one (``mean``/``std``).

The layers are named by their PyTorch ``state_dict`` prefixes (``block1.layer.0.conv1``,
``layer.2.block.3.batchnorm_0``...), so converting a checkpoint is a mechanical
mapping (:mod:`robustjax.zoo.convert`) that can name the first parameter that does
not fit. All blocks are plain functions of a ``prefix``: the parameter tree is flat.

* :class:`WideResNet`: the WRN of TRADES (Zhang et al. 2019), used by RobustBench
  (``robustbench/model_zoo/architectures/wide_resnet.py``): pre-activation blocks,
  ReLU, no input normalisation unless the entry adds one.
* :class:`DMWideResNet` / :class:`DMPreActResNet`: Gowal et al. 2020 ("Uncovering the
  limits...") and Rebuffi et al. 2021 (DeepMind's ``adversarial_robustness`` model zoo):
  swish or ReLU, mean/std inside, TensorFlow "SAME" padding on strided convolutions
  (pad right/bottom only).
* :class:`ResNet` (He et al. 2016, the CIFAR variant of kuangliu's code that AutoAttack's
  example and many leaderboard entries use) and :class:`PreActResNet` (He et al. 2016b,
  Wong et al. 2020's Fast AT, Rice et al. 2020).

The final pooling is a global mean: at the 32x32 inputs these models were trained on,
that is exactly the originals' ``avg_pool2d(8)`` / ``avg_pool2d(4)``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["WideResNet", "DMWideResNet", "DMPreActResNet", "ResNet", "PreActResNet",
           "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable] = {"relu": jax.nn.relu, "swish": jax.nn.swish}

_SAME1 = ((1, 1), (1, 1))      # PyTorch padding=1
_NONE = ((0, 0), (0, 0))
_TF_SAME_S2 = ((0, 1), (0, 1))  # TensorFlow SAME for a 3x3 kernel of stride 2, even input


def _conv(prefix, features, kernel, stride=1, padding=_SAME1):
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   use_bias=False, name=prefix)


def _bn(prefix, train):
    # PyTorch BatchNorm2d: eps 1e-5; momentum 0.1 in PyTorch's convention is 0.9 here.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=prefix)


def _normalise(x, mean, std):
    if mean is None:
        return x
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def _head(x, num_classes, name, use_bias=True):
    return nn.Dense(num_classes, use_bias=use_bias, name=name)(jnp.mean(x, axis=(1, 2)))


class WideResNet(nn.Module):
    """TRADES / RobustBench WideResNet-``depth``-``width`` (Zagoruyko & Komodakis 2016).

    ``sub_block1=True`` builds the unused first sub-block that several RobustBench
    checkpoints carry (``WideResNet(..., sub_block1=True)``): its parameters must be in
    the checkpoint, and, as in the original, it does not touch the logits.
    """
    depth: int = 28
    width: int = 10
    num_classes: int = 10
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    sub_block1: bool = False
    bias_last: bool = True

    def _block(self, x, prefix, cout, stride, train):
        equal = x.shape[-1] == cout
        if equal:
            out = nn.relu(_bn(f"{prefix}.bn1", train)(x))
        else:
            x = nn.relu(_bn(f"{prefix}.bn1", train)(x))
            out = x
        out = nn.relu(_bn(f"{prefix}.bn2", train)(_conv(f"{prefix}.conv1", cout, 3, stride)(out)))
        out = _conv(f"{prefix}.conv2", cout, 3)(out)
        short = x if equal else _conv(f"{prefix}.convShortcut", cout, 1, stride, _NONE)(x)
        return short + out

    def _group(self, x, name, cout, stride, train):
        for i in range((self.depth - 4) // 6):
            x = self._block(x, f"{name}.layer.{i}", cout, stride if i == 0 else 1, train)
        return x

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {self.depth}")
        w = self.width
        out = _conv("conv1", 16, 3)(_normalise(x, self.mean, self.std))
        if self.sub_block1:  # unused by the forward pass, as in the original
            self._group(out, "sub_block1", 16 * w, 1, train)
        out = self._group(out, "block1", 16 * w, 1, train)
        out = self._group(out, "block2", 32 * w, 2, train)
        out = self._group(out, "block3", 64 * w, 2, train)
        out = nn.relu(_bn("bn1", train)(out))
        return _head(out, self.num_classes, "fc", self.bias_last)


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet (Gowal et al. 2020; Rebuffi et al. 2021), swish or ReLU."""
    depth: int = 28
    width: int = 10
    num_classes: int = 10
    activation: str = "swish"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {self.depth}")
        act = ACTIVATIONS[self.activation]
        out = _conv("init_conv", 16, 3)(_normalise(x, self.mean, self.std))
        for g, (cout, stride) in enumerate(((16 * self.width, 1), (32 * self.width, 2),
                                            (64 * self.width, 2))):
            for i in range((self.depth - 4) // 6):
                p = f"layer.{g}.block.{i}"
                s = stride if i == 0 else 1
                shortcut = out.shape[-1] != cout
                if shortcut:
                    out = act(_bn(f"{p}.batchnorm_0", train)(out))
                    v = out
                else:
                    v = act(_bn(f"{p}.batchnorm_0", train)(out))
                v = _conv(f"{p}.conv_0", cout, 3, s, _SAME1 if s == 1 else _TF_SAME_S2)(v)
                v = act(_bn(f"{p}.batchnorm_1", train)(v))
                v = _conv(f"{p}.conv_1", cout, 3)(v)
                res = _conv(f"{p}.shortcut", cout, 1, s, _NONE)(out) if shortcut else out
                out = res + v
        out = act(_bn("batchnorm", train)(out))
        return _head(out, self.num_classes, "logits")


class DMPreActResNet(nn.Module):
    """DeepMind's pre-activation ResNet-18/34 (Rebuffi et al. 2021): 3x3 shortcuts."""
    depth: int = 18
    num_classes: int = 10
    activation: str = "swish"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}.get(self.depth)
        if blocks is None:
            raise ValueError(f"depth must be 18 or 34, got {self.depth}")
        act = ACTIVATIONS[self.activation]
        out = _conv("conv_2d", 64, 3)(_normalise(x, self.mean, self.std))
        for k, (cout, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for i in range(n):
                p, s = f"layer_{k}.{i}", (2 if k and not i else 1)
                pad = _SAME1 if s == 1 else _TF_SAME_S2
                v = act(_bn(f"{p}.batchnorm_0", train)(out))
                if s != 1 or out.shape[-1] != cout:
                    short = _conv(f"{p}.shortcut", cout, 3, s, pad)(out)
                else:
                    short = out
                v = _conv(f"{p}.conv_2d_1", cout, 3, s, pad)(v)
                v = _conv(f"{p}.conv_2d_2", cout, 3)(act(_bn(f"{p}.batchnorm_1", train)(v)))
                out = v + short
        out = act(_bn("batchnorm", train)(out))
        return _head(out, self.num_classes, "logits")


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016; kuangliu's layout): ``bottleneck`` for ResNet-50."""
    blocks: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    num_classes: int = 10
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        exp = 4 if self.bottleneck else 1
        out = _normalise(x, self.mean, self.std)
        out = nn.relu(_bn("bn1", train)(_conv("conv1", 64, 3)(out)))
        for k, (planes, n) in enumerate(zip((64, 128, 256, 512), self.blocks)):
            for i in range(n):
                p, s = f"layer{k + 1}.{i}", (2 if k and not i else 1)
                if self.bottleneck:
                    v = _conv(f"{p}.conv1", planes, 1, 1, _NONE)(out)
                    v = nn.relu(_bn(f"{p}.bn1", train)(v))
                    v = nn.relu(_bn(f"{p}.bn2", train)(_conv(f"{p}.conv2", planes, 3, s)(v)))
                    v = _bn(f"{p}.bn3", train)(_conv(f"{p}.conv3", planes * exp, 1, 1, _NONE)(v))
                else:
                    v = nn.relu(_bn(f"{p}.bn1", train)(_conv(f"{p}.conv1", planes, 3, s)(out)))
                    v = _bn(f"{p}.bn2", train)(_conv(f"{p}.conv2", planes, 3)(v))
                if s != 1 or out.shape[-1] != planes * exp:
                    short = _conv(f"{p}.shortcut.0", planes * exp, 1, s, _NONE)(out)
                    short = _bn(f"{p}.shortcut.1", train)(short)
                else:
                    short = out
                out = nn.relu(v + short)
        return _head(out, self.num_classes, "linear")


class PreActResNet(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016b), RobustBench's ``PreActResNet``.

    ``out_shortcut=True`` feeds the shortcut the activated input (``PreActBlockV2``,
    Rice et al. 2020); ``bn_before_fc`` adds the final BN + ReLU.
    """
    blocks: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 10
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    out_shortcut: bool = False
    bn_before_fc: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = _conv("conv1", 64, 3)(_normalise(x, self.mean, self.std))
        for k, (planes, n) in enumerate(zip((64, 128, 256, 512), self.blocks)):
            for i in range(n):
                p, s = f"layer{k + 1}.{i}", (2 if k and not i else 1)
                v = nn.relu(_bn(f"{p}.bn1", train)(out))
                if s != 1 or out.shape[-1] != planes:
                    src = v if self.out_shortcut else out
                    short = _conv(f"{p}.shortcut.0", planes, 1, s, _NONE)(src)
                else:
                    short = out
                v = _conv(f"{p}.conv1", planes, 3, s)(v)
                v = _conv(f"{p}.conv2", planes, 3)(nn.relu(_bn(f"{p}.bn2", train)(v)))
                out = v + short
        if self.bn_before_fc:
            out = nn.relu(_bn("bn", train)(out))
        return _head(out, self.num_classes, "linear")
