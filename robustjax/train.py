"""Adversarial training, as one import: the names of :mod:`robustjax.state`,
:mod:`robustjax.step`, :mod:`robustjax.loop` and :mod:`robustjax.workdir`.

The outer minimisation of Madry et al. (ICLR 2018), Sections 2-3, lives in
modules of one concern each:

* :mod:`robustjax.state`: model, optimizer and ``TrainState`` construction;
  ``model_logits_fn``.
* :mod:`robustjax.step`: the adversarial batch, the objectives (Madry,
  TRADES) and the jitted Danskin step.
* :mod:`robustjax.loop`: ``train_and_evaluate``, the loop with progress,
  preemption, divergence and the end-of-run evaluation.
* :mod:`robustjax.mesh`: the device mesh over every process.

This module re-exports them so that ``robustjax.train.<name>`` keeps working.
"""

from __future__ import annotations

from robustjax.config import TrainConfig
from robustjax.loop import (Diverged, Preempted, evaluate_model, evaluation_specs,
                            train_and_evaluate)
from robustjax.mesh import data_sharding, make_mesh
from robustjax.state import (TrainState, build_model, compute_params, create_state, kernel_mask,
                             learning_rate, make_optimizer, model_logits_fn)
from robustjax.step import adversarial_batch, batch_indices, eps_at, make_train_step, stacked
from robustjax.suite import markdown_table
from robustjax.workdir import LoadedRun, load_model, load_run

__all__ = ["TrainConfig", "TrainState", "create_state", "make_train_step", "build_model",
           "make_optimizer", "learning_rate", "kernel_mask", "model_logits_fn",
           "compute_params", "adversarial_batch", "batch_indices", "eps_at", "stacked",
           "train_and_evaluate", "load_model", "load_run", "LoadedRun", "evaluate_model",
           "evaluation_specs", "Preempted", "Diverged", "make_mesh", "data_sharding",
           "markdown_table"]
