r"""One Madry training step (PGD-k + Adam) on MnistCNN: robustjax against its PyTorch twin.

robustjax's step is ``robustjax.training.make_train_step`` (batch selection,
the PGD attack under ``stop_gradient``, the loss on the adversarial batch,
Adam), run ``--steps_per_call`` steps per jitted call (1, as in training). The twin is the same
step written the usual way in PyTorch on ``MnistCNN(width)`` with the same
initial weights (``benchmarks.torch_port.torch_mnist_cnn``): PGD with
``autograd.grad`` on the input, then ``loss.backward()`` and
``torch.optim.Adam``. Same batch size, eps, PGD steps and threads; timings
interleave the two and report medians of ms per step.

  python -m benchmarks.train_step_compare --data_dir=../shared/data/mnist-10k

Defaults: width 8, batch 50, PGD-10 of 0.01 (eps 0.3), Adam 1e-4. Figures in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from benchmarks import bench_flags
from benchmarks.torch_port import configure_xla, cpu_description, torch_mnist_cnn

_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST IDX files.")
_WIDTH = flags.DEFINE_integer("width", 8, "MnistCNN width.")
_BATCH = flags.DEFINE_integer("batch", 50, "Batch size.")
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", 10, "PGD steps of the training attack.")
_STEPS = flags.DEFINE_integer("steps_per_call", 1, "Training steps per jitted call (the "
                              "training default is 1; > 1 is a lax.scan over steps).")
_CALLS = flags.DEFINE_integer("calls", 10, "Jitted calls per timing sample.")
_REPEATS = bench_flags.repeats(3)
_THREADS = bench_flags.threads()
_XLA_PRESET = bench_flags.xla_preset()

EPS, STEP, LR = 0.3, 0.01, 1e-4


def main(argv):
    del argv
    threads = _THREADS.value or os.cpu_count()
    xla_flags = configure_xla(_XLA_PRESET.value, _THREADS.value)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as F

    from robustjax.data import datasets as data
    from robustjax import training as train
    from robustjax.training.config import TrainConfig

    torch.set_num_threads(threads)
    x, y = data.load("mnist", "train", _DATA_DIR.value)
    images, labels = jnp.asarray(x), jnp.asarray(y)
    cfg = TrainConfig(dataset="mnist", width=_WIDTH.value, eps=EPS, attack_steps=_PGD_STEPS.value,
                      attack_step_size=STEP, batch_size=_BATCH.value, lr=LR)
    model, tx = train.build_model(cfg), train.make_optimizer(cfg)
    state = train.create_state(cfg, model, tx, jnp.zeros((1,) + x.shape[1:], jnp.float32))
    net = torch_mnist_cnn({"params": state.params})
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    k, calls = _STEPS.value, _CALLS.value
    run = jax.jit(train.stacked(train.make_train_step(cfg, model, tx), k))
    xt_all = torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    yt_all = torch.from_numpy(y.astype(np.int64))
    gen = np.random.default_rng(0)

    def torch_steps(n):
        for _ in range(n):
            idx = torch.from_numpy(gen.integers(0, len(y), _BATCH.value))
            xb, yb = xt_all[idx], yt_all[idx]
            x_adv = (xb + torch.empty_like(xb).uniform_(-EPS, EPS)).clamp(0, 1)
            for _ in range(_PGD_STEPS.value):
                x_adv.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(net(x_adv), yb), [x_adv])
                x_adv = x_adv.detach() + STEP * g.sign()
                x_adv = torch.min(torch.max(x_adv, xb - EPS), xb + EPS).clamp(0, 1)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x_adv.detach()), yb).backward()
            opt.step()

    t0 = time.perf_counter()
    state, m = run(state, images, labels)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    torch_steps(1)

    def jax_calls():
        nonlocal state
        for _ in range(calls):
            state, m = run(state, images, labels)
        jax.block_until_ready(m)

    times = bench_flags.interleaved_times(
        {"jax": jax_calls, "torch": lambda: torch_steps(k * calls)}, _REPEATS.value,
        per_call=k * calls)
    tj, tt = times["jax"], times["torch"]
    mj, mt = statistics.median(tj), statistics.median(tt)
    print(f"# Madry training step, MnistCNN({_WIDTH.value}), batch {_BATCH.value}, "
          f"PGD-{_PGD_STEPS.value} (eps {EPS}, step {STEP}) + Adam {LR}; {k} step(s) per call")
    print(f"# CPU: {cpu_description()}; threads {threads}; JAX {jax.__version__}; PyTorch "
          f"{torch.__version__}; XLA_FLAGS: {xla_flags or 'none'}; robustjax compile "
          f"{compile_s:.1f} s")
    print("\n| robustjax ms/step (min-max) | PyTorch ms/step (min-max) | ratio |")
    print("|---:|---:|---:|")
    print(f"| {mj * 1e3:.0f} ({min(tj) * 1e3:.0f}-{max(tj) * 1e3:.0f}) | {mt * 1e3:.0f} "
          f"({min(tt) * 1e3:.0f}-{max(tt) * 1e3:.0f}) | {mt / mj:.2f}x |")


if __name__ == "__main__":
    app.run(main)
