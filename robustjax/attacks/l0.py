"""The L0 threat model: the number of changed pixels (Pintor et al., NeurIPS 2021,
"Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints", Section 3,
the L0 projection of FMN; Croce & Hein, ICCV 2019, on the pixel convention).

**The channel convention.** For images ``[B, H, W, C]`` (robustjax's layout, channels
last) a *pixel* is the ``C`` values at one ``(h, w)``: changing any of them changes the
pixel, and ``||delta||_0`` counts pixels, as sparse-attack papers on colour images do
(Croce & Hein 2019; Sparse-RS). For inputs of any other rank every coordinate is a
pixel. On one-channel images (MNIST) the two conventions agree, so distances equal those
of foolbox and adversarial-library, which count coordinates. To count coordinates of a
colour image instead, reshape it to ``[B, H, W * C, 1]`` in the model's input.

The projection onto ``{delta : ||delta||_0 <= k}`` keeps the ``k`` pixels of largest
magnitude (the L2 norm over the pixel's channels) and zeroes the others: the Euclidean
projection onto the set of k-sparse pixel perturbations. ``k`` may differ per example.
The k-th largest magnitude is found by bisection on its bits
(:func:`robustjax.attacks.l1.kth_largest`), not by sorting: XLA's CPU sort made FMN-L0
1.5 times slower than foolbox's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robustjax.attacks import l1 as _l1

__all__ = ["pixels", "pixel_magnitude", "l0_distance", "num_pixels", "project_l0"]

Array = jax.Array


def pixels(delta: Array) -> Array:
    """``delta`` as ``[B, P, C]``: P pixels of C channels (see the module's convention)."""
    if delta.ndim == 4:
        b, h, w, c = delta.shape
        return delta.reshape(b, h * w, c)
    return delta.reshape(delta.shape[0], -1, 1)


def num_pixels(shape) -> int:
    """The number of pixels of one input of shape ``[B, ...]``."""
    n = 1
    for s in (shape[1:3] if len(shape) == 4 else shape[1:]):
        n *= int(s)
    return n


def pixel_magnitude(delta: Array) -> Array:
    """Per pixel, the L2 norm of its channels: ``[B, P]``."""
    return jnp.sqrt(jnp.sum(jnp.square(pixels(delta).astype(jnp.float32)), axis=-1))


def l0_distance(delta: Array) -> Array:
    """Per example, the number of changed pixels ``[B]`` (float32, an integer value)."""
    return jnp.sum(jnp.any(pixels(delta) != 0, axis=-1), axis=1).astype(jnp.float32)


def project_l0(delta: Array, k: Array) -> Array:
    """``delta`` with all but its ``k`` largest pixels set to zero (``k`` ``[B]`` or scalar).

    Every pixel whose magnitude reaches the k-th largest stays: ``min(k, changed
    pixels)`` of them, more only where magnitudes tie exactly at the k-th.
    """
    mag = pixel_magnitude(delta)                                  # [B, P]
    k = jnp.floor(jnp.broadcast_to(jnp.asarray(k, jnp.float32).reshape(-1),
                                   (delta.shape[0],)))[:, None]
    kth = _l1.kth_largest(mag, jnp.clip(k, 1, mag.shape[1]).astype(jnp.int32))
    keep = (mag >= kth) & (k >= 1)
    kept = jnp.where(keep[..., None], pixels(delta), 0)
    return kept.reshape(delta.shape).astype(delta.dtype)
