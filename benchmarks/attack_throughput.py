r"""PGD-40 throughput on Madry's MNIST network: robustjax against PyTorch, in one process.

The attack of the paper's MNIST experiments (Section 4, Table 1): L-inf PGD
with eps = 0.3, 40 steps of 0.01 and a random start, on ``MnistCNN(16)``
(32/64/1024, fp32). The peer is the same attack written the usual way in
PyTorch: an ``nn.Module`` in eval mode and ``torch.autograd.grad`` with respect
to the input only. Both models hold the same weights (checked: the logits must
agree) and use the same number of threads. Timings interleave the two
frameworks, repeat, and report medians; the ratio is robustjax / PyTorch
images per second.

Commands (figures in benchmarks/RESULTS.md):

  pip install torch==2.13.0   # CPU build; or `pip install -e ".[bench]"` on a GPU machine
  python -m benchmarks.attack_throughput                       # robustjax defaults
  python -m benchmarks.attack_throughput --xla_preset=default  # JAX's own defaults
  python -m benchmarks.attack_throughput --jax_platforms=cuda  # GPU (torch on CUDA)

XLA presets (CPU only):

  tuned    robustjax's defaults (robustjax/xla_defaults.py, added when robustjax
           is imported: --xla_cpu_experimental_ynn_fusion_type=dot; YNNPACK keeps
           the matmuls, convolutions go to XLA's multi-threaded Eigen kernels).
  default  JAX's own settings (ROBUSTJAX_XLA_DEFAULTS=0).
"""

from __future__ import annotations

import json
import os
import statistics
import time

from absl import app, flags

from benchmarks.torch_port import configure_xla, torch_mnist_cnn

_BATCHES = flags.DEFINE_list("batches", ["1", "50", "256"], "Batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 40, "PGD steps.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved timing repeats (median).")
_MIN_TIME = flags.DEFINE_float("min_time", 0.5, "Seconds per timing sample (small batches "
                               "run several attacks per sample).")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both (0: all cores).")
_XLA_PRESET = flags.DEFINE_enum("xla_preset", "tuned", ["tuned", "default"],
                                "tuned: robustjax's XLA defaults; default: JAX's (docstring).")
_UNROLL = flags.DEFINE_integer("unroll", 1, "fori_loop unroll of the JAX attack.")
_LOOP_FRIENDLY = flags.DEFINE_bool("loop_friendly", True, "MnistCNN(loop_friendly=...): False "
                                   "times the stock Flax/lax layers (the baseline).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Optional path for the results as JSON.")

EPS, STEP = 0.3, 0.01


def _torch_pgd(model, x, y, eps, step, steps):
    """PGD written the usual way in PyTorch."""
    import torch
    import torch.nn.functional as F

    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def main(argv):
    del argv
    threads = _THREADS.value or os.cpu_count()
    added_flags = configure_xla(_XLA_PRESET.value, _THREADS.value)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from robustjax import attacks, models

    platform = jax.default_backend()
    torch.set_num_threads(threads)
    tdev = torch.device("cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if tdev.type == "cuda" else (lambda: None)
    if tdev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model = models.MnistCNN(16, loop_friendly=_LOOP_FRIENDLY.value)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    net = torch_mnist_cnn(params).to(tdev)

    probe = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
    diff = np.abs(np.asarray(model.apply(params, probe)) -
                  net(torch.from_numpy(probe.transpose(0, 3, 1, 2)).to(tdev)).detach()
                  .cpu().numpy()).max()
    if diff > 1e-3:
        raise SystemExit(f"the two models disagree (max logit difference {diff}); "
                         "the comparison would not be like for like")

    steps, unroll = _STEPS.value, _UNROLL.value

    @jax.jit
    def jax_attack(params, x, y, key):
        return attacks.pgd(lambda z: model.apply(params, z), x, y, key, eps=EPS,
                           step_size=STEP, num_steps=steps, unroll=unroll)

    device = jax.devices()[0].device_kind
    print(f"# PGD-{steps} (eps {EPS}, step {STEP}, random start), MnistCNN(16), fp32")
    print(f"# JAX {jax.__version__} on {platform} ({device}); PyTorch {torch.__version__} on "
          f"{tdev}; threads {threads}; XLA_FLAGS: {added_flags or 'none'}; "
          f"loop_friendly={_LOOP_FRIENDLY.value}; unroll={unroll}; "
          f"max logit difference {diff:.1e}")
    rows = []
    for b in [int(v) for v in _BATCHES.value]:
        rng = np.random.default_rng(b)
        x = rng.random((b, 28, 28, 1)).astype(np.float32)
        y = rng.integers(0, 10, b).astype(np.int32)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(tdev)
        yt = torch.from_numpy(y.astype(np.int64)).to(tdev)

        t0 = time.perf_counter()
        jax_attack(params, xj, yj, jax.random.PRNGKey(0)).block_until_ready()
        compile_s = time.perf_counter() - t0
        _torch_pgd(net, xt, yt, EPS, STEP, steps)
        sync()

        def run_jax(n, i):
            for j in range(n):
                out = jax_attack(params, xj, yj, jax.random.PRNGKey(i * 1000 + j))
            out.block_until_ready()

        def run_torch(n, i):
            for _ in range(n):
                _torch_pgd(net, xt, yt, EPS, STEP, steps)
            sync()

        # Attacks per sample so that a sample lasts about min_time.
        t0 = time.perf_counter()
        run_torch(1, 0)
        one = time.perf_counter() - t0
        n = max(1, int(_MIN_TIME.value / max(one, 1e-6)))
        tj, tt = [], []
        for i in range(_REPEATS.value):
            t0 = time.perf_counter()
            run_jax(n, i + 1)
            tj.append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            run_torch(n, i + 1)
            tt.append((time.perf_counter() - t0) / n)
        mj, mt = statistics.median(tj), statistics.median(tt)
        rows.append(dict(batch=b, jax_ms=mj * 1e3, torch_ms=mt * 1e3, jax_img_s=b / mj,
                         torch_img_s=b / mt, ratio=mt / mj, jax_compile_s=compile_s,
                         jax_spread=(min(tj) * 1e3, max(tj) * 1e3),
                         torch_spread=(min(tt) * 1e3, max(tt) * 1e3)))

    print("\n| batch | robustjax img/s | PyTorch img/s | ratio | robustjax ms/batch "
          "(min-max) | PyTorch ms/batch (min-max) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['jax_img_s']:.1f} | {r['torch_img_s']:.1f} | "
              f"{r['ratio']:.2f}x | {r['jax_ms']:.0f} ({r['jax_spread'][0]:.0f}-"
              f"{r['jax_spread'][1]:.0f}) | {r['torch_ms']:.0f} ({r['torch_spread'][0]:.0f}-"
              f"{r['torch_spread'][1]:.0f}) |")
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(dict(platform=platform, device=device, threads=threads,
                           loop_friendly=_LOOP_FRIENDLY.value, unroll=unroll,
                           xla_flags=added_flags, jax=jax.__version__,
                           torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    app.run(main)
