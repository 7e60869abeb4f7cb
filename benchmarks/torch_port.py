"""Shared by the benchmarks: robustjax's MnistCNN in PyTorch with the same weights, and XLA CPU flags."""

from __future__ import annotations

import os

TUNED_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=dot"


def configure_xla(preset: str, threads: int) -> str:
    """Sets XLA_FLAGS before the JAX backend starts; returns what was added.

    ``tuned`` adds --xla_cpu_experimental_ynn_fusion_type=dot (YNNPACK keeps the
    matmuls, convolutions go to XLA's multi-threaded Eigen kernels; with the
    default fusion types YNNPACK runs each convolution on one thread);
    ``default`` adds nothing. ``threads`` > 0 also caps XLA's intra-op threads.
    """
    added = []
    if preset == "tuned":
        added.append(TUNED_CPU_FLAGS)
    if threads:
        added.append(f"--xla_cpu_multi_thread_eigen=true "
                     f"intra_op_parallelism_threads={threads}")
    if added:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + added).strip()
    return " ".join(added)


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
