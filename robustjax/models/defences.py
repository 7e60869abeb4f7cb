"""Classic input-transformation defences, as composable transforms for research code and tests.

Each is one of the defences that later papers broke by adaptive attacks (Athalye,
Carlini & Wagner, ICML 2018; Tramer, Carlini, Brendel & Madry, NeurIPS 2020):

* :func:`quantize` -- input quantisation to K levels (bit-depth reduction; Xu et al.'s
  feature squeezing, Guo et al. 2018): shattered gradients (zero almost everywhere).
* :func:`jpeg` -- JPEG-style compression: 8x8 block DCT-II per channel, coefficients
  divided by the JPEG luminance table at quality Q (IJG scaling) and rounded, then the
  inverse (Guo et al. 2018; Das et al. 2017). ``differentiable=True`` replaces the
  rounding by Shin & Song's (2017) cubic approximation ``round(v) + (v - round(v))^3``.
* :func:`noise` -- Gaussian noise on the input (randomised: stochastic gradients).
* :func:`resize_pad` -- random shrink and random placement (Xie et al., ICLR 2018), here
  kept at the input's size so any classifier takes it.
* :func:`purify` -- test-time optimisation: a few signed-gradient steps that lower the
  model's prediction entropy inside the forward pass (a "dynamic" defence, which
  differentiates the model while classifying).

:func:`defend` composes transforms in front of a ``logits_fn``. Every transform keeps
inputs in [0, 1], the shape and the dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks

__all__ = ["Transform", "quantize", "jpeg", "noise", "resize_pad", "purify", "defend",
           "parse"]

Array = jax.Array

# The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K, Table K.1).
_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)


@dataclasses.dataclass(frozen=True)
class Transform:
    """An input transform ``apply(x, key) -> x'`` for images ``[B, H, W, C]`` in [0, 1].

    ``randomized``: whether it draws from ``key`` (deterministic ones ignore it).
    """
    name: str
    apply: Callable
    randomized: bool = False

    def __call__(self, x, key=None):
        return self.apply(x, key)


def quantize(levels: int) -> Transform:
    """``round(x (K - 1)) / (K - 1)``: K evenly spaced levels in [0, 1] (K = 2: binarised)."""
    _checks.check_int("levels", levels, 2)
    k = float(levels - 1)
    return Transform(f"quantize:{levels}", lambda x, key=None: jnp.round(x * k) / k)


def _dct_matrix(n: int = 8) -> np.ndarray:
    """The orthonormal DCT-II matrix D (D @ v is the DCT of v)."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def _quality_table(quality: int) -> np.ndarray:
    """The luminance table scaled to ``quality`` as the IJG library does, in [0, 1] units."""
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    table = np.clip(np.floor((_JPEG_LUMA * scale + 50.0) / 100.0), 1, 255)
    return (table / 255.0).astype(np.float32)


def jpeg(quality: int, *, differentiable: bool = False) -> Transform:
    """JPEG-style compression at ``quality`` (1-100) of each channel (see the module)."""
    _checks.check_int("quality", quality, 1)
    if quality > 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    d = jnp.asarray(_dct_matrix())
    table = jnp.asarray(_quality_table(quality))

    def rounding(v):
        r = jnp.round(v)
        return r + (v - r) ** 3 if differentiable else r

    def apply(x, key=None):
        b, h, w, c = x.shape
        ph, pw = -h % 8, -w % 8
        z = jnp.pad(x - 0.5, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
        hb, wb = (h + ph) // 8, (w + pw) // 8
        blocks = z.reshape(b, hb, 8, wb, 8, c)
        coef = jnp.einsum("ui,bhiwjc,vj->bhuwvc", d, blocks, d)
        q = rounding(coef / table[None, None, :, None, :, None]) * (
            table[None, None, :, None, :, None])
        back = jnp.einsum("ui,bhuwvc,vj->bhiwjc", d, q, d).reshape(b, hb * 8, wb * 8, c)
        return jnp.clip(back[:, :h, :w] + 0.5, 0.0, 1.0)

    return Transform(f"{'djpeg' if differentiable else 'jpeg'}:{quality}", apply)


def noise(sigma: float) -> Transform:
    """``clip(x + sigma N(0, I), 0, 1)``, a fresh draw per example and per call's key."""
    _checks.check_scalar("sigma", sigma)

    def apply(x, key):
        return jnp.clip(x + sigma * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)

    return Transform(f"noise:{sigma:g}", apply, randomized=True)


def resize_pad(max_shrink: int) -> Transform:
    """Each image shrunk by a random 0..``max_shrink`` pixels per side and placed at a random
    offset on a black canvas of its own size (bilinear; Xie et al. 2018's idea at a fixed
    output size)."""
    _checks.check_int("max_shrink", max_shrink, 1)

    def one(xi, key):
        h, w = xi.shape[0], xi.shape[1]
        ks, kt = jax.random.split(key)
        shrink = jax.random.randint(ks, (), 0, max_shrink + 1)
        scale = jnp.stack([(h - shrink) / h, (w - shrink) / w]).astype(jnp.float32)
        off = jax.random.randint(kt, (2,), 0, shrink + 1).astype(jnp.float32)
        return jax.image.scale_and_translate(xi, xi.shape, (0, 1), scale, off, "linear",
                                             antialias=False)

    def apply(x, key):
        return jax.vmap(one)(x, jax.random.split(key, x.shape[0]))

    return Transform(f"resize:{max_shrink}", apply, randomized=True)


def purify(logits_fn: Callable, *, steps: int = 3, step_size: float = 0.02) -> Transform:
    """``steps`` signed-gradient steps that lower the entropy of ``logits_fn``'s prediction,
    clipped to [0, 1]: the model is differentiated inside its own forward pass."""
    _checks.check_int("steps", steps, 1)
    _checks.check_scalar("step_size", step_size)

    def entropy(z):
        logp = jax.nn.log_softmax(logits_fn(z), axis=-1)
        return -jnp.sum(jnp.exp(logp) * logp)

    def apply(x, key=None):
        for _ in range(steps):
            x = jnp.clip(x - step_size * jnp.sign(jax.grad(entropy)(x)), 0.0, 1.0)
        return x

    return Transform(f"purify:{steps}", apply)


def defend(logits_fn: Callable, *transforms: Transform) -> Callable:
    """``logits_fn`` behind ``transforms`` (applied left to right).

    Returns ``x -> logits`` when every transform is deterministic, else a randomised
    model ``(x, key) -> logits`` (each randomised transform gets its own key from
    ``key``); :func:`robustjax.attacks.adaptive.eot` turns the latter into an
    ``x -> logits`` model for the attacks.
    """
    for t in transforms:
        if not isinstance(t, Transform):
            raise TypeError(f"transforms must be Transform objects, got {type(t).__name__}")
    if not any(t.randomized for t in transforms):
        def defended(x):
            for t in transforms:
                x = t(x, None)
            return logits_fn(x)
        return defended

    def randomised(x, key):
        for i, t in enumerate(transforms):
            x = t(x, jax.random.fold_in(key, i) if t.randomized else None)
        return logits_fn(x)
    return randomised


def parse(spec: str, logits_fn: Callable) -> Transform:
    """A transform from its command-line name: ``quantize:K``, ``jpeg:Q``, ``djpeg:Q``
    (differentiable JPEG), ``noise:SIGMA``, ``resize:PIXELS`` or ``purify:STEPS``."""
    name, _, arg = spec.partition(":")
    makers = {"quantize": (int, quantize), "jpeg": (int, jpeg),
              "djpeg": (int, lambda q: jpeg(q, differentiable=True)),
              "noise": (float, noise), "resize": (int, resize_pad),
              "purify": (int, lambda s: purify(logits_fn, steps=s))}
    if name not in makers or not arg:
        raise ValueError(f"defence must be one of {', '.join(k + ':N' for k in makers)}, "
                         f"got {spec!r}")
    kind, make = makers[name]
    try:
        value = kind(arg)
    except ValueError:
        raise ValueError(f"defence {name} takes a {kind.__name__}, got {arg!r}") from None
    return make(value)
