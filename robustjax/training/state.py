"""The training state: model, optimizer and :class:`TrainState` construction.

What a run is made of before any step is taken, and what :mod:`robustjax.training.workdir`
needs to restore a checkpoint and :mod:`robustjax.training.validation` to score one:
the network of a :class:`~robustjax.training.config.TrainConfig` (the paper's MNIST CNN,
Section 4, or the CIFAR-10 wide ResNet), its optimizer (Adam for MNIST,
momentum SGD with the piecewise schedule and weight decay for CIFAR-10), the
initial state from the seed, and ``model_logits_fn``, the eval-mode
``x -> logits`` that every attack and evaluation composes with.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from robustjax.models import paper as models
from robustjax.training.config import TrainConfig

__all__ = ["TrainState", "kernel_mask", "learning_rate", "make_optimizer", "build_model",
           "create_state", "compute_params", "model_logits_fn"]


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state, batch-norm statistics, step and root PRNG key.

    With ``ema_decay > 0`` also the exponential moving averages of the
    parameters and batch-norm statistics (None otherwise).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    key: jax.Array
    ema_params: Any = None
    ema_batch_stats: Any = None


def kernel_mask(params):
    """True for convolution and dense kernels: the weights that weight decay applies to."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate(config: TrainConfig):
    """The learning-rate schedule of ``config`` (an optax schedule or a float)."""
    if config.optim.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.optim.lr, config.run.steps)
    if config.optim.lr_schedule == "piecewise":
        return optax.piecewise_constant_schedule(
            config.optim.lr, {int(b): 0.1 for b in config.optim.lr_boundaries})
    return config.optim.lr


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam (the paper's MNIST optimizer) or momentum SGD (its CIFAR-10 one, Section 4).

    ``weight_decay`` adds ``weight_decay * w`` to the gradient of every kernel
    (an L2 penalty ``weight_decay / 2 * ||w||^2`` in the loss, as in Madry's
    cifar10_challenge), before the optimizer; biases and batch norm are exempt.
    """
    lr = learning_rate(config)
    opt = (optax.adam(lr) if config.optim.optimizer == "adam"
           else optax.sgd(lr, momentum=config.optim.momentum or None))
    if config.optim.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.optim.weight_decay, mask=kernel_mask),
                           opt)
    return opt


def build_model(config: TrainConfig):
    """The network for ``config``: MnistCNN(width) for digits, CifarResNet(width) for CIFAR-10,
    or the ``arch`` of Gowal et al. 2018 (``dm_small`` / ``dm_medium`` / ``dm_large``)."""
    if config.model.arch != "madry":
        return models.DMCNN(arch=config.model.arch)
    if config.data.dataset == "cifar10":
        return models.CifarResNet(width=config.model.width)
    return models.MnistCNN(width=config.model.width)


def create_state(config: TrainConfig, model, tx, sample: jax.Array) -> TrainState:
    """Initial state from ``config.run.seed``."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.run.seed))
    variables = model.init(init_key, sample, train=False)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    ema = config.optim.ema_decay > 0
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      batch_stats=stats, key=train_key,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else None,
                      ema_batch_stats=jax.tree_util.tree_map(jnp.copy, stats) if ema else None)


def compute_params(config: TrainConfig, params):
    """Parameters as used in the forward pass: float32, or cast to bfloat16."""
    if config.model.compute_dtype == "float32":
        return params
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a, params)


def model_logits_fn(config: TrainConfig, model, params, batch_stats, *, train: bool = False):
    """``x -> float32 logits`` in ``config.model.compute_dtype``; batch-norm statistics never updated.

    ``train=True`` uses each batch's own statistics (``bn_attack_mode="train"``).
    Inputs stay float32 at the boundary: in bfloat16 the gradient that reaches
    ``x`` is float32, so an attack's projection and clipping stay exact.
    """
    variables = {"params": compute_params(config, params)}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    dtype = jnp.dtype(config.model.compute_dtype)

    def logits_fn(x):
        z = x.astype(dtype)
        if train and batch_stats:
            out, _ = model.apply(variables, z, train=True, mutable=["batch_stats"])
        else:
            out = model.apply(variables, z, train=False)
        return out.astype(jnp.float32)
    return logits_fn
