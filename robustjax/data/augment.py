"""On-device data augmentation: random pad-and-crop and horizontal flips.

Madry et al. (Section 4, CIFAR-10, and their cifar10_challenge code) train with
a 4-pixel zero pad, a random 32x32 crop and a random horizontal flip. On MNIST
the paper uses none; a small random shift (``pad=2``, no flip) is an option for
the small-data CPU recipe, where it curbs robust overfitting.

The functions are pure and jittable, so augmentation runs inside the jitted
training step with the batch (no tf.data, no host copy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["random_crop", "random_flip", "pad_crop_flip"]


def random_crop(key: jax.Array, x: jax.Array, *, pad: int) -> jax.Array:
    """Zero-pads each NHWC image by ``pad`` pixels and takes a random crop of the original size.

    Every one of the ``(2 pad + 1)^2`` offsets is equally likely, independently
    per image. ``pad=0`` returns ``x`` unchanged.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4-D), got shape {x.shape}")
    if pad == 0:
        return x
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Mirrors each NHWC image left-right with probability 1/2, independently per image."""
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4-D), got shape {x.shape}")
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def pad_crop_flip(key: jax.Array, x: jax.Array, *, pad: int, flip: bool) -> jax.Array:
    """Random crop after zero padding by ``pad``, then (if ``flip``) a random mirror.

    ``pad=4, flip=True`` is the CIFAR-10 augmentation of Madry et al. (Section 4).
    """
    crop_key, flip_key = jax.random.split(key)
    x = random_crop(crop_key, x, pad=pad)
    return random_flip(flip_key, x) if flip else x
