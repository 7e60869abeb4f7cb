r"""PGD-7 adversarial training throughput on Madry's CIFAR-10 wide ResNet: robustjax vs PyTorch.

One training step of the paper's CIFAR-10 recipe (Section 4): pad-crop-flip
augmentation, PGD-7 of step 2/255 with a random start at eps = 8/255 (batch
norm in eval mode during the attack), then momentum SGD with weight decay 2e-4
on the kernels, on the adversarial batch in train mode. The robustjax step is
``robustjax.training.make_train_step`` (one jitted program). The peer is the same
step written the usual way in PyTorch: the same architecture as an
``nn.Module`` (weights copied from robustjax and checked: the logits must
agree), ``torch.autograd.grad`` with respect to the input for the attack,
``torch.optim.SGD``; optionally ``torch.compile`` on the module. Both run in
one process on the same device with the same batch and threads; timings
interleave and the medians are reported as adversarial training images per
second, with the ratio robustjax / PyTorch.

Model FLOP utilisation counts 17 forward-equivalents per image (7 attack
steps x (1 forward + 1 backward = 2) + 3 for the update step); the forward
cost F is measured by XLA's cost analysis (the issue quotes F(WRN-34-10) =
13.3 GFLOP).

  python -m benchmarks.train_throughput --widths=1 --batch=16        # CPU smoke
  python -m benchmarks.train_throughput --widths=1,10 --batch=128 \
      --dtypes=float32,bfloat16                                      # GPU (H100 target:
                                                                     # >= 1,400 img/s bf16)
"""

from __future__ import annotations

import os
import time

from benchmarks import bench_flags
from benchmarks.torch_port import torch_device
from absl import app, flags

_WIDTHS = flags.DEFINE_list("widths", ["1"], "CifarResNet widths (10: WRN-34-10).")
_BATCH = flags.DEFINE_integer("batch", 16, "Batch size (the paper: 128).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
_REPEATS = bench_flags.repeats(3)
_STEPS_PER_SAMPLE = flags.DEFINE_integer("steps_per_sample", 2, "Training steps per timing "
                                         "sample.")
_THREADS = bench_flags.threads()
_TORCH_COMPILE = bench_flags.torch_compile("torch.compile the PyTorch module.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of the device for the "
                           "utilisation column (0: unknown, no column).")
_JSON_OUT = bench_flags.json_out()
_PEER = bench_flags.peer()
_CHANNELS_LAST = flags.DEFINE_bool("torch_channels_last", False, "PyTorch in channels_last "
                                   "memory format (the fast layout for cuDNN with AMP).")

EPS, STEP, ATTACK_STEPS = 8 / 255, 2 / 255, 7
FORWARD_EQUIVALENTS = 2 * ATTACK_STEPS + 3


def _torch_resnet(width, variables):
    """Madry's pre-activation WRN in PyTorch (NCHW) with robustjax's weights and statistics."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)  # decay 0.9, as in robustjax

    class Unit(nn.Module):
        def __init__(self, cin, cout, stride, act_before):
            super().__init__()
            self.cin, self.cout, self.stride, self.act_before = cin, cout, stride, act_before
            self.init_bn, self.bn2 = bn(cin), bn(cout)
            # TF/Flax "SAME" with stride 2 pads (0, 1): explicit, as PyTorch's is symmetric.
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if stride == 2 else 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)

        def forward(self, x):
            if self.act_before:
                x = F.leaky_relu(self.init_bn(x), 0.1)
                shortcut = x
            else:
                shortcut = x
                x = F.leaky_relu(self.init_bn(x), 0.1)
            x = self.conv1(F.pad(x, (0, 1, 0, 1)) if self.stride == 2 else x)
            x = self.conv2(F.leaky_relu(self.bn2(x), 0.1))
            if self.cin != self.cout:
                s = self.stride
                shortcut = F.avg_pool2d(shortcut, s, s) if s > 1 else shortcut
                pad = (self.cout - self.cin) // 2
                shortcut = F.pad(shortcut, (0, 0, 0, 0, pad, self.cout - self.cin - pad))
            return x + shortcut

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.init_conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            filters = [16, 16 * width, 32 * width, 64 * width]
            units = []
            for stage, stride in zip(range(1, 4), (1, 2, 2)):
                for u in range(5):
                    cin = filters[stage - 1] if u == 0 else filters[stage]
                    units.append(Unit(cin, filters[stage], stride if u == 0 else 1,
                                      stage == 1 and u == 0))
            self.units = nn.ModuleList(units)
            self.final_bn = bn(filters[3])
            self.logit = nn.Linear(filters[3], 10)

        def forward(self, x):
            n = x[0].numel()
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
            x = (x - mean) / torch.clamp(std, min=1.0 / n ** 0.5)
            x = self.init_conv(x)
            for unit in self.units:
                x = unit(x)
            x = F.leaky_relu(self.final_bn(x), 0.1).mean(dim=(2, 3))
            return self.logit(x)

    net = Net()
    p, s = variables["params"], variables["batch_stats"]

    def t(a):
        return torch.from_numpy(np.array(a, np.float32))  # a writable copy

    def conv(m, k):
        m.weight.data.copy_(t(np.asarray(k).transpose(3, 2, 0, 1)))

    def bnc(m, pp, ss):
        m.weight.data.copy_(t(pp["scale"]))
        m.bias.data.copy_(t(pp["bias"]))
        m.running_mean.copy_(t(ss["mean"]))
        m.running_var.copy_(t(ss["var"]))

    conv(net.init_conv, p["init_conv"]["kernel"])
    i = 0
    for stage in range(1, 4):
        for u in range(5):
            name, unit = f"unit_{stage}_{u}", net.units[i]
            conv(unit.conv1, p[name]["conv1"]["kernel"])
            conv(unit.conv2, p[name]["conv2"]["kernel"])
            bnc(unit.init_bn, p[name]["init_bn"], s[name]["init_bn"])
            bnc(unit.bn2, p[name]["bn2"], s[name]["bn2"])
            i += 1
    bnc(net.final_bn, p["final_bn"], s["final_bn"])
    net.logit.weight.data.copy_(t(np.asarray(p["logit"]["kernel"]).T))
    net.logit.bias.data.copy_(t(p["logit"]["bias"]))
    return net


def _torch_step_fn(net, opt, images, labels, batch, autocast_dtype):
    """The PyTorch training step, written the usual way (attack in eval mode, update in train)."""
    import torch
    import torch.nn.functional as F

    dev = images.device
    base = torch.arange(32, device=dev)

    def augment(x):
        n = x.shape[0]
        padded = F.pad(x, (4, 4, 4, 4))
        oy = torch.randint(0, 9, (n,), device=dev)
        ox = torch.randint(0, 9, (n,), device=dev)
        rows = (oy[:, None] + base)[:, None, :, None].expand(n, 3, 32, 40)
        x = torch.gather(padded, 2, rows)
        cols = (ox[:, None] + base)[:, None, None, :].expand(n, 3, 32, 32)
        x = torch.gather(x, 3, cols)
        flip = torch.rand(n, device=dev) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def ctx():
        if autocast_dtype is None:
            return torch.autocast(dev.type, enabled=False)
        return torch.autocast(dev.type, dtype=autocast_dtype)

    def step():
        idx = torch.randint(0, images.shape[0], (batch,), device=dev)
        x, y = augment(images[idx].float() / 255.0), labels[idx]
        net.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(ATTACK_STEPS):
            x_adv.requires_grad_(True)
            with ctx():
                loss = F.cross_entropy(net(x_adv).float(), y)
            (g,) = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + STEP * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
        net.train()
        with ctx():
            loss = F.cross_entropy(net(x_adv.detach()).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def main(argv):
    del argv
    threads = _THREADS.value or os.cpu_count()
    if _THREADS.value:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_"
                                   f"eigen=true intra_op_parallelism_threads={threads}")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from robustjax import training as train

    try:
        import torch
    except ImportError:
        torch = None
    peer = _PEER.value and torch is not None
    platform = jax.default_backend()
    tdev = "none"
    if peer:
        tdev = torch_device(torch, threads, platform)

    def sync():
        if peer and tdev.type == "cuda":
            torch.cuda.synchronize()
    batch = _BATCH.value
    rng = np.random.default_rng(0)
    n_data = max(1024, batch)
    images = rng.integers(0, 256, (n_data, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, n_data).astype(np.int32)
    device = jax.devices()[0].device_kind
    print(f"# PGD-{ATTACK_STEPS} adversarial training step (eps 8/255, step 2/255), "
          f"CifarResNet, batch {batch}")
    print(f"# JAX {jax.__version__} on {platform} ({device}); PyTorch "
          f"{torch.__version__ if torch else 'not installed'} on {tdev}; threads {threads}; "
          f"torch.compile={_TORCH_COMPILE.value}; channels_last={_CHANNELS_LAST.value}")
    rows = []
    for width in [int(w) for w in _WIDTHS.value]:
        for dtype in _DTYPES.value:
            cfg = train.TrainConfig(
                dataset="cifar10", width=width, eps=EPS, attack_steps=ATTACK_STEPS,
                attack_step_size=STEP, optimizer="momentum", lr=0.1, weight_decay=2e-4,
                batch_size=batch, steps=80_000, augment_pad=4, augment_flip=True,
                compute_dtype=dtype)
            model = train.build_model(cfg)
            tx = train.make_optimizer(cfg)
            state = train.create_state(cfg, model, tx, jnp.zeros((1, 32, 32, 3)))
            # Non-trivial batch statistics, so that the logit check means something.
            _, upd = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                 jnp.asarray(images[:64], jnp.float32) / 255, train=True,
                                 mutable=["batch_stats"])
            state = state.replace(batch_stats=upd["batch_stats"])
            diff, tstep = None, None
            if peer:
                net = _torch_resnet(width, {"params": state.params,
                                            "batch_stats": state.batch_stats}).to(tdev)
                probe = images[:4].astype(np.float32) / 255
                ref = np.asarray(model.apply({"params": state.params,
                                              "batch_stats": state.batch_stats}, probe,
                                             train=False))
                with torch.no_grad():
                    got = net.eval()(torch.from_numpy(probe.transpose(0, 3, 1, 2).copy())
                                     .to(tdev)).cpu().numpy()
                diff = float(np.abs(ref - got).max())
                if diff > 1e-2 * max(1.0, float(np.abs(ref).max())):
                    raise SystemExit(f"width {width}: the two models disagree (max logit "
                                     f"difference {diff}); not a like-for-like comparison")
                decay = [q for n, q in net.named_parameters()
                         if n.endswith("weight") and q.ndim > 1]
                other = [q for n, q in net.named_parameters()
                         if not (n.endswith("weight") and q.ndim > 1)]
                opt = torch.optim.SGD([{"params": decay, "weight_decay": 2e-4},
                                       {"params": other, "weight_decay": 0.0}], lr=0.1,
                                      momentum=0.9)
                timages = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(tdev)
                if _CHANNELS_LAST.value:
                    net = net.to(memory_format=torch.channels_last)
                    timages = timages.contiguous(memory_format=torch.channels_last)
                tnet = torch.compile(net) if _TORCH_COMPILE.value else net
                tlabels = torch.from_numpy(labels.astype(np.int64)).to(tdev)
                tstep = _torch_step_fn(tnet, opt, timages, tlabels, batch,
                                       torch.bfloat16 if dtype == "bfloat16" else None)
            jstep = jax.jit(train.make_train_step(cfg, model, tx), donate_argnums=0)
            ji, jl = jax.device_put(images), jax.device_put(labels)
            fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
                {"params": state.params, "batch_stats": state.batch_stats},
                jnp.zeros((1, 32, 32, 3))).compile().cost_analysis()
            fwd = fwd[0] if isinstance(fwd, (list, tuple)) else fwd
            flops_fwd = float(fwd.get("flops", 0.0))

            t0 = time.perf_counter()
            state, m = jstep(state, ji, jl)
            jax.block_until_ready(m)
            compile_s = time.perf_counter() - t0
            if peer:
                tstep()
                sync()
            k = _STEPS_PER_SAMPLE.value

            def jax_steps():
                nonlocal state
                for _ in range(k):
                    state, m = jstep(state, ji, jl)
                jax.block_until_ready(m)

            def torch_steps():
                for _ in range(k):
                    tstep()
                sync()

            runs = dict(jax=jax_steps, **(dict(torch=torch_steps) if peer else {}))
            mid = bench_flags.medians(bench_flags.interleaved_times(runs, _REPEATS.value, k))
            mj, mt = mid["jax"], mid.get("torch")
            tflops = FORWARD_EQUIVALENTS * flops_fwd * batch / mj / 1e12
            rows.append(dict(width=width, dtype=dtype, batch=batch, jax_img_s=batch / mj,
                             torch_img_s=batch / mt if peer else None,
                             ratio=mt / mj if peer else None, jax_compile_s=compile_s,
                             forward_gflop=flops_fwd / 1e9, jax_tflops=tflops,
                             mfu=tflops / _PEAK.value if _PEAK.value else None,
                             logit_diff=diff))
            print(f"width {width} {dtype}: robustjax {batch / mj:.1f} img/s" + (
                f", PyTorch {batch / mt:.1f} img/s, ratio {mt / mj:.2f}x" if peer else ""),
                flush=True)

    print("\n| width | dtype | batch | robustjax img/s | PyTorch img/s | ratio | forward GFLOP "
          "| robustjax TFLOP/s | MFU |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        tt = "-" if r["torch_img_s"] is None else f"{r['torch_img_s']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"| {r['width']} | {r['dtype']} | {r['batch']} | {r['jax_img_s']:.1f} | "
              f"{tt} | {ratio} | {r['forward_gflop']:.2f} | "
              f"{r['jax_tflops']:.3f} | {mfu} |")
    bench_flags.write_json(_JSON_OUT.value, dict(platform=platform, device=device, threads=threads,
                                                 jax=jax.__version__, torch=torch.__version__ if peer else None,
                                                 torch_compile=_TORCH_COMPILE.value,
                                                 channels_last=_CHANNELS_LAST.value, rows=rows))


if __name__ == "__main__":
    app.run(main)
