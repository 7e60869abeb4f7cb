"""On-device augmentation: pad-crop and flip against a NumPy reference."""

import jax
import numpy as np
import pytest

from robustjax.data import augment


def _images(n=16, h=6, w=5, c=2):
    return np.random.default_rng(0).random((n, h, w, c)).astype(np.float32) + 1.0  # no zeros


def test_random_crop_matches_numpy():
    x = _images()
    key = jax.random.PRNGKey(3)
    out = np.asarray(augment.random_crop(key, x, pad=2))
    offsets = np.asarray(jax.random.randint(key, (len(x), 2), 0, 5))  # what it draws
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    want = np.stack([padded[i, a:a + 6, b:b + 5] for i, (a, b) in enumerate(offsets)])
    np.testing.assert_array_equal(out, want)
    assert len({tuple(o) for o in offsets}) > 4  # offsets vary per image
    np.testing.assert_array_equal(augment.random_crop(key, x, pad=0), x)


def test_every_offset_occurs():
    x = np.ones((2000, 4, 4, 1), np.float32)
    out = np.asarray(augment.random_crop(jax.random.PRNGKey(0), x, pad=1))
    # The zero rows/columns reveal the offset: 9 equally likely patterns.
    patterns, counts = np.unique(out[..., 0].reshape(len(x), -1), axis=0, return_counts=True)
    assert len(patterns) == 9 and counts.min() > 2000 / 9 * 0.7


def test_random_flip_and_pad_crop_flip():
    x = _images(n=400)
    out = np.asarray(augment.random_flip(jax.random.PRNGKey(1), x))
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and 0.4 < mirrored.mean() < 0.6
    y = np.asarray(augment.pad_crop_flip(jax.random.PRNGKey(2), x, pad=4, flip=True))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_bad_arguments():
    with pytest.raises(ValueError, match="pad"):
        augment.random_crop(jax.random.PRNGKey(0), _images(), pad=-1)
    with pytest.raises(ValueError, match="NHWC"):
        augment.random_flip(jax.random.PRNGKey(0), _images()[0])
