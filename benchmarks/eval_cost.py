r"""What an evaluation costs per batch and per call: ``robust_accuracy`` with PGD-40 on
``MnistCNN(16)``, split into the attack time per batch and the fixed (compile) time.

``robust_accuracy`` attacks every example alone (a ``vmap`` over the batch, key
``fold_in(key, j)``) inside a ``shard_map`` over the mesh (:mod:`robustjax.runtime.mesh`).
Run it from two checkouts to compare versions on one machine:

  python -m benchmarks.eval_cost --data_dir=../shared/data/mnist-10k
  git worktree add /tmp/old ea2f3a5 && PYTHONPATH=/tmp/old python benchmarks/eval_cost.py \
      --data_dir=../shared/data/mnist-10k          # the batch-keyed version before the mesh
"""

from __future__ import annotations

import functools
import time

from absl import app, flags

_DATA = flags.DEFINE_string("data_dir", None, "MNIST IDX files (default: generated digits).")
_BATCH = flags.DEFINE_integer("batch_size", 250, "Examples per attack call.", lower_bound=1)
_BATCHES = flags.DEFINE_integer("batches", 4, "Batches in the long call.", lower_bound=2)


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    import robustjax
    from robustjax.attacks import first_order as attacks
    from robustjax.data import datasets as data
    from robustjax.evaluation import accuracy as evaluate
    from robustjax.models import paper as models

    n = _BATCH.value * _BATCHES.value
    if _DATA.value:
        x, y = data.load("mnist", "test", _DATA.value)
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n)
    x, y = x[:n].astype(np.float32) / 255, y[:n]
    model = models.MnistCNN(16)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    f = jax.jit(lambda z: model.apply(params, z))
    atk = functools.partial(attacks.pgd, f, eps=0.3, step_size=0.01, num_steps=40)
    times = {}
    for m in (_BATCH.value, n, _BATCH.value, n):  # every call compiles: jit per call
        t = time.perf_counter()
        evaluate.robust_accuracy(f, x[:m], y[:m], atk, eps=0.3, batch_size=_BATCH.value)
        times.setdefault(m, []).append(time.perf_counter() - t)
    one, many = min(times[_BATCH.value]), min(times[n])
    per_batch = (many - one) / (_BATCHES.value - 1)
    print(f"{robustjax.__file__}: JAX {jax.__version__} on {jax.devices()[0].device_kind} "
          f"x{jax.device_count()}; batch {_BATCH.value}: {per_batch:.2f} s per batch, "
          f"{one - per_batch:.2f} s fixed per call (compilation)")


if __name__ == "__main__":
    app.run(main)
