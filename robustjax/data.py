"""Datasets of the paper's experiments, read from the official raw files with NumPy.

Section 4 of Madry et al. trains on MNIST and CIFAR-10. This module reads the
official MNIST-format IDX files (MNIST and Fashion-MNIST share the format and
file names) without TensorFlow, so a machine without it (a GPU box, CI) can
train and evaluate from files on disk. Images come back as uint8
``[N, H, W, C]`` and labels as int32 ``[N]``; scale with ``images / 255``.
"""

from __future__ import annotations

import gzip
import os
from typing import Union

import numpy as np

__all__ = ["DataError", "read_idx", "load", "IDX_FILES", "DATASETS", "SPLITS"]

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
    """A data file is missing, truncated or not what its name says."""


# name -> split -> (images file, labels file), the official file names.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATASETS = ("mnist", "fashion_mnist")
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


def load(name: str, split: str, data_dir: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Loads ``name`` (``"mnist"`` or ``"fashion_mnist"``) ``split`` from IDX files in ``data_dir``.

    Returns ``(images uint8 [N, 28, 28, 1], labels int32 [N])``.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir {data_dir!r} is not a directory")
    img_path, lbl_path = (_find(data_dir, s) for s in IDX_FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images of shape [N, H, W], got "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{lbl_path}: expected {images.shape[0]} labels (one per image in "
                        f"{img_path}), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{lbl_path}: labels must be in [0, 9], got [{labels.min()}, "
                        f"{labels.max()}]")
    return images[..., None], labels.astype(np.int32)
