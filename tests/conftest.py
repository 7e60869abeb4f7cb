"""Shared fixtures: real MNIST digits when present, a small model trained on them.

How the suite stays fast (the rules for a new test are in docs/develop.md):

* One JAX persistent compilation cache per test run: a fresh temporary
  directory, set here before JAX is imported, inherited by every pytest-xdist
  worker and every subprocess a test starts, and removed when the run ends.
  A program compiled once (the tiny training step, an attack) is loaded, not
  compiled again, by the next test or process.
* Expensive artefacts (a trained model, a trained workdir, a baseline attack)
  are built once per run by :func:`shared`, whichever worker asks first, under
  a file lock; the other workers wait and read them. Tests treat them as
  read-only: a test that must change a workdir copies it first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import pickle
import shutil
import tempfile
from typing import Callable, NamedTuple

_CACHE_OWNER = "ROBUSTJAX_TEST_CACHE_OWNER"
if os.environ.get(_CACHE_OWNER) is None:  # the first pytest process of this run
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="robustjax-jit-cache-")
    os.environ[_CACHE_OWNER] = str(os.getpid())
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the cache is configured)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

from robustjax.data import datasets as data  # noqa: E402
from robustjax.models import paper as models

# Also when a plugin imported JAX before this file set the environment.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_10K = pathlib.Path(os.environ.get("ROBUSTJAX_MNIST_DIR",
                                        REPO.parent / "shared" / "data" / "mnist-10k"))


def pytest_unconfigure(config):
    """The run's compilation cache goes with the process that made it."""
    if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def _run_root(tmp_path_factory) -> pathlib.Path:
    """The base temporary directory of the whole run, shared by the xdist workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shared(tmp_path_factory, name: str, build: Callable[[pathlib.Path], object]):
    """``build(directory)`` once per test run, whichever worker asks first; its
    (picklable) return value and the files it wrote in ``directory`` are reused by
    every later call with the same ``name``, in any worker."""
    root = _run_root(tmp_path_factory)
    folder, done = root / f"shared-{name}", root / f"shared-{name}.pkl"
    with _locked(root / f"shared-{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            value = build(folder)
            with open(done, "wb") as f:
                pickle.dump(value, f)
    with open(done, "rb") as f:
        return pickle.load(f)


def mnist_available() -> bool:
    return (MNIST_10K / "t10k-images-idx3-ubyte.gz").is_file()


def stand_in_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated stand-in for MNIST where the real digits are absent (uint8 images, labels).

    Ten fixed blob-shaped "digits" (the top 20% of a smoothed random field), each
    drawn shifted by up to 2 pixels, at a random intensity, over uniform noise. A
    naturally trained MnistCNN(4) then behaves as on real MNIST where the tests look:
    about 100% clean, about 55% under PGD-40 at eps 0.06, under 10% at 0.1, 0% at 0.3.
    """
    rng = np.random.default_rng(1234)
    field = rng.standard_normal((10, 28, 28))
    box = np.ones(7) / 7  # a 7x7 box blur, one axis at a time
    for axis in (1, 2):
        field = np.apply_along_axis(lambda v: np.convolve(v, box, mode="same"), axis, field)
    protos = (field > np.quantile(field, 0.8, axis=(1, 2), keepdims=True)).astype(np.float32)
    protos[:, :4], protos[:, -4:], protos[:, :, :4], protos[:, :, -4:] = 0, 0, 0, 0
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    dx, dy = rng.integers(-2, 3, (2, n))
    x = np.stack([np.roll(protos[c], (i, j), axis=(0, 1)) for c, i, j in zip(y, dx, dy)])
    x = x * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.random((n, 28, 28)) * 0.3
    return (np.clip(x, 0, 1)[..., None] * 255).astype(np.uint8), y


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_test, y_test) as float32 in [0, 1] and int32 labels."""
    if mnist_available():
        xtr, ytr = data.load("mnist", "train", MNIST_10K)
        xte, yte = data.load("mnist", "test", MNIST_10K)
    else:
        xtr, ytr = stand_in_digits(4000, seed=0)
        xte, yte = stand_in_digits(1000, seed=1)
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


def shared_natural(tmp_path_factory, digits, name: str = "natural", **kw) -> Trained:
    """:func:`train_natural` (``kw``) once per test run: its parameters are shared."""
    from flax import serialization

    def build(_):
        return serialization.to_bytes(train_natural(digits, **kw).params)

    model = models.MnistCNN(width=kw.get("width", 4))
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    params = serialization.from_bytes(template, shared(tmp_path_factory, name, build))
    apply = jax.jit(model.apply)
    _, _, xte, yte = digits
    return Trained(model, params, lambda x: apply(params, x), xte[:500], yte[:500])


@pytest.fixture(scope="session")
def natural_model(digits, tmp_path_factory) -> Trained:
    """MnistCNN(width=4) trained naturally for three epochs (about 15 s on 2 cores)."""
    return shared_natural(tmp_path_factory, digits)


class PgdBaselines(NamedTuple):
    eps: float
    n: int
    pgd100: object      # RobustAccuracy of PGD-100 (step 0.01)
    pgd100x5: object    # ... with 5 random restarts


@pytest.fixture(scope="session")
def pgd_baselines(natural_model, tmp_path_factory) -> PgdBaselines:
    """PGD-100 and PGD-100 x 5 on 200 real test digits at eps 0.06 against the natural model:
    the bar the AutoAttack tests hold APGD, APGD-T and the ensemble to."""
    from robustjax.attacks import first_order as attacks
    from robustjax.evaluation.accuracy import robust_accuracy

    m, eps, n = natural_model, 0.06, 200
    f = m.logits_fn

    def run(restarts):
        return robust_accuracy(f, m.x[:n], m.y[:n], lambda x, y, k: attacks.pgd(
            f, x, y, k, eps=eps, step_size=0.01, num_steps=100, restarts=restarts), eps=eps,
            batch_size=200, key=jax.random.PRNGKey(2))
    return shared(tmp_path_factory, "pgd_baselines",
                  lambda _: PgdBaselines(eps, n, run(1), run(5)))


def random_mnist_cnn(shape, *, x_seed: int, init_seed: int, width: int = 1):
    """``(logits_fn, x)``: the paper's MnistCNN(width) at random weights, uniform inputs."""
    m = models.MnistCNN(width=width)
    x = jax.random.uniform(jax.random.PRNGKey(x_seed), shape)
    v = m.init(jax.random.PRNGKey(init_seed), x)
    return (lambda z: m.apply(v, z)), x


def random_mlp(key, in_shape, num_classes=10):
    """A fixed random two-layer tanh network: a smooth test model for attacks."""
    d = int(np.prod(in_shape))
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (d, 32)) / np.sqrt(d)
    w2 = jax.random.normal(k2, (32, num_classes)) / np.sqrt(32)
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2 * 5.0


def assert_valid_adversarial(x_adv, x, *, eps, norm, bounds=(0.0, 1.0)):
    """Shape, dtype, finite, inside bounds and inside the eps-ball of x (float slack 1e-5,
    relative for L1 as in :func:`robustjax.evaluation.accuracy.validate_checks`)."""
    import chex

    from robustjax.attacks import first_order as attacks

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
        x, y = stand_in_digits(n, seed)
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


# The tiny MNIST training run of the entry-point tests: 3 steps of width 1.
TINY_FLAGS = ("--steps=3", "--batch_size=20", "--attack_steps=2", "--log_every=1",
              "--checkpoint_every=2", "--eval_examples=30", "--eval_batch_size=30",
              "--eval_attack_steps=2", "--lr=1e-3")


class TinyRuns(NamedTuple):
    pgd: str     # PGD-trained workdir, written by a real `python -m experiments.mnist`
    none: str    # naturally trained (seed 1) workdir, by the entry point run in this process
    stdout: str  # what the real process printed


@pytest.fixture(scope="session")
def tiny_runs(idx_dir, tmp_path_factory) -> TinyRuns:
    """Two tiny trained workdirs, built once per run and shared, read-only: a test that
    changes a workdir copies it first (``shutil.copytree``)."""
    from entry import in_process, subprocess_run

    def build(root):
        args = (f"--data_dir={idx_dir}", "--width=1", *TINY_FLAGS)
        p = subprocess_run("experiments.mnist", f"--workdir={root / 'pgd'}", *args)
        assert p.returncode == 0, p.stderr[-3000:]
        q = in_process("experiments.mnist", f"--workdir={root / 'none'}", *args,
                       "--train_attack=none", "--seed=1")
        assert q.returncode == 0, q.stderr[-3000:]
        return TinyRuns(str(root / "pgd"), str(root / "none"), p.stdout)
    return shared(tmp_path_factory, "tiny_runs", build)
