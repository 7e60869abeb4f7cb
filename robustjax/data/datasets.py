"""Datasets of the paper's experiments (Section 4: MNIST and CIFAR-10).

With ``data_dir``, :func:`load` reads the official raw files with NumPy only,
so a machine without TensorFlow (a GPU box, CI) can train from files on disk:

* MNIST / Fashion-MNIST: the IDX files under their official names (``.gz`` or not);
* CIFAR-10: ``cifar-10-python.tar.gz`` or ``cifar-10-binary.tar.gz``, or the
  extracted ``cifar-10-batches-py`` / ``cifar-10-batches-bin`` folders.
* CIFAR-100 (evaluation of published models): ``cifar-100-python.tar.gz`` or
  ``cifar-100-binary.tar.gz``, or the extracted ``cifar-100-python`` /
  ``cifar-100-binary`` folders; the 100 fine labels.

Without ``data_dir`` it uses TensorFlow Datasets (the ``tfds`` extra), which
downloads and prepares a dataset it does not have yet, as every TFDS user expects.
Offline, TFDS's download would retry for minutes: when the dataset is not prepared
and its download host cannot be reached within a few seconds, :func:`load` fails at
once, in one line that says which files to get and to pass ``data_dir``.
Images come back as uint8 ``[N, H, W, C]`` and labels as int32 ``[N]``; scale
with ``images / 255``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import tarfile
from typing import Optional, Union

import numpy as np

__all__ = ["DataError", "read_idx", "load", "IDX_FILES", "DATASETS", "ALL_DATASETS", "SPLITS",
           "NUM_CLASSES"]

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
    """A data file is missing, truncated or not what its name says."""


# name -> split -> (images file, labels file), the official file names.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATASETS = ("mnist", "fashion_mnist", "cifar10")  # the ones training runs on
ALL_DATASETS = DATASETS + ("cifar100",)  # load() reads these
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
IDX_DATASETS = ("mnist", "fashion_mnist")
SPLITS = tuple(IDX_FILES)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """Reads one IDX file (gzip-compressed or not), the format of LeCun's MNIST files.

    Checks the magic number (two zero bytes, a known type code, the number of
    dimensions) and that the payload has exactly the size the header declares.
    Raises :class:`DataError` naming the file otherwise.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise DataError(f"{path}: cannot read ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r}; "
                        "expected 0000 + type code + ndim)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header declares shape {shape} ({expected} bytes of data) "
                        f"but the file holds {len(raw) - header} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def _find(data_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    raise DataError(f"{os.path.join(data_dir, stem)}[.gz]: file not found; expected the "
                    f"official IDX files {sorted(sum(IDX_FILES.values(), ()))} in {data_dir}")


def _load_idx(name, split, data_dir):
    img_path, lbl_path = (_find(data_dir, s) for s in IDX_FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images of shape [N, H, W], got "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{lbl_path}: expected {images.shape[0]} labels (one per image in "
                        f"{img_path}), got shape {labels.shape}")
    _check_labels(labels, lbl_path)
    return images[..., None], labels.astype(np.int32)


def _check_labels(labels, where, num_classes=10):
    if labels.size and (labels.min() < 0 or labels.max() > num_classes - 1):
        raise DataError(f"{where}: labels must be in [0, {num_classes - 1}], got "
                        f"[{labels.min()}, {labels.max()}]")


CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz")


def _cifar_python_batch(raw: bytes, where: str, label_key=b"labels", name="CIFAR-10"):
    try:
        d = pickle.load(io.BytesIO(raw), encoding="bytes")
        x, y = np.asarray(d[b"data"]), np.asarray(d[label_key])
    except Exception as e:  # corrupt pickle or missing keys
        raise DataError(f"{where}: not a {name} python batch ({e})") from e
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
        raise DataError(f"{where}: expected uint8 data [N, 3072] and N labels, got "
                        f"{x.dtype} {x.shape} and {y.shape}")
    return x, y


def _cifar_binary_batch(raw: bytes, where: str):
    if len(raw) == 0 or len(raw) % 3073:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of 3073-byte "
                        "records (1 label byte + 3072 pixels); truncated?")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    return rec[:, 1:], rec[:, 0]


def _read_cifar_files(data_dir, title, split, layouts, names):
    """``{name: (kind, bytes, where)}`` of one split's files, from an extracted folder or
    an official archive. ``layouts``: ``(folder, archive, kind, suffix)`` in order of
    preference; a folder wins over any archive."""
    members = {}
    for folder, _, kind, sfx in layouts:
        d = os.path.join(data_dir, folder)
        if os.path.isdir(d):
            for b in names:
                p = os.path.join(d, b + sfx)
                if not os.path.isfile(p):
                    raise DataError(f"{p}: file not found ({title} {split} split)")
                with open(p, "rb") as f:
                    members[b] = (kind, f.read(), p)
            return members
    for folder, archive, kind, sfx in layouts:
        path = os.path.join(data_dir, archive)
        if not os.path.isfile(path):
            continue
        try:
            with tarfile.open(path, "r:gz") as tar:
                for b in names:
                    name = f"{folder}/{b}{sfx}"
                    try:
                        f = tar.extractfile(name)
                    except KeyError:
                        f = None
                    if f is None:
                        raise DataError(f"{path}: has no member {name}")
                    members[b] = (kind, f.read(), f"{path}:{name}")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read ({e}); truncated download?") from e
        return members
    raise DataError(f"no {title} files in {data_dir}: expected one of "
                    f"{[lay[1] for lay in layouts]} or the extracted "
                    f"{' or '.join(lay[0] + '/' for lay in layouts)} folder (from "
                    "https://www.cs.toronto.edu/~kriz/cifar.html)")


def _load_cifar10(split, data_dir):
    """CIFAR-10 from the official python/binary tarballs or their extracted folders."""
    layouts = (("cifar-10-batches-py", CIFAR_ARCHIVES[0], "py", ""),
               ("cifar-10-batches-bin", CIFAR_ARCHIVES[1], "bin", ".bin"))
    members = _read_cifar_files(data_dir, "CIFAR-10", split, layouts, CIFAR_BATCHES[split])
    xs, ys = [], []
    for b in CIFAR_BATCHES[split]:
        kind, raw, where = members[b]
        x, y = (_cifar_python_batch if kind == "py" else _cifar_binary_batch)(raw, where)
        _check_labels(y, where)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.concatenate(ys).astype(np.int32)


CIFAR100_ARCHIVES = ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz")


def _load_cifar100(split, data_dir):
    """CIFAR-100 (fine labels) from the official python/binary archives or their folders.

    The python files ``cifar-100-python/{train,test}`` hold ``data`` and ``fine_labels``;
    the binary ``cifar-100-binary/{train,test}.bin`` records are 1 coarse label byte,
    1 fine label byte and 3072 pixels.
    """
    layouts = (("cifar-100-python", CIFAR100_ARCHIVES[0], "py", ""),
               ("cifar-100-binary", CIFAR100_ARCHIVES[1], "bin", ".bin"))
    kind, raw, where = _read_cifar_files(data_dir, "CIFAR-100", split, layouts, [split])[split]
    if kind == "py":
        x, y = _cifar_python_batch(raw, where, b"fine_labels", "CIFAR-100")
    else:
        if len(raw) == 0 or len(raw) % 3074:
            raise DataError(f"{where}: {len(raw)} bytes is not a whole number of 3074-byte "
                            "records (coarse and fine label bytes + 3072 pixels); truncated?")
        rec = np.frombuffer(raw, np.uint8).reshape(-1, 3074)
        x, y = rec[:, 2:], rec[:, 1]
    _check_labels(y, where, 100)
    x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y.astype(np.int32)


# Where TFDS fetches each dataset from (probed before a download, so offline fails fast).
_DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com",
                   "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                   "cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}
PROBE_TIMEOUT_S = 5.0


def _reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _official_files(name) -> list:
    return (sorted(sum(IDX_FILES.values(), ())) if name in IDX_DATASETS
            else list(CIFAR100_ARCHIVES[:1] if name == "cifar100" else CIFAR_ARCHIVES[:1]))


def _tfds_error(name, e) -> DataError:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return DataError(f"TensorFlow Datasets could not load {name!r} ({type(e).__name__}: "
                     f"{first}); get the official files {_official_files(name)} and pass "
                     f"their directory as data_dir (--data_dir)")


def _load_tfds(name, split, *, download):
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"loading {name!r} without data_dir needs TensorFlow Datasets "
                        f"(pip install -e '.[tfds]'; {e}); or get the official files "
                        f"{_official_files(name)} and pass their directory as data_dir "
                        f"(--data_dir)") from e
    tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerators
    # Explicit batches, concatenated below (batch_size=-1 breaks under TFDS mock data).
    kw = dict(split=split, as_supervised=True, batch_size=10_000)
    try:
        ds = tfds.load(name, download=False, **kw)   # a prepared copy: no network at all
    except Exception as e:  # noqa: BLE001 - TFDS raises assorted errors for "not prepared"
        if not download:
            raise _tfds_error(name, e) from e
        host = _DOWNLOAD_HOSTS.get(name, "storage.googleapis.com")
        if not _reachable(host):
            raise DataError(
                f"{name!r} is not prepared in TensorFlow Datasets' data dir and {host} "
                f"cannot be reached (offline?): get the official files "
                f"{_official_files(name)} on a machine with internet and pass their "
                f"directory as data_dir (--data_dir)") from None
        try:
            ds = tfds.load(name, download=True, **kw)
        except Exception as e2:  # noqa: BLE001
            raise _tfds_error(name, e2) from e2
    parts = list(tfds.as_numpy(ds))
    images = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
    return images, labels


def load(name: str, split: str, data_dir: Optional[PathLike] = None, *,
         download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Loads ``name`` (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``) ``split``.

    With ``data_dir``: the official raw files in it, read with NumPy. Without:
    TensorFlow Datasets, which downloads and prepares the dataset when it has no copy
    (``download=False``: only a prepared copy; offline, either fails at once with
    :class:`DataError`). Returns ``(images uint8 [N, H, W, C], labels int32 [N])``.
    """
    if name not in ALL_DATASETS:
        raise ValueError(f"name must be one of {ALL_DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data_dir is None:
        return _load_tfds(name, split, download=download)
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir {data_dir!r} is not a directory")
    if name == "cifar10":
        return _load_cifar10(split, data_dir)
    if name == "cifar100":
        return _load_cifar100(split, data_dir)
    return _load_idx(name, split, data_dir)
