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

  tuned    robustjax's defaults (robustjax/runtime/xla_defaults.py, added when robustjax
           is imported: --xla_cpu_experimental_ynn_fusion_type=dot; YNNPACK keeps
           the matmuls, convolutions go to XLA's multi-threaded Eigen kernels).
  default  JAX's own settings (ROBUSTJAX_XLA_DEFAULTS=0).
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from benchmarks import bench_flags
from benchmarks.torch_port import configure_xla, torch_device, torch_mnist_cnn, torch_pgd

_BATCHES = flags.DEFINE_list("batches", ["1", "50", "256"], "Batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 40, "PGD steps.")
_REPEATS = bench_flags.repeats(5)
_MIN_TIME = flags.DEFINE_float("min_time", 0.5, "Seconds per timing sample (small batches "
                               "run several attacks per sample).")
_THREADS = bench_flags.threads()
_XLA_PRESET = bench_flags.xla_preset()
_UNROLL = flags.DEFINE_integer("unroll", 1, "fori_loop unroll of the JAX attack.")
_LOOP_FRIENDLY = flags.DEFINE_bool("loop_friendly", True, "MnistCNN(loop_friendly=...): False "
                                   "times the stock Flax/lax layers (the baseline).")
_JSON_OUT = bench_flags.json_out()
_PEER = bench_flags.peer()
_TORCH_COMPILE = bench_flags.torch_compile("Also time the PyTorch attack on "
                                           "torch.compile(model).")

EPS, STEP = 0.3, 0.01


def _torch_pgd(model, x, y, eps, step, steps):
    """PGD written the usual way in PyTorch."""
    return torch_pgd(model, x, y, eps=eps, step=step, steps=steps)


def main(argv):
    del argv
    threads = _THREADS.value or os.cpu_count()
    added_flags = configure_xla(_XLA_PRESET.value, _THREADS.value)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from robustjax.attacks import first_order as attacks
    from robustjax.models import paper as models

    try:
        import torch
    except ImportError:
        torch = None
    peer = _PEER.value and torch is not None
    platform = jax.default_backend()
    model = models.MnistCNN(16, loop_friendly=_LOOP_FRIENDLY.value)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    diff, tdev, nets = None, "none", {}
    if peer:
        tdev = torch_device(torch, threads, platform)
        net = torch_mnist_cnn(params).to(tdev)
        nets["torch"] = net
        if _TORCH_COMPILE.value:
            nets["torch_compiled"] = torch.compile(net)

        probe = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
        diff = np.abs(np.asarray(model.apply(params, probe)) -
                      net(torch.from_numpy(probe.transpose(0, 3, 1, 2)).to(tdev)).detach()
                      .cpu().numpy()).max()
        if diff > 1e-3:
            raise SystemExit(f"the two models disagree (max logit difference {diff}); "
                             "the comparison would not be like for like")

    def sync():
        if peer and tdev.type == "cuda":
            torch.cuda.synchronize()

    steps, unroll = _STEPS.value, _UNROLL.value

    @jax.jit
    def jax_attack(params, x, y, key):
        return attacks.pgd(lambda z: model.apply(params, z), x, y, key, eps=EPS,
                           step_size=STEP, num_steps=steps, unroll=unroll)

    device = jax.devices()[0].device_kind
    print(f"# PGD-{steps} (eps {EPS}, step {STEP}, random start), MnistCNN(16), fp32")
    print(f"# JAX {jax.__version__} on {platform} ({device}); PyTorch "
          f"{torch.__version__ if torch else 'not installed'} on {tdev}; threads {threads}; "
          f"XLA_FLAGS: {added_flags or 'none'}; loop_friendly={_LOOP_FRIENDLY.value}; "
          f"unroll={unroll}; max logit difference {diff}")
    rows = []
    for b in [int(v) for v in _BATCHES.value]:
        rng = np.random.default_rng(b)
        x = rng.random((b, 28, 28, 1)).astype(np.float32)
        y = rng.integers(0, 10, b).astype(np.int32)
        xj, yj = jnp.asarray(x), jnp.asarray(y)

        t0 = time.perf_counter()
        jax_attack(params, xj, yj, jax.random.PRNGKey(0)).block_until_ready()
        compile_s = time.perf_counter() - t0

        def run_jax(n, i):
            for j in range(n):
                out = jax_attack(params, xj, yj, jax.random.PRNGKey(i * 1000 + j))
            out.block_until_ready()

        runners = {"jax": run_jax}
        if peer:
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(tdev)
            yt = torch.from_numpy(y.astype(np.int64)).to(tdev)
            for name, net in nets.items():
                def run_torch(n, i, net=net):
                    for _ in range(n):
                        _torch_pgd(net, xt, yt, EPS, STEP, steps)
                    sync()
                run_torch(1, 0)  # warm-up (and compilation)
                runners[name] = run_torch

        # Attacks per sample so that a sample lasts about min_time.
        slowest = list(runners.values())[-1]
        t0 = time.perf_counter()
        slowest(1, 0)
        one = time.perf_counter() - t0
        n = max(1, int(_MIN_TIME.value / max(one, 1e-6)))
        times = {k: [] for k in runners}
        for i in range(_REPEATS.value):
            for k, run in runners.items():  # interleaved
                t0 = time.perf_counter()
                run(n, i + 1)
                times[k].append((time.perf_counter() - t0) / n)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = dict(batch=b, jax_ms=med["jax"] * 1e3, jax_img_s=b / med["jax"],
                   jax_compile_s=compile_s,
                   jax_spread=(min(times["jax"]) * 1e3, max(times["jax"]) * 1e3))
        for k in nets:
            row.update({f"{k}_ms": med[k] * 1e3, f"{k}_img_s": b / med[k],
                        f"{k}_spread": (min(times[k]) * 1e3, max(times[k]) * 1e3),
                        f"ratio_{k}": med[k] / med["jax"]})
        row["ratio"] = row.get("ratio_torch")
        rows.append(row)

    peers = list(nets)
    print("\n| " + " | ".join(["batch", "robustjax img/s"]
                              + [f"{k} img/s | ratio" for k in peers]
                              + ["robustjax ms/batch (min-max)"]) + " |")
    print("|---:|---:|" + "---:|---:|" * len(peers) + "---:|")
    for r in rows:
        cells = [f"{r[f'{k}_img_s']:.1f} | {r[f'ratio_{k}']:.2f}x" for k in peers]
        print(f"| {r['batch']} | {r['jax_img_s']:.1f} | " + " | ".join(cells)
              + (" | " if cells else "") + f"{r['jax_ms']:.1f} ({r['jax_spread'][0]:.1f}-"
              f"{r['jax_spread'][1]:.1f}) |")
    bench_flags.write_json(_JSON_OUT.value, dict(platform=platform, device=device, threads=threads,
                                                 loop_friendly=_LOOP_FRIENDLY.value, unroll=unroll,
                                                 xla_flags=added_flags, jax=jax.__version__,
                                                 torch=torch.__version__ if peer else None, peers=peers,
                                                 rows=rows))


if __name__ == "__main__":
    app.run(main)
