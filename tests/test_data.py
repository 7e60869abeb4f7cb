"""IDX reader: real digits when present, files written here, corrupt files."""

import gzip
import os

import numpy as np
import pytest

from conftest import MNIST_10K, mnist_available
from robustjax import data


def _write_idx(path, arr, compress=True):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.skipif(not mnist_available(), reason="shared/data/mnist-10k not present")
def test_real_mnist_10k():
    xtr, ytr = data.load("mnist", "train", MNIST_10K)
    xte, yte = data.load("mnist", "test", MNIST_10K)
    assert xtr.shape == (8000, 28, 28, 1) and xte.shape == (2000, 28, 28, 1)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int32
    assert set(np.unique(ytr)) == set(range(10))
    assert xtr.max() == 255 and xtr.min() == 0
    assert 20 < xte.mean() < 50  # MNIST's mean pixel is about 33


@pytest.mark.parametrize("compress", [True, False])
def test_roundtrip_written_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 7).astype(np.uint8)
    sfx = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", x, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", y, compress)
    xi, yi = data.load("fashion_mnist", "test", tmp_path)
    np.testing.assert_array_equal(xi[..., 0], x)
    np.testing.assert_array_equal(yi, y)
    big = rng.integers(-5, 5, (3, 4)).astype(np.int32)
    _write_idx(tmp_path / "ints.gz", big)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "ints.gz"), big)


def test_corrupt_and_missing_files(tmp_path):
    x = np.zeros((5, 28, 28), np.uint8)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(p, x)
    raw = gzip.open(p).read()
    # Truncated payload.
    with gzip.open(p, "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(p)
    # Bad magic number.
    with gzip.open(p, "wb") as f:
        f.write(b"\x1f\x00\x08\x03" + raw[4:])
    with pytest.raises(data.DataError, match="magic"):
        data.read_idx(p)
    # Truncated gzip stream (random pixels, so the stream is long enough to cut).
    noisy = raw[:16] + np.random.default_rng(0).integers(0, 256, len(raw) - 16,
                                                         dtype=np.uint8).tobytes()
    p.write_bytes(gzip.compress(noisy)[:1000])
    with pytest.raises(data.DataError, match="cannot read"):
        data.read_idx(p)
    # Missing labels file, then mismatched counts.
    _write_idx(p, x)
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte"):
        data.load("mnist", "train", tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(data.DataError, match="expected 5 labels"):
        data.load("mnist", "train", tmp_path)
    with pytest.raises(data.DataError, match="not found"):
        data.read_idx(tmp_path / "nope.gz")
    with pytest.raises(data.DataError, match="not a directory"):
        data.load("mnist", "train", os.path.join(tmp_path, "missing"))


def test_unknown_names():
    with pytest.raises(ValueError, match="name"):
        data.load("imagenet", "train", ".")
    with pytest.raises(ValueError, match="split"):
        data.load("mnist", "validation", ".")
