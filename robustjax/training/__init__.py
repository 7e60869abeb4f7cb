"""Adversarial training: the outer minimisation of Madry et al. (ICLR 2018), Sections 2-3.

* :mod:`~robustjax.training.config`: :class:`TrainConfig`, every setting of a run in
  sections (data, model, threat model, optimiser, objective, evaluation, run).
* :mod:`~robustjax.training.state`: model, optimiser and ``TrainState`` construction;
  ``model_logits_fn``.
* :mod:`~robustjax.training.trades`: the TRADES objective and its KL inner
  maximisation (Zhang et al., ICML 2019).
* :mod:`~robustjax.training.step`: the adversarial batch, the objectives (Madry,
  TRADES, IBP, CROWN-IBP) and the jitted Danskin step.
* :mod:`~robustjax.training.workdir`: the run directory (config.json, lock, metrics,
  checkpoints), :func:`load_run` / :func:`load_model`.
* :mod:`~robustjax.training.validation`: the held-out split, periodic robust
  validation, the best checkpoint (Rice et al. 2020), catastrophic-overfitting
  detection (Wong et al. 2020).
* :mod:`~robustjax.training.loop`: :func:`train_and_evaluate`: progress, preemption,
  divergence, resume and the end-of-run evaluation.

Imports: every other subpackage (this is the top layer).
"""

from robustjax.training import config, loop, state, step, trades, validation, workdir
from robustjax.training.config import TrainConfig
from robustjax.training.loop import (Diverged, Preempted, evaluate_model, evaluation_specs,
                                     train_and_evaluate)
from robustjax.training.state import (TrainState, build_model, compute_params, create_state,
                                      kernel_mask, learning_rate, make_optimizer,
                                      model_logits_fn)
from robustjax.training.step import (adversarial_batch, batch_indices, eps_at, make_train_step,
                                     stacked)
from robustjax.training.workdir import LoadedRun, load_model, load_run
from robustjax.runtime.mesh import data_sharding, make_mesh  # noqa: E402  (old robustjax.train names)
from robustjax.evaluation.suite import markdown_table  # noqa: E402

__all__ = ["config", "state", "step", "trades", "workdir", "validation", "loop",
           "TrainConfig", "TrainState", "create_state", "make_train_step", "build_model",
           "make_optimizer", "learning_rate", "kernel_mask", "model_logits_fn",
           "compute_params", "adversarial_batch", "batch_indices", "eps_at", "stacked",
           "train_and_evaluate", "load_model", "load_run", "LoadedRun", "evaluate_model",
           "evaluation_specs", "Preempted", "Diverged", "make_mesh", "data_sharding",
           "markdown_table"]
