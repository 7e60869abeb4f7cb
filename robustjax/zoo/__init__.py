"""Published robust models in Flax: architectures, checkpoint converters, the registry.

``load(name, checkpoint=PATH)`` returns a jitted ``logits_fn(x)`` (x NHWC in [0, 1] ->
float32 logits, eval mode) that composes with every attack, ``run_suite``,
``autoattack``, the sweeps and the landscape, like :func:`robustjax.load_model`.

``name`` is an architecture (:data:`ARCHITECTURES`, or any ``wrn-D-W`` /
``dm-wrn-D-W``) or a RobustBench model ID of the registry (``models.json``: the
architecture, its options and input normalisation, dataset, threat model, ε and the
accuracies RobustBench reports). Nothing is downloaded: point ``checkpoint=`` at the
file (docs/published_models.md says where each comes from).

Imports: nothing of robustjax outside the zoo.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from robustjax.zoo import archs, convert, registry
from robustjax.zoo.convert import CheckpointError
from robustjax.zoo.registry import ARCHITECTURES, ModelEntry, build, entries, find

__all__ = ["load", "load_variables", "resolve", "ARCHITECTURES", "ModelEntry", "build",
           "entries", "find", "CheckpointError", "archs", "convert", "registry"]


def resolve(name: str, *, dataset: Optional[str] = None, threat_model: Optional[str] = None,
            num_classes: Optional[int] = None, mean=None, std=None, **options):
    """``(module, entry or None)`` for an architecture name or a registry ID."""
    try:
        registry._family(name)
        is_arch = True
    except ValueError:
        is_arch = False
    if is_arch:
        if num_classes is None:
            num_classes = registry.NUM_CLASSES.get(dataset or "cifar10")
        return build(name, num_classes=num_classes, mean=mean, std=std, **options), None
    entry = find(name, dataset, threat_model)
    given = {k: v for k, v in dict(num_classes=num_classes, mean=mean, std=std).items()
             if v is not None}
    if given or options:
        raise ValueError(f"{name!r} is a registry ID: its architecture, classes and "
                         f"normalisation come from the registry; got overrides "
                         f"{sorted(given) + sorted(options)}")
    return entry.build(), entry


def load_variables(module, checkpoint, *, fmt: str = "auto", allow_pickle: bool = False,
                   name: str = "the architecture") -> dict:
    """Flax variables of ``module`` from a checkpoint file (see :mod:`.convert`)."""
    state_dict, source_names = convert.read_checkpoint(checkpoint, fmt=fmt,
                                                       allow_pickle=allow_pickle)
    return convert.to_flax(module, state_dict, name=name, source_names=source_names)


def load(name: str, checkpoint=None, *, dataset: Optional[str] = None,
         threat_model: Optional[str] = None, num_classes: Optional[int] = None,
         mean=None, std=None, fmt: str = "auto", allow_pickle: bool = False,
         variables: Optional[dict] = None, **options) -> Callable:
    """A published model as a ``logits_fn`` (jitted inside) (x NHWC in [0, 1] -> float32 logits).

    Args:
      name: an architecture (``"wrn-28-10"``, ``"dm-wrn-70-16"``, ``"resnet-18"``...)
        or a registry ID (``"Gowal2020Uncovering_70_16_extra"``); ``dataset`` and
        ``threat_model`` pick among IDs listed under several (e.g. ``"cifar100"``,
        ``"Linf"``).
      checkpoint: a PyTorch ``state_dict`` file (``.pt``/``.pth``) or DeepMind's JAX
        ``.npy``. Required unless ``variables`` are given.
      num_classes, mean, std, options: for an architecture name only (a registry ID
        fixes them): classes (default from ``dataset``, else 10), the input
        normalisation inside the model, and the original's switches
        (``sub_block1``, ``activation``, ``out_shortcut``, ``bn_before_fc``).
      fmt: ``"auto"`` (by extension), ``"pytorch"`` or ``"haiku"``.
      allow_pickle: let a checkpoint run its pickle (DeepMind's ``.npy``, PyTorch
        files that store more than tensors). Only for files you trust.
      variables: Flax variables to use instead of a checkpoint.

    The function carries ``.module``, ``.variables`` and ``.entry`` (the registry
    entry, or None).
    """
    module, entry = resolve(name, dataset=dataset, threat_model=threat_model,
                            num_classes=num_classes, mean=mean, std=std, **options)
    if entry is not None:
        for field, given in (("dataset", dataset), ("threat_model", threat_model)):
            if given is not None and getattr(entry, field) != given:
                raise ValueError(f"{name!r} is a {getattr(entry, field)} model, got "
                                 f"{field}={given!r}")
    if (checkpoint is None) == (variables is None):
        raise ValueError("pass exactly one of checkpoint= (a file) or variables=")
    if variables is None:
        if not os.path.exists(os.fspath(checkpoint)):
            raise CheckpointError(f"checkpoint {os.fspath(checkpoint)!r}: file not found")
        if fmt == "auto" and entry is not None and not os.fspath(checkpoint).endswith(
                (".npy", ".pkl")):
            fmt = "pytorch"
        variables = load_variables(module, checkpoint, fmt=fmt, allow_pickle=allow_pickle,
                                   name=f"{name} ({type(module).__name__})")

    apply = jax.jit(lambda v, x: module.apply(v, x.astype(jnp.float32),
                                              train=False).astype(jnp.float32))

    def logits_fn(x):
        # The weights are an argument of the jitted apply, not constants of its program.
        return apply(variables, x)

    logits_fn.module, logits_fn.variables, logits_fn.entry = module, variables, entry
    return logits_fn
