"""One step of adversarial training: the outer minimisation of Madry et al. (ICLR 2018),
Sections 2-3.

The saddle-point problem (Eq. 2.1) is min_theta E[max_{delta in S} L(theta, x + delta, y)].
By Danskin's theorem (Section 2.1 and Appendix A) the gradient of the inner
maximum is the gradient of the loss at a maximiser, so each step

1. chooses the batch of its step and augments it (:func:`adversarial_batch`),
2. finds adversarial examples with the attack library (PGD, FGSM or FGSM-RS,
   or TRADES' KL attack), wrapped in ``jax.lax.stop_gradient``; for randomized
   smoothing, adds Gaussian noise (Cohen et al. 2019) or runs SmoothAdv's attack on
   the smoothed classifier (Salman et al. 2019, :mod:`robustjax.smoothing.smoothadv`);
3. takes the loss on the adversarial examples only, as the paper does (or
   TRADES' clean cross-entropy plus beta * KL, :mod:`robustjax.training.trades`), and
4. applies its parameter gradient through optax, and updates the weight
   average when ``ema_decay > 0``.

Attack and update are one jitted function. The whole training set lives on the
device, and the batch for step ``s`` is a pure function of ``s``: the
permutation of its epoch comes from ``fold_in(data_key, epoch)``. The attack's
key is ``fold_in(key, s)``. A run resumed from a checkpoint therefore sees the
same data and the same random starts as one that was never interrupted. With
a mesh, the batch is split along its ``"data"`` axis (:mod:`robustjax.runtime.mesh`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from robustjax.attacks import first_order as attacks
from robustjax.data import augment
from robustjax.certify import verifier as certify
from robustjax.smoothing import smoothadv
from robustjax.training import trades
from robustjax.training.config import CERTIFIED_OBJECTIVES, TrainConfig
from robustjax.runtime.mesh import data_sharding
from robustjax.training.state import TrainState, compute_params, model_logits_fn

__all__ = ["eps_at", "ramp_at", "batch_indices", "adversarial_batch", "make_train_step", "stacked"]


def ramp_at(config: TrainConfig, step):
    """Progress of the eps ramp at ``step``, in [0, 1]: 0 before ``eps_ramp_start``, then
    linear over ``eps_ramp_steps`` (Gowal et al. 2018's warm-up and ramp)."""
    if config.threat.eps_ramp_steps == 0:
        return jnp.where(step >= config.threat.eps_ramp_start, 1.0, 0.0)
    return jnp.clip((step - config.threat.eps_ramp_start) / config.threat.eps_ramp_steps, 0.0, 1.0)


def eps_at(config: TrainConfig, step):
    """The training eps at ``step``: ``train_eps`` (or eps) times the ramp's progress."""
    eps = config.threat.eps if config.threat.train_eps < 0 else config.threat.train_eps
    if config.threat.eps_ramp_steps == 0 and config.threat.eps_ramp_start == 0:
        return eps
    return eps * ramp_at(config, step)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int):
    """Indices of the batch for ``step``: epochs are key-driven permutations (Section 4 data).

    The incomplete tail of each permutation is dropped, so every batch is full.
    """
    per_epoch = num_examples // batch_size
    epoch, i = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)


def adversarial_batch(config: TrainConfig, model, state: TrainState, images, labels,
                      mesh=None):
    """``(x, x_adv, y, eps, batch_stats)`` of step ``state.step``: batch, augmentation, attack.

    ``images`` is the whole uint8 training set on the device. ``x_adv`` is
    wrapped in ``stop_gradient`` (Danskin, Section 2.1). ``batch_stats`` are
    the running averages after the attack: unchanged, except in
    ``bn_attack_mode="madry"``. With a ``mesh``, the batch is sharded over it.
    """
    data_key, attack_key_root = jax.random.split(state.key)
    idx = batch_indices(data_key, state.step, images.shape[0], config.run.batch_size)
    x = images[idx].astype(jnp.float32) / 255.0
    y = labels[idx]
    if mesh is not None:
        x = jax.lax.with_sharding_constraint(x, data_sharding(mesh))
        y = jax.lax.with_sharding_constraint(y, data_sharding(mesh))
    key = jax.random.fold_in(attack_key_root, state.step)
    if config.data.augment_pad or config.data.augment_flip:
        key, aug_key = jax.random.split(key)
        x = augment.pad_crop_flip(aug_key, x, pad=config.data.augment_pad,
                                  flip=config.data.augment_flip)
    eps = eps_at(config, state.step)
    logits_fn = model_logits_fn(config, model, state.params, state.batch_stats,
                                train=config.threat.bn_attack_mode == "train")
    if config.threat.bn_attack_mode == "madry" and state.batch_stats:
        x_adv, stats = _pgd_updating_statistics(config, model, state, x, y, key, eps)
        return x, jax.lax.stop_gradient(x_adv), y, eps, stats
    if config.loss.objective in CERTIFIED_OBJECTIVES:
        x_adv = x   # certified training bounds the whole ball: no attack
    elif config.loss.objective == "gaussian":
        x_adv = smoothadv.gaussian_noise(key, x, config.loss.noise_sigma)
    elif config.loss.objective == "smoothadv":
        x_adv, noise = smoothadv.smoothadv_attack(
            logits_fn, x, y, key, sigma=config.loss.noise_sigma, eps=eps,
            step_size=config.threat.attack_step_size, num_steps=config.threat.attack_steps,
            num_noise=config.loss.smoothadv_samples)
        x_adv = (x_adv[None] + noise).reshape((-1,) + x.shape[1:])  # m noisy copies
    elif config.loss.objective == "trades":
        x_adv = trades.trades_attack(logits_fn, x, y, key, eps=eps,
                                     step_size=config.threat.attack_step_size,
                                     num_steps=config.threat.attack_steps, norm=config.threat.train_norm)
    elif config.threat.train_attack == "pgd":
        x_adv = attacks.pgd(logits_fn, x, y, key, eps=eps, step_size=config.threat.attack_step_size,
                            num_steps=config.threat.attack_steps, norm=config.threat.train_norm)
    elif config.threat.train_attack == "fgsm_rs":
        x_adv = attacks.fgsm_rs(logits_fn, x, y, key, eps=eps)
    elif config.threat.train_attack == "fgsm":
        x_adv = attacks.fgsm(logits_fn, x, y, eps=eps)
    else:
        x_adv = x
    # Danskin: the gradient of the inner max is the loss gradient at the maximiser.
    return x, jax.lax.stop_gradient(x_adv), y, eps, state.batch_stats


def _pgd_updating_statistics(config: TrainConfig, model, state: TrainState, x, y, key, eps):
    """PGD in ``config.threat.train_norm`` whose every forward pass runs batch norm in train mode, updating
    the running averages (``bn_attack_mode="madry"``: Madry's cifar10_challenge,
    where the TF batch norm updates its averages on every training-mode run).

    Built from the same parts as :func:`robustjax.attacks.first_order.pgd` (random start,
    sign ascent, projection, clipping), with the statistics in the loop carry.
    Returns ``(x_adv, batch_stats)``.
    """
    geometry = attacks.NORMS[config.threat.train_norm]
    params = compute_params(config, state.params)
    dtype = jnp.dtype(config.model.compute_dtype)
    x_adv = jnp.clip(x + geometry.random_init(key, x.shape, eps).astype(x.dtype), 0.0, 1.0)

    def body(_, carry):
        x_adv, stats = carry

        def objective(z):
            logits, upd = model.apply({"params": params, "batch_stats": stats},
                                      z.astype(dtype), train=True, mutable=["batch_stats"])
            return jnp.sum(attacks.xent_loss(logits.astype(jnp.float32), y)), upd["batch_stats"]

        grad, new_stats = jax.grad(objective, has_aux=True)(x_adv)
        x_new = x_adv + config.threat.attack_step_size * geometry.direction(grad, x_adv, 0.0, 1.0)
        x_adv = geometry.to_box(x, x_new, eps, 0.0, 1.0)
        new_stats = jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), new_stats, stats)
        return x_adv, new_stats

    return jax.lax.fori_loop(0, config.threat.attack_steps, body, (x_adv, state.batch_stats))


def make_train_step(config: TrainConfig, model, tx, mesh=None):
    """``step(state, images, labels) -> (state, metrics)``: one Danskin step (Section 2.1).

    ``images`` (uint8) and ``labels`` are the whole training set on the
    device; the batch is chosen, augmented and attacked inside the step. With
    ``objective="madry"`` the loss is on the adversarial examples only, as in
    the paper; with ``"trades"`` it is :func:`robustjax.training.trades.trades_loss` on
    the clean and adversarial batches. Batch-norm statistics are updated by
    those training forward passes, never by the attack's (except
    ``bn_attack_mode="madry"``). With ``ema_decay > 0`` the averaged weights
    follow the new ones (``optax.incremental_update``). With a ``mesh`` the
    batch is sharded over its ``"data"`` axis (parameters replicated): the
    same program on one or many devices.
    """
    config.validate()
    dtype = jnp.dtype(config.model.compute_dtype)
    certified = config.loss.objective in CERTIFIED_OBJECTIVES

    def forward(params, stats, z):
        """Train-mode logits (float32) and the batch-norm statistics after this pass."""
        v = {"params": compute_params(config, params)}
        if not stats:
            return model.apply(v, z.astype(dtype), train=True).astype(jnp.float32), stats
        v["batch_stats"] = stats
        logits, upd = model.apply(v, z.astype(dtype), train=True, mutable=["batch_stats"])
        new = jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), upd["batch_stats"], stats)
        return logits.astype(jnp.float32), new

    def step_fn(state: TrainState, images, labels):
        x, x_adv, y, eps, stats = adversarial_batch(config, model, state, images, labels, mesh)
        y_adv = jnp.tile(y, x_adv.shape[0] // y.shape[0])   # SmoothAdv: m copies per example

        def loss_fn(params):
            if certified:
                if stats:
                    raise ValueError(f"objective {config.loss.objective!r} needs a network without "
                                     f"batch norm (its bounds use inference mode)")
                frac = ramp_at(config, state.step)
                kappa = config.loss.kappa_start + (
                    config.loss.kappa_end - config.loss.kappa_start) * frac
                beta = config.loss.crown_beta_start + (
                    config.loss.crown_beta_end - config.loss.crown_beta_start) * frac
                fn = model_logits_fn(config, model, params, stats)
                loss, clean, lower = certify.certified_loss(
                    fn, x, y, eps=eps, kappa=kappa, method=config.loss.objective,
                    beta=beta if config.loss.objective == "crown_ibp" else None)
                # "adv_acc" of a certified run: the batch's certified accuracy.
                k = clean.shape[-1]
                cert = jnp.all((lower > 0) | jax.nn.one_hot(y, k, dtype=bool), axis=1)
                return loss, (jax.nn.one_hot(jnp.where(cert, y, (y + 1) % k), k), stats)
            if config.loss.objective == "trades":
                clean_logits, stats_clean = forward(params, stats, x)
                logits, new_stats = forward(params, stats_clean, x_adv)
                loss = trades.trades_loss(clean_logits, logits, y, beta=config.loss.trades_beta)
            else:
                logits, new_stats = forward(params, stats, x_adv)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_adv).mean()
            return loss, (logits, new_stats)

        (loss, (adv_logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        nat_logits = model_logits_fn(config, model, state.params, state.batch_stats)(x)
        metrics = dict(loss=loss, adv_acc=jnp.mean(jnp.argmax(adv_logits, -1) == y_adv),
                       nat_acc=jnp.mean(jnp.argmax(nat_logits, -1) == y), eps=eps)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=new_stats)
        if config.optim.ema_decay > 0:
            rate = 1.0 - config.optim.ema_decay
            new_state = new_state.replace(
                ema_params=optax.incremental_update(params, state.ema_params, rate),
                ema_batch_stats=optax.incremental_update(new_stats, state.ema_batch_stats,
                                                         rate))
        return new_state, metrics

    return step_fn


def stacked(step_fn, k: int):
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
