"""Published checkpoints -> Flax variables: PyTorch ``state_dict`` files and DeepMind's Haiku trees.

The zoo's layers are named by their PyTorch ``state_dict`` prefixes
(:mod:`robustjax.zoo.archs`), so every Flax leaf has exactly one checkpoint key:

===========================================  ===============================  ==============
Flax leaf                                    PyTorch key                      layout
===========================================  ===============================  ==============
``params/P/kernel`` (4-d, HWIO)              ``P.weight`` (OIHW)              transposed
``params/P/kernel`` (2-d, in x out)          ``P.weight`` (out x in)          transposed
``params/P/bias`` / ``params/P/scale``       ``P.bias`` / ``P.weight`` (BN)
``batch_stats/P/mean`` / ``.../var``         ``P.running_mean`` / ``P.running_var``
===========================================  ===============================  ==============

A checkpoint must fill every leaf and have nothing else: a missing key, a key with no
place in the architecture, or a wrong shape raises :class:`CheckpointError` naming the
first such parameter and both shapes. Two kinds of key are consumed by rule, never
dropped silently: BatchNorm's ``num_batches_tracked`` counters (training bookkeeping,
unused in eval mode), and the input-normalisation buffers some RobustBench models keep
in their state (``mu``/``sigma``, ``mean``/``std``, ``normalize.mean``/``normalize.std``),
which must equal the architecture's own mean/std.

DeepMind's JAX checkpoints (``np.load(path, allow_pickle=True)`` gives ``(params,
state)``, the Haiku trees of ``adversarial_robustness/jax/model_zoo.py``'s
``WideResNet``) are first renamed to the PyTorch layout of the same network
(``wide_res_net/~/resnet_lay_L_block_I/~/conv_0`` ``w`` ->
``layer.L.block.I.conv_0.weight``) and then go through the same checks.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointError", "read_torch", "read_haiku", "haiku_to_torch", "to_flax",
           "expected_keys", "read_checkpoint"]

_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "params")
_PREFIXES = ("module.", "model.")
_NORM_BUFFERS = (("mu", "sigma"), ("mean", "std"), ("normalize.mean", "normalize.std"))


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the architecture."""


def _is_tensor_map(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def _unwrap(obj, where: str) -> dict[str, np.ndarray]:
    """The flat ``name -> array`` map inside a checkpoint, prefixes stripped."""
    seen = []
    while isinstance(obj, Mapping) and not _is_tensor_map(obj):
        key = next((k for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            raise CheckpointError(
                f"{where}: not a state_dict: expected a mapping of parameter names to "
                f"tensors, or one under a key {list(_WRAPPERS)}; top-level keys are "
                f"{sorted(map(str, obj))[:8]}")
        seen.append(key)
        obj = obj[key]
    if not _is_tensor_map(obj):
        raise CheckpointError(f"{where}: not a state_dict (found {type(obj).__name__})")
    out = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
           for k, v in obj.items()}
    norm_keys = {k for pair in _NORM_BUFFERS for k in pair}
    for prefix in _PREFIXES:  # DataParallel's "module.", wrappers' "model."
        # (RobustBench's normalize_model wraps a network as "normalize." + "model.")
        if all(k.startswith(prefix) or k in norm_keys for k in out) and any(
                k.startswith(prefix) for k in out):
            out = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in out.items()}
    return out


def read_torch(path, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """A PyTorch ``.pt``/``.pth`` checkpoint as ``name -> numpy array``.

    Accepts a bare ``state_dict`` or one wrapped under ``state_dict``,
    ``model_state_dict`` (and similar) keys, with or without a ``module.`` prefix.
    Reads with ``torch.load(weights_only=True)``; a file that pickles other objects
    needs ``allow_pickle=True``, which runs its pickle: only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: file not found")
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"reading the PyTorch checkpoint {path!r} needs torch "
                              f"(pip install torch; see docs/published_models.md)") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "cannot read"
        hint = ("" if allow_pickle else "; if it is a trusted file that pickles more than "
                "tensors, pass allow_pickle=True (--allow_pickle)")
        raise CheckpointError(f"checkpoint {path!r}: torch cannot read it "
                              f"({type(e).__name__}: {str(e)[:300]}){hint}") from e
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    return _unwrap(obj, repr(path))


def read_haiku(path, *, allow_pickle: bool = False):
    """DeepMind's JAX checkpoint (``.npy``): the pickled ``(params, state)`` Haiku trees."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: file not found")
    if not allow_pickle:
        raise CheckpointError(f"checkpoint {path!r}: DeepMind's .npy checkpoints are pickles "
                              "of (params, state); pass allow_pickle=True (--allow_pickle) "
                              "for a file you trust")
    try:
        obj = np.load(path, allow_pickle=True)
        params, state = (obj.item() if obj.shape == () else tuple(obj))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path!r}: not a Haiku (params, state) pair "
                              f"({type(e).__name__}: {str(e)[:200]})") from e
    return params, state


_HK_BLOCK = re.compile(r"^resnet_lay_(\d+)_block_(\d+)$")


def haiku_to_torch(params: Mapping, state: Mapping) -> tuple[dict, dict]:
    """DeepMind's Haiku WideResNet trees -> (PyTorch-layout state_dict, key -> Haiku name).

    Haiku keeps one module per path (``wide_res_net/~/resnet_lay_0_block_0/~/conv_0``) and
    its leaves (``w``, ``b``, ``scale``, ``offset``; BN statistics in the state under
    ``.../~/mean_ema`` and ``.../~/var_ema``, whose ``average`` is the running value and
    whose ``counter``/``hidden`` are EMA bookkeeping). Conv kernels are HWIO, linear
    weights in x out, BN vectors ``[1, 1, 1, C]``.
    """
    def parts(mod: str) -> list:
        # "wide_res_net/~/resnet_lay_0_block_0/~/conv_0": "~" joins a module to the
        # submodules made in its constructor; the first part is the top module's name.
        return [p for p in mod.split("/") if p != "~"][1:]

    def prefix(ps: list) -> str:
        m = _HK_BLOCK.match(ps[0]) if ps else None
        if m:
            ps = ["layer", m.group(1), "block", m.group(2)] + ps[1:]
        return ".".join(ps)

    out, names = {}, {}
    for mod, leaves in params.items():
        base = prefix(parts(mod))
        for leaf, v in leaves.items():
            v = np.asarray(v)
            if leaf == "w" and v.ndim == 4:
                key, v = f"{base}.weight", v.transpose(3, 2, 0, 1)
            elif leaf == "w" and v.ndim == 2:
                key, v = f"{base}.weight", v.T
            elif leaf in ("b", "offset"):
                key, v = f"{base}.bias", v.reshape(-1)
            elif leaf == "scale":
                key, v = f"{base}.weight", v.reshape(-1)
            else:
                key = f"{base}.{leaf}"
            out[key], names[key] = v, f"{mod}/{leaf}"
    for mod, leaves in state.items():
        ps = parts(mod)
        stat = {"mean_ema": "running_mean", "var_ema": "running_var"}.get(ps[-1] if ps else "")
        for leaf, v in leaves.items():
            if stat and leaf == "average":
                key, v = f"{prefix(ps[:-1])}.{stat}", np.asarray(v).reshape(-1)
            elif stat and leaf in ("counter", "hidden"):
                continue  # EMA bookkeeping; the running value is "average"
            else:
                key = f"{prefix(ps)}.{leaf}"
            out[key], names[key] = np.asarray(v), f"{mod}/{leaf}"
    return out, names


def _torch_leaf(collection: str, leaf: str, shape) -> tuple[str, tuple]:
    if collection == "batch_stats":
        return {"mean": "running_mean", "var": "running_var"}[leaf], tuple(shape)
    if leaf == "kernel" and len(shape) == 4:
        return "weight", (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel":
        return "weight", (shape[1], shape[0])
    return {"scale": "weight", "bias": "bias"}[leaf], tuple(shape)


def _template(module, image_shape):
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False))


def expected_keys(module, image_shape=(32, 32, 3)) -> dict[str, tuple]:
    """The PyTorch ``state_dict`` keys and shapes that fill ``module``, in layer order."""
    out = {}
    for collection, mods in _template(module, image_shape).items():
        for prefix, leaves in mods.items():
            for leaf, sds in leaves.items():
                name, shape = _torch_leaf(collection, leaf, sds.shape)
                out[f"{prefix}.{name}"] = shape
    return out


def _shape(v) -> tuple:
    return tuple(int(d) for d in np.shape(v))


def to_flax(module, state_dict: Mapping[str, Any], *, name: str = "the architecture",
            image_shape=(32, 32, 3), source_names: Optional[Mapping[str, str]] = None) -> dict:
    """Flax variables ``{"params", "batch_stats"}`` of ``module`` from a PyTorch-layout dict.

    Raises :class:`CheckpointError` at the first key that is missing, has no place in
    ``module`` or has the wrong shape (both shapes named), with the totals of each.
    """
    src = dict(state_dict)
    label = (lambda k: f"{k!r}" if not source_names or k not in source_names
             else f"{source_names[k]!r} ({k})")
    template = _template(module, image_shape)
    bn_prefixes = set(template.get("batch_stats", {}))
    consumed, problems = set(), []
    # Normalisation buffers: consumed only when they equal the module's own mean/std.
    mean = getattr(module, "mean", None)
    for mkey, skey in _NORM_BUFFERS:
        if mkey in src or skey in src:
            got = [np.asarray(src.get(k, np.nan), np.float64).reshape(-1) for k in (mkey, skey)]
            want = None if mean is None else [np.asarray(module.mean), np.asarray(module.std)]
            if want is None or any(g.shape != w.shape or not np.allclose(g, w, rtol=0, atol=1e-6)
                                   for g, w in zip(got, want)):
                raise CheckpointError(
                    f"checkpoint normalises its input with {mkey}={got[0].tolist()}, "
                    f"{skey}={got[1].tolist()}, but {name} uses mean={module.mean}, "
                    f"std={module.std}; pass mean=/std= (or the registry ID) that match")
            consumed |= {mkey, skey}
    flax_vars: dict = {}
    for collection, mods in template.items():
        for prefix, leaves in mods.items():
            for leaf, sds in leaves.items():
                tname, tshape = _torch_leaf(collection, leaf, sds.shape)
                key = f"{prefix}.{tname}"
                if key not in src:
                    problems.append(("missing", f"{key!r} (shape {tshape}) is missing from "
                                                f"the checkpoint"))
                    continue
                consumed.add(key)
                v = src[key]
                if _shape(v) != tshape:
                    problems.append(("shape", f"{label(key)} has shape {_shape(v)} in the "
                                              f"checkpoint, but {name} expects {tshape}"))
                    continue
                v = np.asarray(v, np.float32)
                if v.ndim == 4 and collection == "params":
                    v = v.transpose(2, 3, 1, 0)
                elif v.ndim == 2:
                    v = v.T
                flax_vars.setdefault(collection, {}).setdefault(prefix, {})[leaf] = jnp.asarray(v)
    for key in src:
        if key in consumed:
            continue
        owner, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked" and owner in bn_prefixes:
            continue  # BatchNorm's training counter, unused in eval mode
        hint = (" (this checkpoint has the unused sub_block1 of RobustBench's WideResNet: "
                "pass sub_block1=True)" if key.startswith("sub_block1.") else "")
        problems.append(("extra", f"{label(key)} (shape {_shape(src[key])}) in the checkpoint "
                                  f"has no place in {name}{hint}"))
    if problems:
        counts = {k: sum(p[0] == k for p in problems) for k in ("missing", "extra", "shape")}
        raise CheckpointError(
            f"checkpoint does not fit {name}: {problems[0][1]} [{counts['missing']} missing, "
            f"{counts['extra']} unexpected, {counts['shape']} of the wrong shape]")
    return flax_vars


def read_checkpoint(path, *, fmt: str = "auto", allow_pickle: bool = False):
    """``(PyTorch-layout state_dict, key -> source name or None)`` of a checkpoint file.

    ``fmt``: ``"pytorch"`` (``.pt``/``.pth``/``.bin``), ``"haiku"`` (DeepMind's ``.npy``),
    or ``"auto"`` (by the file's extension).
    """
    path = os.fspath(path)
    if fmt == "auto":
        fmt = "haiku" if path.endswith((".npy", ".pkl")) else "pytorch"
    if fmt == "pytorch":
        return read_torch(path, allow_pickle=allow_pickle), None
    if fmt == "haiku":
        params, state = read_haiku(path, allow_pickle=allow_pickle)
        return haiku_to_torch(params, state)
    raise ValueError(f"fmt must be 'auto', 'pytorch' or 'haiku', got {fmt!r}")
