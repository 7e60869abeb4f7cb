"""The peers' own released model definitions, for equivalence tests (the ``peers`` extra).

RobustBench's architecture files (robustbench 1.1.1 on PyPI) and pyautoattack's
``examples/resnet.py`` are loaded by path from the installed packages, so the
reference is their released code, not a copy. Importing the ``robustbench`` package
itself would import torchvision (its data loaders), which the CPU build of torch
this project installs cannot load; the architecture files need only torch.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed (pip install -e '.[peers]')")
    return list(spec.submodule_search_locations)[0]


def load_file(package: str, relpath: str):
    """The module at ``relpath`` inside the installed ``package``, imported by path."""
    path = os.path.join(_package_dir(package), relpath)
    name = f"_peer_{package}_{relpath.replace('/', '_').removesuffix('.py')}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def robustbench_arch(module: str):
    """``robustbench/model_zoo/architectures/<module>.py``."""
    return load_file("robustbench", f"model_zoo/architectures/{module}.py")


def autoattack_example(name: str):
    """``pyautoattack/examples/<name>`` (a path for data files, a module for .py)."""
    if name.endswith(".py"):
        return load_file("pyautoattack", f"examples/{name}")
    return os.path.join(_package_dir("pyautoattack"), "examples", name)


def randomise(model, seed: int = 0):
    """Random weights and random batch-norm statistics (so eval-mode BN is not identity)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1:  # BN scale
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:  # He-scaled weights keep the activations O(1) through deep nets
                fan_in = int(np.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).float()).numpy()


def state_dict_numpy(model) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
