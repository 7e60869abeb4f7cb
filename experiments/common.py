"""Flags shared by the training entry points, generated from TrainConfig, and flags -> config.

Every :class:`robustjax.training.config.TrainConfig` field is a flag of the same name,
with the field's default and help string; choices become enum flags and the
field's range an absl validator, so a new field needs one edit (in config.py).
Tuple fields (``lr_boundaries``, ``eval_attack_steps``) are comma-separated lists.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from experiments.log_setup import setup_logging
from robustjax.training.config import TrainConfig
from robustjax.data.datasets import DATASETS

FLAGS = flags.FLAGS
FIELDS = [f for _, f in TrainConfig.fields()]   # one flag per field, by its flat name

flags.DEFINE_string("workdir", None, "Output directory (config, metrics, checkpoints, results). "
                    "Rerunning with the same workdir resumes. Default: workdirs/<entry "
                    "point or dataset>, printed at the start.")


def _kind(f: dataclasses.Field):
    """The field's type (``Optional[str]`` -> str)."""
    return {"int": int, "float": float, "bool": bool, "tuple": tuple}.get(f.type, str)


def _define(f: dataclasses.Field) -> None:
    meta, default = f.metadata, f.default
    kind = _kind(f)
    if meta.get("choices"):
        flags.DEFINE_enum(f.name, default, list(meta["choices"]), meta["help"])
    elif kind is bool:
        flags.DEFINE_bool(f.name, default, meta["help"])
    elif kind is int:
        flags.DEFINE_integer(f.name, default, meta["help"], lower_bound=meta.get("minimum"))
    elif kind is float:
        flags.DEFINE_float(f.name, default, meta["help"], lower_bound=meta.get("minimum"))
    elif kind is tuple:
        flags.DEFINE_list(f.name, [str(v) for v in default], meta["help"])
    else:  # Optional[str]
        flags.DEFINE_string(f.name, default, meta["help"])


for _f in FIELDS:
    _define(_f)


def _from_flag(f: dataclasses.Field):
    value = FLAGS[f.name].value
    if _kind(f) is tuple:
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise ValueError(f"--{f.name} must be a comma-separated list of integers, "
                             f"got {','.join(value)}") from None
    return value


def config_from_flags(**overrides) -> TrainConfig:
    """TrainConfig from the command line (plus overrides), validated."""
    kw = {f.name: _from_flag(f) for f in FIELDS}
    kw.update(overrides)
    config = TrainConfig(**kw)
    config.validate()
    return config


def set_defaults(**defaults) -> None:
    """Changes flag defaults for one entry point (e.g. the CIFAR-10 recipe)."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)


def start(argv, datasets=DATASETS, default_workdir=None) -> str:
    """Common start of an entry point: no stray arguments, logging, the workdir (--workdir,
    or ``workdirs/<default_workdir or dataset>``, printed); returns the workdir."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.dataset not in datasets:
        raise app.UsageError(f"--dataset must be one of {datasets} here, got {FLAGS.dataset!r}")
    setup_logging()
    if FLAGS["workdir"].present and not FLAGS.workdir:
        raise app.UsageError("--workdir must not be empty")
    if FLAGS.workdir:
        return FLAGS.workdir
    workdir = os.path.join("workdirs", default_workdir or FLAGS.dataset)
    print(f"workdir: {workdir} (the default; rerun the same command to resume, or pass "
          f"--workdir)", flush=True)
    return workdir
