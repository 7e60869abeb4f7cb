"""Adversarial training: the outer minimisation of Madry et al. (ICLR 2018), Section 2-3.

The saddle-point problem (Eq. 2.1) is min_theta E[max_{delta in S} L(theta, x + delta, y)].
By Danskin's theorem (Section 2.1 and Appendix A) the gradient of the inner
maximum is the gradient of the loss at a maximiser, so each step

1. finds adversarial examples with the attack library (PGD or FGSM), wrapped in
   ``jax.lax.stop_gradient``;
2. takes the loss on the adversarial examples only, as the paper does (or
   TRADES' clean cross-entropy plus beta * KL, :mod:`robustjax.trades`), and
3. applies its parameter gradient through optax, and updates the weight
   average when ``ema_decay > 0``.

Attack and update are one jitted function. The whole training set lives on the
device, and the batch for step ``s`` is a pure function of ``s``: the
permutation of its epoch comes from ``fold_in(data_key, epoch)``. The attack's
key is ``fold_in(key, s)``. A run resumed from a checkpoint therefore sees the
same data and the same random starts as one that was never interrupted.

:func:`train_and_evaluate` is the library entry point that the experiments
call: the loop, with preemption (SIGTERM) and divergence handling. What the
run directory holds and how damaged files are handled is
:mod:`robustjax.workdir`; the configuration is :mod:`robustjax.config`. Both
``TrainConfig`` and ``load_model`` / ``load_run`` stay importable from here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import attacks, augment, data, models, suite, trades, validation
from robustjax import workdir as _workdir
from robustjax.config import TrainConfig
from robustjax.workdir import LoadedRun, load_model, load_run

__all__ = ["TrainConfig", "TrainState", "create_state", "make_train_step",
           "train_and_evaluate", "load_model", "load_run", "LoadedRun", "evaluate_model",
           "evaluation_specs", "Preempted", "Diverged"]

log = logging.getLogger("robustjax")


class Preempted(Exception):
    """SIGTERM stopped training; a checkpoint of the current step was saved."""

    def __init__(self, step: int, workdir: str):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint saved in {workdir}; "
                         "rerun the same command to resume")
        self.step = step


class Diverged(ValueError):
    """The training loss became NaN or infinite."""


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
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, config.steps)
    if config.lr_schedule == "piecewise":
        return optax.piecewise_constant_schedule(
            config.lr, {int(b): 0.1 for b in config.lr_boundaries})
    return config.lr


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam (the paper's MNIST optimizer) or momentum SGD (its CIFAR-10 one, Section 4).

    ``weight_decay`` adds ``weight_decay * w`` to the gradient of every kernel
    (an L2 penalty ``weight_decay / 2 * ||w||^2`` in the loss, as in Madry's
    cifar10_challenge), before the optimizer; biases and batch norm are exempt.
    """
    lr = learning_rate(config)
    opt = (optax.adam(lr) if config.optimizer == "adam"
           else optax.sgd(lr, momentum=config.momentum or None))
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=kernel_mask),
                           opt)
    return opt


def build_model(config: TrainConfig):
    """The network for ``config``: MnistCNN(width) for digits, CifarResNet(width) for CIFAR-10."""
    if config.dataset == "cifar10":
        return models.CifarResNet(width=config.width)
    return models.MnistCNN(width=config.width)


def create_state(config: TrainConfig, model, tx, sample: jax.Array) -> TrainState:
    """Initial state from ``config.seed``."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = model.init(init_key, sample, train=False)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    ema = config.ema_decay > 0
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      batch_stats=stats, key=train_key,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else None,
                      ema_batch_stats=jax.tree_util.tree_map(jnp.copy, stats) if ema else None)


def _eps_at(config: TrainConfig, step):
    if config.eps_ramp_steps == 0:
        return config.eps
    return config.eps * jnp.minimum(1.0, step / config.eps_ramp_steps)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int):
    """Indices of the batch for ``step``: epochs are key-driven permutations (Section 4 data).

    The incomplete tail of each permutation is dropped, so every batch is full.
    """
    per_epoch = num_examples // batch_size
    epoch, i = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)


def _compute_params(config: TrainConfig, params):
    """Parameters as used in the forward pass: float32, or cast to bfloat16."""
    if config.compute_dtype == "float32":
        return params
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a, params)


def model_logits_fn(config: TrainConfig, model, params, batch_stats, *, train: bool = False):
    """``x -> float32 logits`` in ``config.compute_dtype``; batch-norm statistics never updated.

    ``train=True`` uses each batch's own statistics (``bn_attack_mode="train"``).
    Inputs stay float32 at the boundary: in bfloat16 the gradient that reaches
    ``x`` is float32, so an attack's projection and clipping stay exact.
    """
    variables = {"params": _compute_params(config, params)}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    dtype = jnp.dtype(config.compute_dtype)

    def logits_fn(x):
        z = x.astype(dtype)
        if train and batch_stats:
            out, _ = model.apply(variables, z, train=True, mutable=["batch_stats"])
        else:
            out = model.apply(variables, z, train=False)
        return out.astype(jnp.float32)
    return logits_fn


def data_sharding(mesh: Optional[jax.sharding.Mesh]):
    """Batch axis over the mesh's ``"data"`` axis (None without a mesh)."""
    if mesh is None:
        return None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh over all devices (of all hosts): axis ``"data"``."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


def adversarial_batch(config: TrainConfig, model, state: TrainState, images, labels,
                      mesh=None):
    """``(x, x_adv, y, eps, batch_stats)`` of step ``state.step``: batch, augmentation, attack.

    ``images`` is the whole uint8 training set on the device. ``x_adv`` is
    wrapped in ``stop_gradient`` (Danskin, Section 2.1). ``batch_stats`` are
    the running averages after the attack: unchanged, except in
    ``bn_attack_mode="madry"``. With a ``mesh``, the batch is sharded over it.
    """
    data_key, attack_key_root = jax.random.split(state.key)
    idx = batch_indices(data_key, state.step, images.shape[0], config.batch_size)
    x = images[idx].astype(jnp.float32) / 255.0
    y = labels[idx]
    if mesh is not None:
        x = jax.lax.with_sharding_constraint(x, data_sharding(mesh))
        y = jax.lax.with_sharding_constraint(y, data_sharding(mesh))
    key = jax.random.fold_in(attack_key_root, state.step)
    if config.augment_pad or config.augment_flip:
        key, aug_key = jax.random.split(key)
        x = augment.pad_crop_flip(aug_key, x, pad=config.augment_pad, flip=config.augment_flip)
    eps = _eps_at(config, state.step)
    logits_fn = model_logits_fn(config, model, state.params, state.batch_stats,
                                train=config.bn_attack_mode == "train")
    if config.bn_attack_mode == "madry" and state.batch_stats:
        x_adv, stats = _pgd_updating_statistics(config, model, state, x, y, key, eps)
        return x, jax.lax.stop_gradient(x_adv), y, eps, stats
    if config.objective == "trades":
        x_adv = trades.trades_attack(logits_fn, x, y, key, eps=eps,
                                     step_size=config.attack_step_size,
                                     num_steps=config.attack_steps)
    elif config.train_attack == "pgd":
        x_adv = attacks.pgd(logits_fn, x, y, key, eps=eps, step_size=config.attack_step_size,
                            num_steps=config.attack_steps)
    elif config.train_attack == "fgsm_rs":
        x_adv = attacks.fgsm_rs(logits_fn, x, y, key, eps=eps)
    elif config.train_attack == "fgsm":
        x_adv = attacks.fgsm(logits_fn, x, y, eps=eps)
    else:
        x_adv = x
    # Danskin: the gradient of the inner max is the loss gradient at the maximiser.
    return x, jax.lax.stop_gradient(x_adv), y, eps, state.batch_stats


def _pgd_updating_statistics(config: TrainConfig, model, state: TrainState, x, y, key, eps):
    """L-inf PGD whose every forward pass runs batch norm in train mode and updates
    the running averages (``bn_attack_mode="madry"``: Madry's cifar10_challenge,
    where the TF batch norm updates its averages on every training-mode run).

    Built from the same parts as :func:`robustjax.attacks.pgd` (random start,
    sign ascent, projection, clipping), with the statistics in the loop carry.
    Returns ``(x_adv, batch_stats)``.
    """
    geometry = attacks.LINF
    params = _compute_params(config, state.params)
    dtype = jnp.dtype(config.compute_dtype)
    x_adv = jnp.clip(x + geometry.random_init(key, x.shape, eps).astype(x.dtype), 0.0, 1.0)

    def body(_, carry):
        x_adv, stats = carry

        def objective(z):
            logits, upd = model.apply({"params": params, "batch_stats": stats},
                                      z.astype(dtype), train=True, mutable=["batch_stats"])
            return jnp.sum(attacks.xent_loss(logits.astype(jnp.float32), y)), upd["batch_stats"]

        grad, new_stats = jax.grad(objective, has_aux=True)(x_adv)
        x_new = x_adv + config.attack_step_size * geometry.ascent(grad)
        x_adv = jnp.clip(x + geometry.project(x_new - x, eps), 0.0, 1.0).astype(x.dtype)
        new_stats = jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), new_stats, stats)
        return x_adv, new_stats

    return jax.lax.fori_loop(0, config.attack_steps, body, (x_adv, state.batch_stats))


def make_train_step(config: TrainConfig, model, tx, mesh=None):
    """``step(state, images, labels) -> (state, metrics)``: one Danskin step (Section 2.1).

    ``images`` (uint8) and ``labels`` are the whole training set on the
    device; the batch is chosen, augmented and attacked inside the step. With
    ``objective="madry"`` the loss is on the adversarial examples only, as in
    the paper; with ``"trades"`` it is :func:`robustjax.trades.trades_loss` on
    the clean and adversarial batches. Batch-norm statistics are updated by
    those training forward passes, never by the attack's (except
    ``bn_attack_mode="madry"``). With ``ema_decay > 0`` the averaged weights
    follow the new ones (``optax.incremental_update``). With a ``mesh`` the
    batch is sharded over its ``"data"`` axis (parameters replicated): the
    same program on one or many devices.
    """
    config.validate()
    dtype = jnp.dtype(config.compute_dtype)

    def forward(params, stats, z):
        """Train-mode logits (float32) and the batch-norm statistics after this pass."""
        v = {"params": _compute_params(config, params)}
        if not stats:
            return model.apply(v, z.astype(dtype), train=True).astype(jnp.float32), stats
        v["batch_stats"] = stats
        logits, upd = model.apply(v, z.astype(dtype), train=True, mutable=["batch_stats"])
        new = jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), upd["batch_stats"], stats)
        return logits.astype(jnp.float32), new

    def step_fn(state: TrainState, images, labels):
        x, x_adv, y, eps, stats = adversarial_batch(config, model, state, images, labels, mesh)

        def loss_fn(params):
            if config.objective == "trades":
                clean_logits, stats_clean = forward(params, stats, x)
                logits, new_stats = forward(params, stats_clean, x_adv)
                loss = trades.trades_loss(clean_logits, logits, y, beta=config.trades_beta)
            else:
                logits, new_stats = forward(params, stats, x_adv)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, new_stats)

        (loss, (adv_logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        nat_logits = model_logits_fn(config, model, state.params, state.batch_stats)(x)
        metrics = dict(loss=loss, adv_acc=jnp.mean(jnp.argmax(adv_logits, -1) == y),
                       nat_acc=jnp.mean(jnp.argmax(nat_logits, -1) == y), eps=eps)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=new_stats)
        if config.ema_decay > 0:
            rate = 1.0 - config.ema_decay
            new_state = new_state.replace(
                ema_params=optax.incremental_update(params, state.ema_params, rate),
                ema_batch_stats=optax.incremental_update(new_stats, state.ema_batch_stats,
                                                         rate))
        return new_state, metrics

    return step_fn


def _load_split(config: TrainConfig, split: str):
    """uint8 images [N, H, W, C] and int32 labels of ``split``."""
    return data.load(config.dataset, split, config.data_dir)


def evaluation_specs(config: TrainConfig) -> list:
    """Natural, FGSM and PGD-k rows (paper Table 1 layout) at the training eps."""
    eps, ss = config.eps, config.eval_attack_step_size
    specs = [suite.AttackSpec("Natural", attack="natural", eps=eps),
             suite.AttackSpec("FGSM", attack="fgsm", eps=eps)]
    specs += [suite.AttackSpec("PGD", eps=eps, steps=int(k), step_size=ss)
              for k in config.eval_attack_steps if int(k) > 0]
    return specs


def evaluate_model(logits_fn, x, y, config: TrainConfig, key=None) -> list[dict]:
    """Rows of :func:`evaluation_specs` plus the per-example worst case (Section 5)."""
    key = jax.random.PRNGKey(config.seed + 1) if key is None else key
    return suite.run_suite(logits_fn, x, y, evaluation_specs(config),
                           batch_size=config.eval_batch_size, key=key).rows


markdown_table = suite.markdown_table


def train_and_evaluate(config: TrainConfig, workdir: str, *,
                       stop_after: Optional[int] = None,
                       evaluate: bool = True) -> Optional[dict]:
    """Trains (or resumes) and evaluates; the library entry point of the experiments.

    Writes ``workdir/config.json``, appends to ``workdir/metrics.jsonl``, keeps
    orbax checkpoints in ``workdir/checkpoints`` and writes ``workdir/results.json``
    (see :mod:`robustjax.workdir`). Returns the results dict. ``stop_after=N``
    stops at step N with a checkpoint and no evaluation (returns None), as a
    time-boxed job would; the same call without it then resumes. With
    ``eval_every > 0`` the last ``val_examples`` training examples are held
    out and scored periodically (:class:`robustjax.validation.PeriodicValidation`);
    results.json names the best checkpoint. The test evaluation scores the
    weights :func:`load_model` returns (averaged when ``ema_decay > 0``);
    ``evaluate=False`` skips it (results.json then has no rows).

    What a run survives: a second process on the same workdir raises
    :class:`~robustjax.workdir.WorkdirInUseError` naming the owner; unreadable
    checkpoints are moved aside and the newest readable one is used; SIGTERM
    saves a checkpoint of the current step and raises :class:`Preempted`; a
    non-finite loss or parameter raises :class:`Diverged` naming the step, and
    no checkpoint is saved without checking that the state is finite.
    """
    config.validate()
    mesh = make_mesh()
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of "
                         f"devices ({mesh.size}) to shard the batch")
    primary = jax.process_index() == 0  # multi-host: one process writes the files
    xtr, ytr = _load_split(config, "train")
    xte, yte = _load_split(config, "test")
    val = None
    if config.eval_every:
        xtr, ytr, xval, yval = validation.split_validation(xtr, ytr, config.val_examples)
        val = (xval, yval)
    if config.batch_size > len(xtr):
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(xtr)} training "
                         "examples")
    owner = _workdir.lock(workdir) if primary else None
    try:
        if primary:
            _workdir.write_config(workdir, config)
        out = _train(config, workdir, mesh, primary, xtr, ytr, stop_after, val)
        if out is None:
            return None
        return _evaluate_and_write(config, workdir, primary, *out, xte, yte, evaluate)
    finally:
        if owner is not None:
            owner.close()


def _train(config: TrainConfig, workdir: str, mesh, primary: bool, xtr, ytr,
           stop_after: Optional[int], val=None):
    """The training loop; returns ``(final state, training summary)``, or None when
    stopped by ``stop_after``."""
    model = build_model(config)
    tx = make_optimizer(config)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = create_state(config, model, tx, jnp.zeros((1,) + xtr.shape[1:], jnp.float32))
    state = jax.device_put(state, replicated)
    manager, restored = _workdir.restore_latest(workdir, _workdir.checkpoint_manager(workdir),
                                                state)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if restored is not None:
        state = restored
        log.info("resumed from step %d", int(state.step))
    if primary:
        _workdir.truncate_metrics(metrics_path, int(state.step))
    validator = None
    if val is not None:
        validator = validation.PeriodicValidation(
            config, workdir, primary,
            lambda v: model_logits_fn(config, model, v["params"], v["batch_stats"]), *val)
        validator.resume(int(state.step))
    train_s = _workdir.last_record(metrics_path).get("train_s", 0.0)
    one_step = make_train_step(config, model, tx, mesh)
    calls = {1: jax.jit(_stacked(one_step, 1), donate_argnums=0)}
    if config.steps_per_call > 1:
        calls[config.steps_per_call] = jax.jit(_stacked(one_step, config.steps_per_call),
                                               donate_argnums=0)
    # The whole training set on every device, as uint8 (CIFAR-10: 150 MB).
    images, labels = jax.device_put(xtr, replicated), jax.device_put(ytr, replicated)
    log.info("training %s on %s: %d device(s), %d process(es), %s parameters",
             type(model).__name__, config.dataset, mesh.size, jax.process_count(),
             f"{models.param_count(state.params):,}")

    def save(step, state, pending, first):
        _check_finite(pending, first, state, step, manager)
        _workdir.save_state(manager, step, state)

    start = int(state.step)
    pending, t_last, s_last = [], time.time(), start
    end = config.steps if stop_after is None else min(stop_after, config.steps)
    done = start
    val_note = ""
    with _sigterm_flag() as sigterm, open(metrics_path if primary else os.devnull, "a") as mf:
        while done < end:
            # A call of steps_per_call steps, or single steps up to the next log,
            # checkpoint, evaluation or end step: at most two compiled programs.
            boundary = min(_next_multiple(done, config.log_every),
                           _next_multiple(done, config.checkpoint_every),
                           _next_multiple(done, config.eval_every or end), end)
            k = config.steps_per_call if boundary - done >= config.steps_per_call else 1
            state, m = calls[k](state, images, labels)
            pending.append(m)
            done += k
            if done % config.log_every == 0 or done == config.steps:
                _check_finite(pending, s_last + 1, None, done, manager)
                avg = {k: float(v) for k, v in jax.tree_util.tree_map(
                    lambda *a: jnp.mean(jnp.concatenate(a)), *pending).items()}
                pending = []
                now = time.time()
                train_s += now - t_last
                ex_s = (done - s_last) * config.batch_size / max(now - t_last, 1e-9)
                eta = (config.steps - done) * config.batch_size / max(ex_s, 1e-9)
                rec = dict(step=done, **avg, examples_per_s=ex_s, eta_s=eta, time=now,
                           train_s=train_s)
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                log.info("step %d/%d  loss %.4f  nat_acc %.3f  adv_acc %.3f  eps %.3f  "
                         "%.0f ex/s  ETA %s%s", done, config.steps, avg["loss"], avg["nat_acc"],
                         avg["adv_acc"], avg["eps"], ex_s, _fmt_time(eta), val_note)
                t_last, s_last = now, done
            evaluate_now = validator is not None and validator.due(done)
            if evaluate_now:
                # Evaluate, offer the state to best_checkpoint/, then checkpoint it
                # (see PeriodicValidation on resume).
                _check_finite(pending, s_last + 1, state, done, manager)
                manager.wait_until_finished()
                t_eval = time.time()
                rec = validator.run(done, state)
                val_note = f"  val {validator.attack} {rec[validator.scored]['robust_acc']:.3f}"
                t_last += time.time() - t_eval  # validation time is not training time
            if (done % config.checkpoint_every == 0 or done in (config.steps, end)
                    or evaluate_now):
                save(done, state, pending, s_last + 1)
            if sigterm.is_set():
                if manager.latest_step() != done:
                    save(done, state, pending, s_last + 1)
                manager.wait_until_finished()
                log.info("SIGTERM: saved the checkpoint of step %d; rerun to resume", done)
                raise Preempted(done, workdir)
    manager.wait_until_finished()
    if end < config.steps:
        log.info("stopped at step %d of %d (stop_after)", end, config.steps)
        return None
    summary = dict(final_step=int(state.step), train_s=train_s)
    if validator is not None:
        summary["best"] = validator.summary()
    return state, summary


def _stacked(step_fn, k: int):
    """``k`` training steps in one call (a ``lax.scan`` for k > 1); metrics on an axis [k]."""
    def run(state, images, labels):
        def one(st, _):
            st, m = step_fn(st, images, labels)
            return st, jax.tree_util.tree_map(jnp.asarray, m)
        if k == 1:
            state, m = one(state, None)
            return state, jax.tree_util.tree_map(lambda a: a[None], m)
        return jax.lax.scan(one, state, None, length=k)
    return run


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _check_finite(pending, first: int, state, step: int, manager) -> None:
    """Raises :class:`Diverged` if a pending loss (steps ``first, ...``) or ``state``'s
    parameters are not finite; the checkpoint on disk is then the last finite state."""
    bad_step = None
    if pending:
        losses = np.asarray(jnp.concatenate([m["loss"] for m in pending]))
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            bad_step = first + int(bad[0])
    if bad_step is None and state is not None:
        finite = jax.tree_util.tree_reduce(
            jnp.logical_and, jax.tree_util.tree_map(lambda a: jnp.all(jnp.isfinite(a)),
                                                    state.params))
        bad_step = None if bool(finite) else step
    if bad_step is not None:
        manager.wait_until_finished()
        last = manager.latest_step()
        raise Diverged(f"training diverged: non-finite loss or parameters at step {bad_step}; "
                       f"the last checkpoint ({'none' if last is None else f'step {last}'}) "
                       "holds the last finite state; lower --lr or check the data")


class _sigterm_flag:
    """Context manager: an Event set by SIGTERM while inside (main thread only)."""

    def __enter__(self):
        self.event, self.previous = threading.Event(), None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _evaluate_and_write(config: TrainConfig, workdir: str, primary: bool, state, summary,
                        xte, yte, evaluate: bool = True):
    model = build_model(config)
    n = len(xte) if config.eval_examples == -1 else min(config.eval_examples, len(xte))
    ema = config.ema_decay > 0
    params, stats = ((state.ema_params, state.ema_batch_stats) if ema
                     else (state.params, state.batch_stats))
    rows = []
    if evaluate:
        logits_fn = jax.jit(model_logits_fn(config, model, params, stats))
        rows = evaluate_model(logits_fn, xte[:n].astype(np.float32) / 255.0, yte[:n], config)
    results = dict(dataset=config.dataset, split="test", n=int(n) if evaluate else 0,
                   weights="ema" if ema else "last",
                   model=dict(arch=type(model).__name__, width=config.width,
                              params=models.param_count(state.params)),
                   training=dict(config.to_json(), **summary), rows=rows)
    if primary:
        suite.write_results(os.path.join(workdir, "results.json"), results, table=False)
    if rows:
        print(markdown_table(rows))
    return results


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
