r"""Cost of one training step per method (natural, Madry PGD-k, TRADES, Fast AT), in one run.

  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot \
      python -m benchmarks.train_methods_step --data_dir=/usr/share/datasets/fashion-mnist

The step is ``robustjax.training.make_train_step`` with weight averaging on, as in
``experiments.compare_training`` (its defaults: MnistCNN(2), eps 0.1, batch 128,
PGD-10 of 0.025), run ``--steps_per_call`` steps per jitted call. Methods are
timed in turn, ``--repeats`` times, and the median milliseconds per step and
the ratio to Madry's step are printed: the training-time column of the
comparison, measured without anything else running.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from robustjax.data import datasets as data
from robustjax import training as train
from robustjax.training.config import TrainConfig

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Fashion-MNIST (or MNIST) IDX files.")
_DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist"], "Dataset.")
_WIDTH = flags.DEFINE_integer("width", 2, "MnistCNN width.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps_per_call", 10, "Training steps per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per method (median).")

METHODS = {"natural": dict(train_attack="none"),
           "madry": dict(train_attack="pgd"),
           "trades": dict(train_attack="pgd", objective="trades"),
           "fast_at": dict(train_attack="fgsm_rs")}


def main(argv):
    del argv
    x, y = data.load(_DATASET.value, "train", _DATA_DIR.value)
    images, labels = jnp.asarray(x), jnp.asarray(y)
    print(f"device: {jax.devices()[0].device_kind}, MnistCNN({_WIDTH.value}), batch "
          f"{_BATCH.value}")
    steps = {}
    for name, kw in METHODS.items():
        cfg = TrainConfig(dataset=_DATASET.value, width=_WIDTH.value, eps=0.1, attack_steps=10,
                          attack_step_size=0.025, batch_size=_BATCH.value, lr=1e-3,
                          ema_decay=0.995, **kw)
        model, tx = train.build_model(cfg), train.make_optimizer(cfg)
        state = train.create_state(cfg, model, tx, jnp.zeros((1,) + x.shape[1:], jnp.float32))
        run = jax.jit(train.stacked(train.make_train_step(cfg, model, tx), _STEPS.value))
        state, m = run(state, images, labels)  # compile
        jax.block_until_ready(m)
        times = []
        for _ in range(_REPEATS.value):
            t0 = time.perf_counter()
            state, m = run(state, images, labels)
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t0) / _STEPS.value)
        steps[name] = statistics.median(times)
    for name, s in steps.items():
        print(f"{name:>8s}: {1000 * s:7.1f} ms/step  {_BATCH.value / s:7.0f} examples/s  "
              f"{s / steps['madry']:.2f} x Madry's step")


if __name__ == "__main__":
    app.run(main)
