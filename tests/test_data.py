"""IDX reader: real digits when present, files written here, corrupt files."""

import gzip
import os

import numpy as np
import pytest

from conftest import mnist_available
from robustjax.data import datasets as data


def _write_idx(path, arr, compress=True):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


def test_mnist_idx_files(idx_dir):
    """The real 8k/2k digits when present, else the generated stand-in IDX files."""
    xtr, ytr = data.load("mnist", "train", idx_dir)
    xte, yte = data.load("mnist", "test", idx_dir)
    assert xtr.shape[1:] == xte.shape[1:] == (28, 28, 1) and len(ytr) == len(xtr)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int32
    assert set(np.unique(ytr)) == set(range(10))
    assert xtr.max() == 255 and xtr.min() == 0
    if mnist_available():
        assert xtr.shape[0] == 8000 and xte.shape[0] == 2000
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


def _cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, n)


def _write_cifar_python(folder, split_sizes):
    import pickle

    os.makedirs(folder, exist_ok=True)
    ref = {}
    for name, n in split_sizes.items():
        x, y = _cifar_arrays(n, hash(name) % 1000)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(n, -1),
                         b"labels": [int(v) for v in y]}, f)
        ref[name] = (x, y)
    return ref


SIZES = {**{f"data_batch_{i}": 3 for i in range(1, 6)}, "test_batch": 4}


@pytest.mark.parametrize("layout", ["python_tar", "python_dir", "binary_tar"])
def test_cifar10_readers(tmp_path, layout):
    import tarfile

    if layout.startswith("python"):
        ref = _write_cifar_python(tmp_path / "cifar-10-batches-py", SIZES)
        if layout == "python_tar":
            with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
                tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
            import shutil

            shutil.rmtree(tmp_path / "cifar-10-batches-py")
    else:
        folder = tmp_path / "cifar-10-batches-bin"
        os.makedirs(folder)
        ref = {}
        for name, n in SIZES.items():
            x, y = _cifar_arrays(n, hash(name) % 1000)
            rec = np.concatenate([y[:, None].astype(np.uint8),
                                  x.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
            (folder / f"{name}.bin").write_bytes(rec.tobytes())
            ref[name] = (x, y)
        with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-bin")
        import shutil

        shutil.rmtree(folder)
    x, y = data.load("cifar10", "train", tmp_path)
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[:3], ref["data_batch_1"][0])
    np.testing.assert_array_equal(y[12:], ref["data_batch_5"][1])
    xt, yt = data.load("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(xt, ref["test_batch"][0])


def test_cifar10_corrupt_and_missing(tmp_path):
    with pytest.raises(data.DataError, match="no CIFAR-10 files"):
        data.load("cifar10", "train", tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    os.makedirs(folder)
    for name in SIZES:
        (folder / f"{name}.bin").write_bytes(b"\x01" * 3073 * 2)
    (folder / "data_batch_3.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(data.DataError, match="data_batch_3.bin.*truncated"):
        data.load("cifar10", "train", tmp_path)
    (folder / "data_batch_3.bin").write_bytes(b"\x0b" + b"\x01" * 3072)  # label 11
    with pytest.raises(data.DataError, match=r"labels must be in \[0, 9\]"):
        data.load("cifar10", "train", tmp_path)
    os.remove(folder / "test_batch.bin")
    with pytest.raises(data.DataError, match="test_batch.bin: file not found"):
        data.load("cifar10", "test", tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()
    import shutil

    shutil.rmtree(folder)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(data.DataError, match="cannot read"):
        data.load("cifar10", "train", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        x, y = data.load(name, "train")  # no data_dir: the TFDS path
    assert x.shape == (12,) + shape and x.dtype == np.uint8
    assert y.shape == (12,) and y.dtype == np.int32


@pytest.mark.slow
def test_tfds_fails_fast_offline(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    import time

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    t0 = time.time()
    with pytest.raises(data.DataError, match="data_dir"):
        data.load("mnist", "train")
    assert time.time() - t0 < 60  # not the ~200 s of an offline download


def _write_cifar100(tmp_path, layout, n_test=5, fine_max=99):
    """CIFAR-100 in the official layouts: python pickles {data, fine_labels, coarse_labels}
    or binary records (coarse byte, fine byte, 3072 pixels)."""
    import pickle
    import tarfile

    rng = np.random.default_rng(100)
    x = rng.integers(0, 256, (n_test, 32, 32, 3)).astype(np.uint8)
    fine = rng.integers(0, 100, n_test)
    fine[0] = fine_max
    coarse = fine // 5
    flat = x.transpose(0, 3, 1, 2).reshape(n_test, -1)
    if layout.startswith("python"):
        folder = tmp_path / "cifar-100-python"
        folder.mkdir()
        for split in ("train", "test"):
            with open(folder / split, "wb") as f:
                pickle.dump({b"data": flat, b"fine_labels": [int(v) for v in fine],
                             b"coarse_labels": [int(v) for v in coarse]}, f)
    else:
        folder = tmp_path / "cifar-100-binary"
        folder.mkdir()
        rec = np.concatenate([coarse[:, None], fine[:, None], flat], 1).astype(np.uint8)
        for split in ("train", "test"):
            (folder / f"{split}.bin").write_bytes(rec.tobytes())
    if layout.endswith("tar"):
        archive = "cifar-100-python.tar.gz" if layout.startswith("python") else \
            "cifar-100-binary.tar.gz"
        with tarfile.open(tmp_path / archive, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        import shutil

        shutil.rmtree(folder)
    return x, fine


@pytest.mark.parametrize("layout", ["python_tar", "python_dir", "binary_tar"])
def test_cifar100_readers(tmp_path, layout):
    x, y = _write_cifar100(tmp_path, layout)
    got_x, got_y = data.load("cifar100", "test", tmp_path)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)  # the 100 fine labels, 99 included
    assert got_x.dtype == np.uint8 and got_y.dtype == np.int32
    assert data.NUM_CLASSES["cifar100"] == 100


def test_cifar100_errors(tmp_path):
    with pytest.raises(data.DataError, match="no CIFAR-100 files"):
        data.load("cifar100", "test", tmp_path)
    _write_cifar100(tmp_path, "binary_dir")
    p = tmp_path / "cifar-100-binary" / "test.bin"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(data.DataError, match="3074-byte records"):
        data.load("cifar100", "test", tmp_path)
    assert "cifar100" not in data.DATASETS  # training runs on the others only
