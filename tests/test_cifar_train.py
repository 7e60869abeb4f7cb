"""CIFAR-10 training (paper Section 4): optimizer, weight-decay mask, batch norm, bf16, resume."""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import training as train

from conftest import separable_cifar

EPS = 8 / 255


def _config(**kw):
    base = dict(dataset="cifar10", width=1, eps=EPS, attack_steps=2, attack_step_size=2 / 255,
                optimizer="momentum", lr=0.05, lr_schedule="constant", weight_decay=2e-4,
                batch_size=16, steps=4, augment_pad=4, augment_flip=True, log_every=2,
                checkpoint_every=2, eval_examples=16, eval_batch_size=16,
                eval_attack_steps=(2,), eval_attack_step_size=2 / 255)
    base.update(kw)
    return train.TrainConfig(**base)


def _setup(config, n=128):
    x, y = separable_cifar(n, 0)
    model = train.build_model(config)
    tx = train.make_optimizer(config)
    state = train.create_state(config, model, tx, jnp.zeros((1, 32, 32, 3)))
    return model, tx, state, jnp.asarray(x), jnp.asarray(y)


@pytest.mark.slow
def test_weight_decay_applies_to_kernels_only():
    cfg = _config()
    model, tx, state, _, _ = _setup(cfg)
    mask = train.kernel_mask(state.params)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat and all(v == name.endswith("kernel") for name, v in flat.items())
    assert any(v for v in flat.values()) and not all(flat.values())  # BN scale/bias exempt
    # With zero loss gradients the first update is -lr * wd * w on kernels, 0 elsewhere.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    upd, _ = tx.update(zeros, state.opt_state, state.params)
    for (path, u), w, m in zip(jax.tree_util.tree_flatten_with_path(upd)[0],
                               jax.tree_util.tree_leaves(state.params),
                               jax.tree_util.tree_leaves(mask)):
        np.testing.assert_allclose(u, -0.05 * 2e-4 * w if m else 0 * w, rtol=1e-6, atol=1e-12,
                                   err_msg=str(path))


def test_piecewise_learning_rate():
    cfg = _config(lr=0.1, lr_schedule="piecewise", lr_boundaries=(40_000, 60_000),
                  steps=80_000)
    lr = train.learning_rate(cfg)
    assert [float(lr(s)) for s in (0, 39_999, 40_000, 59_999, 60_000, 79_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="lr_boundaries"):
        _config(lr_schedule="piecewise").validate()
    with pytest.raises(ValueError, match="bn_attack_mode"):
        _config(bn_attack_mode="tf").validate()
    with pytest.raises(ValueError, match="bn_attack_mode"):
        _config(bn_attack_mode="madry", train_attack="fgsm").validate()
    with pytest.raises(ValueError, match="compute_dtype"):
        _config(compute_dtype="float16").validate()


@pytest.mark.slow
def test_pgd_training_decreases_the_loss():
    cfg = _config(steps=40, lr=0.02, augment_pad=0, augment_flip=False, batch_size=32)
    model, tx, state, x, y = _setup(cfg)
    step = jax.jit(train.make_train_step(cfg, model, tx))
    losses = []
    for _ in range(cfg.run.steps):
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train", "madry"])
def test_attack_does_not_update_batch_norm_statistics(mode):
    """The step's new BN statistics come from its one train-mode pass on x_adv alone,
    except in Madry's mode, where the attack's 2 passes update them first."""
    cfg = _config(bn_attack_mode=mode)
    model, tx, state, x, y = _setup(cfg)
    state = state.replace(step=jnp.asarray(3, jnp.int32))
    step_fn = train.make_train_step(cfg, model, tx)

    @jax.jit
    def step_and_expected(state):
        # One program, so the step and the reference see the same x_adv.
        new_state, _ = step_fn(state, x, y)
        _, x_adv, _, _, attack_stats = train.adversarial_batch(cfg, model, state, x, y)
        _, upd = model.apply({"params": state.params, "batch_stats": attack_stats},
                             x_adv, train=True, mutable=["batch_stats"])
        return new_state, upd, x_adv, attack_stats

    new_state, upd, x_adv, attack_stats = step_and_expected(state)
    chex.assert_trees_all_close(new_state.batch_stats, upd["batch_stats"], rtol=1e-5,
                                atol=1e-6)
    gaps = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                  attack_stats, state.batch_stats)
    if mode == "madry":
        assert max(jax.tree_util.tree_leaves(gaps)) > 1e-2  # the attack moved them
    else:
        assert max(jax.tree_util.tree_leaves(gaps)) == 0.0  # no leak from the attack
    # A single extra statistics update (what an attack pass in Madry's TF mode
    # does, seven times) would be caught at this tolerance.
    _, leaked = model.apply({"params": state.params, "batch_stats": upd["batch_stats"]},
                            x_adv, train=True, mutable=["batch_stats"])
    gaps = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                  leaked["batch_stats"], new_state.batch_stats)
    assert max(jax.tree_util.tree_leaves(gaps)) > 1e-2
    # And the statistics did move (momentum 0.9 towards the batch's).
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                   new_state.batch_stats, state.batch_stats)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3
    # The two modes attack different functions: train mode uses batch statistics.
    f_eval = train.model_logits_fn(cfg, model, state.params, state.batch_stats)
    f_train = train.model_logits_fn(cfg, model, state.params, state.batch_stats, train=True)
    assert not np.allclose(f_eval(x_adv), f_train(x_adv), atol=1e-3)


@pytest.mark.slow
def test_bfloat16_step_trains_and_keeps_invariants():
    cfg = _config(compute_dtype="bfloat16", augment_pad=0, augment_flip=False, steps=30,
                  lr=0.02, batch_size=32)
    model, tx, state, x, y = _setup(cfg)
    xb, x_adv, _, _, _ = train.adversarial_batch(cfg, model, state, x, y)
    assert x_adv.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(x_adv - xb))) <= EPS + 1e-7
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    assert float(jnp.max(jnp.abs(x_adv - xb))) > 0.9 * EPS  # the attack moved
    step = jax.jit(train.make_train_step(cfg, model, tx))
    losses = []
    for _ in range(cfg.run.steps):
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(state.params))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(state.opt_state)
               if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses


@pytest.mark.slow
def test_cifar_resume_equals_uninterrupted(cifar_dir, tmp_path, caplog):
    cfg = _config(data_dir=cifar_dir)  # (evaluation: test_cifar10_entry_points)
    train.train_and_evaluate(cfg, str(tmp_path / "straight"), evaluate=False)
    assert train.train_and_evaluate(cfg, str(tmp_path / "resumed"), stop_after=3,
                                    evaluate=False) is None
    with caplog.at_level(logging.INFO, logger="robustjax"):
        res = train.train_and_evaluate(cfg, str(tmp_path / "resumed"), evaluate=False)
    assert "resumed from step 3" in caplog.text
    assert res["model"] == dict(arch="CifarResNet", width=1, params=464_154)
    probe = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
    a = train.load_model(str(tmp_path / "straight"))(probe)
    b = train.load_model(str(tmp_path / "resumed"))(probe)
    np.testing.assert_array_equal(a, b)
