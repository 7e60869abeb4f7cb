"""Shared fixtures: real MNIST digits when present, a small model trained on them."""

from __future__ import annotations

import os
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import data, models

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_10K = pathlib.Path(os.environ.get("ROBUSTJAX_MNIST_DIR",
                                        REPO.parent / "shared" / "data" / "mnist-10k"))


def mnist_available() -> bool:
    return (MNIST_10K / "t10k-images-idx3-ubyte.gz").is_file()


def _separable_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated stand-in for digits: 10 fixed random 28x28 prototypes plus noise."""
    rng = np.random.default_rng(1234)
    protos = (rng.random((10, 28, 28, 1)) > 0.7).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = np.clip(protos[y] * 0.8 + rng.random((n, 28, 28, 1)) * 0.3, 0, 1)
    return (x * 255).astype(np.uint8), y


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_test, y_test) as float32 in [0, 1] and int32 labels."""
    if mnist_available():
        xtr, ytr = data.load("mnist", "train", MNIST_10K)
        xte, yte = data.load("mnist", "test", MNIST_10K)
    else:
        xtr, ytr = _separable_digits(4000, seed=0)
        xte, yte = _separable_digits(1000, seed=1)
    return (xtr.astype(np.float32) / 255, ytr, xte.astype(np.float32) / 255, yte)


class Trained(NamedTuple):
    model: models.MnistCNN
    params: dict
    logits_fn: Callable
    x: np.ndarray  # held-out test images
    y: np.ndarray


def train_natural(digits, *, width: int = 4, seed: int = 0, epochs: int = 3) -> Trained:
    """MnistCNN(width) trained naturally with Adam 1e-3, batch 100."""
    xtr, ytr, xte, yte = digits
    model = models.MnistCNN(width=width)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()
        g = jax.grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt

    rng = np.random.default_rng(seed)
    bs = 100
    for _ in range(epochs):
        perm = rng.permutation(len(xtr))
        for i in range(0, len(xtr) - bs + 1, bs):
            idx = perm[i:i + bs]
            params, opt = step(params, opt, xtr[idx], ytr[idx])
    apply = jax.jit(model.apply)
    return Trained(model, params, lambda x: apply(params, x), xte[:500], yte[:500])


@pytest.fixture(scope="session")
def natural_model(digits) -> Trained:
    """MnistCNN(width=4) trained naturally for three epochs (about 15 s on 2 cores)."""
    return train_natural(digits)


class PgdBaselines(NamedTuple):
    eps: float
    n: int
    pgd100: object      # RobustAccuracy of PGD-100 (step 0.01)
    pgd100x5: object    # ... with 5 random restarts


@pytest.fixture(scope="session")
def pgd_baselines(natural_model) -> PgdBaselines:
    """PGD-100 and PGD-100 x 5 on 200 real test digits at eps 0.06 against the natural model:
    the bar the AutoAttack tests hold APGD, APGD-T and the ensemble to."""
    from robustjax import attacks
    from robustjax.evaluate import robust_accuracy

    m, eps, n = natural_model, 0.06, 200
    f = m.logits_fn

    def run(restarts):
        return robust_accuracy(f, m.x[:n], m.y[:n], lambda x, y, k: attacks.pgd(
            f, x, y, k, eps=eps, step_size=0.01, num_steps=100, restarts=restarts), eps=eps,
            batch_size=200, key=jax.random.PRNGKey(2))
    return PgdBaselines(eps, n, run(1), run(5))


def random_mlp(key, in_shape, num_classes=10):
    """A fixed random two-layer tanh network: a smooth test model for attacks."""
    d = int(np.prod(in_shape))
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (d, 32)) / np.sqrt(d)
    w2 = jax.random.normal(k2, (32, num_classes)) / np.sqrt(32)
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2 * 5.0


def assert_valid_adversarial(x_adv, x, *, eps, norm, bounds=(0.0, 1.0)):
    """Shape, dtype, finite, inside bounds and inside the eps-ball of x (float slack 1e-5,
    relative for L1 as in :func:`robustjax.evaluate.validate_checks`)."""
    import chex

    from robustjax import attacks

    chex.assert_equal_shape([x_adv, x])
    chex.assert_type(x_adv, x.dtype)
    chex.assert_tree_all_finite(x_adv)
    dist = attacks.NORMS[norm].distance(x_adv - x)
    slack = 1e-5 * max(1.0, eps) if norm == "l1" else 1e-5  # L1 sums per-coordinate rounding
    assert float(dist.max()) <= eps + slack, float(dist.max())
    assert float(x_adv.min()) >= bounds[0] and float(x_adv.max()) <= bounds[1]
    return dist


def write_idx(path, arr):
    """Writes ``arr`` (uint8) as a gzip IDX file, the official MNIST format."""
    import gzip

    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big")
                                                     for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A directory of official-format IDX files: the real digits, else generated ones."""
    if mnist_available():
        return str(MNIST_10K)
    d = tmp_path_factory.mktemp("idx")
    for split, n, seed in (("train", 2000, 0), ("t10k", 500, 1)):
        x, y = _separable_digits(n, seed)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x[..., 0])
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return str(d)


def separable_cifar(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated CIFAR-shaped data: 10 fixed colour-pattern prototypes plus noise (uint8)."""
    rng = np.random.default_rng(4321)
    protos = rng.random((10, 32, 32, 3)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = np.clip(protos[y] * 0.7 + rng.random((n, 32, 32, 3)) * 0.3, 0, 1)
    return (x * 255).astype(np.uint8), y


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """Generated data in the official CIFAR-10 python layout (cifar-10-batches-py/)."""
    import pickle

    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    names = [(f"data_batch_{i}", 64, i) for i in range(1, 6)] + [("test_batch", 64, 9)]
    for name, n, seed in names:
        x, y = separable_cifar(n, seed)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(n, -1),
                         b"labels": [int(v) for v in y]}, f)
    return str(folder.parent)
