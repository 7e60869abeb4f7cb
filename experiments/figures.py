"""What the figure commands share: the evaluated models, their test data, JSON and PNG output.

Used by experiments.loss_landscape and experiments.eps_sweep. Each figure
command evaluates an adversarially trained workdir and, optionally, a
naturally trained one (``--natural_workdir``), as the paper's figures do.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np
from absl import app, flags

from experiments.log_setup import setup_logging


class Model(NamedTuple):
    label: str      # "adversarial" / "natural", as in the figures' legends
    workdir: str
    run: object     # train.LoadedRun


def start(argv, *, workdir: str, natural_workdir: str | None, data_dir: str | None,
          examples: int):
    """Common start of a figure command: no stray arguments, logging; the models, test data."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    models = load_models(workdir, natural_workdir)
    x, y = test_data(models[0].run, data_dir, examples)
    return models, x, y


def start_from_flags(argv):
    """:func:`start` with the evaluation flags (``experiments.eval_flags``): ``--workdir``,
    ``--natural_workdir`` where the entry point has it, ``--data_dir``, ``--examples``."""
    f = flags.FLAGS
    natural = f.natural_workdir if "natural_workdir" in f else None
    return start(argv, workdir=f.workdir, natural_workdir=natural, data_dir=f.data_dir,
                 examples=f.examples)


def load_models(workdir: str, natural_workdir: str | None) -> list[Model]:
    """The workdir's model, then the natural one if given; they must share a dataset."""
    from robustjax import training as train

    if not workdir:
        raise app.UsageError("--workdir (a trained model's workdir) is required")
    run = train.load_run(workdir)
    models = [Model(_label(run), workdir, run)]
    if natural_workdir:
        nat = train.load_run(natural_workdir)
        if nat.config.data.dataset != models[0].run.config.data.dataset:
            raise ValueError(f"--natural_workdir holds a {nat.config.data.dataset} model, --workdir a "
                             f"{models[0].run.config.data.dataset} one: they must match")
        models.append(Model(_label(nat), natural_workdir, nat))
    if len({m.label for m in models}) < len(models):
        models = [m._replace(label=f"{m.label} ({os.path.basename(os.path.normpath(m.workdir))})")
                  for m in models]
    return models


def _label(run) -> str:
    if run.config.loss.objective == "trades":
        return "adversarial (TRADES)"
    if run.config.loss.objective in ("ibp", "crown_ibp"):
        return f"certified ({run.config.loss.objective.replace('_', '-').upper()})"
    if run.config.loss.objective == "gaussian":
        return f"Gaussian noise (sigma {run.config.loss.noise_sigma:g})"
    if run.config.loss.objective == "smoothadv":
        return f"SmoothAdv (sigma {run.config.loss.noise_sigma:g})"
    return {"none": "natural", "pgd": "adversarial (PGD)", "fgsm": "adversarial (FGSM)",
            "fgsm_rs": "adversarial (Fast AT)"}.get(run.config.threat.train_attack,
                                                    run.config.threat.train_attack)


def test_data(run, data_dir: str | None, examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``examples`` test images of the run's dataset, floats in [0, 1] (-1: all)."""
    from robustjax.data import datasets as data

    if examples == 0 or examples < -1:
        raise app.UsageError(f"--examples must be -1 (all) or positive, got {examples}")
    x, y = data.load(run.config.data.dataset, "test", data_dir or run.config.data.data_dir)
    n = len(x) if examples == -1 else min(examples, len(x))
    return x[:n].astype(np.float32) / 255.0, y[:n]


def model_info(model: Model) -> dict:
    cfg = model.run.config
    return dict(label=model.label, workdir=os.path.abspath(model.workdir),
                arch="CifarResNet" if cfg.data.dataset == "cifar10" else "MnistCNN", width=cfg.model.width,
                params=model.run.params, train_attack=cfg.threat.train_attack, train_eps=cfg.threat.eps,
                train_norm=cfg.threat.train_norm, step=model.run.step)


def write_json(path: str, obj: dict) -> None:
    """Atomic write: a crash never leaves half a file where a result was."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def pyplot():
    """matplotlib's pyplot with the file-only backend, or None (with a message) if missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): no plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
