"""Shared by the benchmarks: robustjax's MnistCNN in PyTorch with the same weights, PGD and
the device the usual PyTorch way, and XLA CPU flags."""

from __future__ import annotations

import os


def configure_xla(preset: str, threads: int) -> str:
    """Chooses the XLA flags before the JAX backend starts; returns the resulting XLA_FLAGS.

    ``tuned``: robustjax's own defaults (:mod:`robustjax.runtime.xla_defaults`, added
    when robustjax is imported); ``default``: none of them
    (``ROBUSTJAX_XLA_DEFAULTS=0``), i.e. JAX's own settings. ``threads`` > 0
    also caps XLA's intra-op threads. A flag already in the user's XLA_FLAGS
    is left as it is either way.
    """
    if preset == "default":
        os.environ["ROBUSTJAX_XLA_DEFAULTS"] = "0"
    if threads:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_cpu_multi_thread_eigen=true "
                                   f"intra_op_parallelism_threads={threads}").strip()
    import robustjax  # noqa: F401 -- adds its XLA defaults now, before any backend starts
    return os.environ.get("XLA_FLAGS", "")


def cpu_description() -> str:
    """``lscpu``'s model name and the widest x86 vector ISA (AVX-512 / AVX2), or the platform."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "").strip() or platform.machine()
    cpu_flags = fields.get("Flags", "").split()
    isa = ("AVX-512" if "avx512f" in cpu_flags else "AVX2" if "avx2" in cpu_flags
           else "no AVX2")
    family = fields.get("CPU family", "").strip()
    model = fields.get("Model", "").strip()
    return f"{name} (family {family} model {model}, {isa})"


def torch_mnist_cnn(params):
    """``MnistCNN(width)`` in PyTorch (NCHW input), robustjax's weights copied in, in eval mode.

    The widths are read from the parameters, so any member of the capacity
    family works (width 16: Madry's 32/64/1024 network).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    p = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in params["params"].items()}
    c1, c2 = p["conv1"]["kernel"].shape[-1], p["conv2"]["kernel"].shape[-1]
    hidden, classes = p["fc2"]["kernel"].shape

    class TorchMnistCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
            self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
            self.fc1 = nn.Linear(7 * 7 * c2, hidden)
            self.fc2 = nn.Linear(hidden, classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.relu(self.fc1(torch.flatten(x, 1)))
            return self.fc2(x)

    net = TorchMnistCNN()
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            getattr(net, name).weight.copy_(
                torch.from_numpy(np.ascontiguousarray(p[name]["kernel"].transpose(3, 2, 0, 1))))
            getattr(net, name).bias.copy_(torch.from_numpy(p[name]["bias"].copy()))
        # Flax flattens (h, w, c), PyTorch (c, h, w): permute fc1's input rows.
        k = p["fc1"]["kernel"].reshape(7, 7, c2, hidden).transpose(2, 0, 1, 3).reshape(-1, hidden)
        net.fc1.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
        net.fc1.bias.copy_(torch.from_numpy(p["fc1"]["bias"].copy()))
        net.fc2.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["fc2"]["kernel"].T)))
        net.fc2.bias.copy_(torch.from_numpy(p["fc2"]["bias"].copy()))
    return net.eval()


def torch_pgd(net, x, y, *, eps: float, step: float, steps: int):
    """L-inf PGD from a uniform random start, written the usual way in PyTorch."""
    import torch
    import torch.nn.functional as F

    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(x_adv), y), [x_adv])
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def torch_device(torch, threads: int, platform: str):
    """PyTorch's device beside JAX's ``platform`` (CUDA with cuDNN autotuning on a GPU)."""
    torch.set_num_threads(threads)
    device = torch.device("cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device
