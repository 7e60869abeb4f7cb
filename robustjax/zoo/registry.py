"""Architecture names and the published-model registry (``models.json``).

Architecture names: ``wrn-D-W`` (TRADES/RobustBench WideResNet), ``dm-wrn-D-W``
(DeepMind's, swish), ``dm-preact-resnet-18``, ``preact-resnet-18``, ``resnet-18``,
``resnet-50``. :data:`ARCHITECTURES` lists the published sizes; any ``wrn-D-W`` /
``dm-wrn-D-W`` with D = 6n+4 builds (small ones make fast tests).

``models.json`` maps RobustBench model IDs (``robustbench/model_zoo/cifar10.py``,
``cifar100.py`` of robustbench 1.1.1) whose architectures are here to their
architecture, options, input normalisation, dataset, threat model, ε and the clean and
AutoAttack accuracies (%) of RobustBench's leaderboard (the tables of robustbench
1.1.1's README). An ID can appear under several (dataset, threat model) pairs
(``Engstrom2019Robustness`` is both L∞ and L2).
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import os
import re
from typing import Any, Optional

import flax.linen as nn

from robustjax.zoo import archs

__all__ = ["ARCHITECTURES", "ModelEntry", "build", "entries", "find", "NUM_CLASSES",
           "DATASET_STATS"]

ARCHITECTURES = ("wrn-28-10", "wrn-34-10", "wrn-34-20", "wrn-70-16",
                 "dm-wrn-28-10", "dm-wrn-34-20", "dm-wrn-70-16", "dm-wrn-106-16",
                 "dm-preact-resnet-18", "preact-resnet-18", "resnet-18", "resnet-50")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# The per-channel statistics the published models normalise with.
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
THREAT_MODELS = ("Linf", "L2")
_WRN = re.compile(r"^(dm-)?wrn-(\d+)-(\d+)$")
_OPTIONS = {
    "wrn": {"sub_block1", "bias_last"},
    "dm-wrn": {"activation"},
    "dm-preact-resnet-18": {"activation"},
    "preact-resnet-18": {"out_shortcut", "bn_before_fc"},
    "resnet-18": set(),
    "resnet-50": set(),
}


def _family(arch: str) -> str:
    m = _WRN.match(arch)
    if m:
        return "dm-wrn" if m.group(1) else "wrn"
    if arch in _OPTIONS:
        return arch
    raise ValueError(f"arch must be one of {list(ARCHITECTURES)} (or any wrn-D-W / "
                     f"dm-wrn-D-W with D = 6n+4), got {arch!r}")


def build(arch: str, *, num_classes: int = 10, mean=None, std=None, **options) -> nn.Module:
    """The Flax module of architecture ``arch``; ``mean``/``std`` normalise inside it.

    ``options`` are the original constructor's switches that change the parameter
    tree or the forward pass (``sub_block1``, ``activation``, ``out_shortcut``,
    ``bn_before_fc``, ``bias_last``); an unknown one raises ``ValueError``.
    """
    family = _family(arch)
    bad = set(options) - _OPTIONS[family]
    if bad:
        raise ValueError(f"options {sorted(bad)} do not apply to {arch!r}; it takes "
                         f"{sorted(_OPTIONS[family]) or 'none'}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    if mean is not None:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 values each, std > 0; got {mean}, {std}")
    act = options.get("activation", "swish")
    if act not in archs.ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(archs.ACTIVATIONS)}, got {act!r}")
    common = dict(num_classes=num_classes, mean=mean, std=std)
    if family in ("wrn", "dm-wrn"):
        depth, width = (int(v) for v in _WRN.match(arch).groups()[1:])
        if (depth - 4) % 6 or depth < 10 or width < 1:
            raise ValueError(f"{arch!r}: depth must be 6n+4 >= 10 and width >= 1")
        cls = archs.WideResNet if family == "wrn" else archs.DMWideResNet
        return cls(depth=depth, width=width, **common, **options)
    if family == "dm-preact-resnet-18":
        return archs.DMPreActResNet(depth=18, **common, **options)
    if family == "preact-resnet-18":
        return archs.PreActResNet(blocks=(2, 2, 2, 2), **common, **options)
    if family == "resnet-18":
        return archs.ResNet(blocks=(2, 2, 2, 2), **common)
    return archs.ResNet(blocks=(3, 4, 6, 3), bottleneck=True, **common)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One published model: what :func:`robustjax.zoo.load` needs, and what was reported."""
    id: str
    dataset: str
    threat_model: str
    eps: float
    arch: str
    options: dict[str, Any]
    mean: Optional[tuple[float, ...]]
    std: Optional[tuple[float, ...]]
    clean: float
    autoattack: float
    paper: str
    checkpoint_format: str = "pytorch"

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    def build(self) -> nn.Module:
        return build(self.arch, num_classes=self.num_classes, mean=self.mean, std=self.std,
                     **self.options)


_PATH = os.path.join(os.path.dirname(__file__), "models.json")


def _parse(raw: dict) -> ModelEntry:
    norm = raw.get("normalization")
    if isinstance(norm, str):  # the dataset's standard statistics
        mean, std = DATASET_STATS[norm]
    elif norm is None:
        mean = std = None
    else:
        mean, std = tuple(norm["mean"]), tuple(norm["std"])
    return ModelEntry(id=raw["id"], dataset=raw["dataset"], threat_model=raw["threat_model"],
                      eps=float(fractions.Fraction(str(raw["eps"]))),  # "8/255" or "0.5"
                      arch=raw["arch"], options=dict(raw.get("options", {})), mean=mean, std=std,
                      clean=float(raw["clean"]), autoattack=float(raw["autoattack"]),
                      paper=raw["paper"], checkpoint_format=raw.get("format", "pytorch"))


def entries() -> list[ModelEntry]:
    """Every registry entry, in file order."""
    with open(_PATH) as f:
        return [_parse(r) for r in json.load(f)["models"]]


def find(model_id: str, dataset: Optional[str] = None,
         threat_model: Optional[str] = None) -> ModelEntry:
    """The registry entry of ``model_id``, disambiguated by dataset and threat model."""
    hits = [e for e in entries() if e.id == model_id
            and (dataset is None or e.dataset == dataset)
            and (threat_model is None or e.threat_model == threat_model)]
    if len(hits) == 1:
        return hits[0]
    same_id = [f"{e.dataset}/{e.threat_model}" for e in entries() if e.id == model_id]
    if not same_id:
        raise ValueError(f"model {model_id!r} is neither an architecture "
                         f"({', '.join(ARCHITECTURES)}) nor a registry ID; "
                         f"python -m experiments.benchmark --list shows the IDs")
    if not hits:
        raise ValueError(f"model {model_id!r} is in the registry only as {same_id}; got "
                         f"dataset={dataset!r}, threat_model={threat_model!r}")
    raise ValueError(f"model {model_id!r} is in the registry as {same_id}: pass dataset= "
                     f"and threat_model= to choose")
