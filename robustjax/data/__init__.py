"""Datasets: the official raw files read with NumPy, TFDS, and on-device augmentation.

* :mod:`~robustjax.data.datasets`: MNIST, Fashion-MNIST, CIFAR-10/100 from their
  official files (IDX, CIFAR batches) or through TensorFlow Datasets.
* :mod:`~robustjax.data.augment`: the pad-crop-flip augmentation of Madry et al.
  (ICLR 2018), Section 4 (CIFAR-10), on the device.

Imports: nothing of robustjax (bottom layer, beside :mod:`robustjax.runtime`).
"""

from robustjax.data import augment, datasets
from robustjax.data.datasets import (ALL_DATASETS, DATASETS, IDX_FILES, NUM_CLASSES, SPLITS,
                                     DataError, load, read_idx)

__all__ = ["augment", "datasets", "load", "read_idx", "DataError", "DATASETS", "ALL_DATASETS",
           "IDX_FILES", "NUM_CLASSES", "SPLITS"]
