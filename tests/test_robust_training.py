"""TRADES, Fast AT, weight averaging, periodic validation and the best checkpoint."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_valid_adversarial
from robustjax.attacks import first_order as attacks
from robustjax.data import datasets as data
from robustjax import training as train
from robustjax.training import trades
from robustjax.training import validation
from robustjax.training import workdir


def _tiny(idx_dir, **kw):
    base = dict(data_dir=idx_dir, width=1, steps=6, batch_size=20, attack_steps=2,
                attack_step_size=0.1, checkpoint_every=3, log_every=2, eval_examples=40,
                eval_batch_size=40, eval_attack_steps=(2,), lr=1e-3)
    base.update(kw)
    return train.TrainConfig(**base)


def _linear(key, shape=(6, 6, 1), classes=4):
    w = jax.random.normal(key, (int(np.prod(shape)), classes))
    return lambda x: x.reshape(x.shape[0], -1) @ w


def _np_kl(p_logits, q_logits):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_trades_loss_matches_numpy():
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(size=(2, 8, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, size=8)
    lp = clean - clean.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    ce = -lp[np.arange(8), y].mean()
    for beta in (0.0, 1.0, 6.0):
        want = ce + beta * _np_kl(clean, adv).mean()
        got = trades.trades_loss(jnp.asarray(clean), jnp.asarray(adv), jnp.asarray(y), beta=beta)
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(trades.kl_divergence(clean, clean), 0.0, atol=1e-6)


@pytest.mark.slow
def test_trades_with_beta_zero_is_natural_training(idx_dir):
    """With beta = 0 the TRADES step's parameter update equals natural training's."""
    images, labels = data.load(_tiny(idx_dir).data.dataset, "train", _tiny(idx_dir).data.data_dir)
    images, labels = jnp.asarray(images[:200]), jnp.asarray(labels[:200])
    out = {}
    for name, kw in (("trades", dict(objective="trades", trades_beta=0.0, train_attack="pgd")),
                     ("natural", dict(train_attack="none"))):
        cfg = _tiny(idx_dir, **kw)
        model, tx = train.build_model(cfg), train.make_optimizer(cfg)
        state = train.create_state(cfg, model, tx, images[:1].astype(jnp.float32))
        step = jax.jit(train.make_train_step(cfg, model, tx))
        for _ in range(2):
            state, _ = step(state, images, labels)
        out[name] = state.params
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                   out["trades"], out["natural"])
    assert max(jax.tree_util.tree_leaves(moved)) < 1e-6
    # And beta > 0 changes the update (the KL term is live).
    cfg = _tiny(idx_dir, objective="trades", trades_beta=6.0)
    model, tx = train.build_model(cfg), train.make_optimizer(cfg)
    state = train.create_state(cfg, model, tx, images[:1].astype(jnp.float32))
    step = jax.jit(train.make_train_step(cfg, model, tx))
    for _ in range(2):
        state, _ = step(state, images, labels)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                  state.params, out["natural"])
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-6


def test_trades_attack_stays_in_the_ball_and_raises_the_kl():
    key = jax.random.PRNGKey(0)
    logits_fn = _linear(key)
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 6, 6, 1))
    y = jnp.zeros(16, jnp.int32)
    eps = 0.1
    start = trades.trades_attack(logits_fn, x, y, jax.random.PRNGKey(2), eps=eps,
                                 step_size=0.01, num_steps=0)
    assert float(jnp.max(jnp.abs(start - x))) < 0.01  # 0.001 * N(0, 1), clipped
    kl = lambda z: trades.kl_divergence(logits_fn(x), logits_fn(z))  # noqa: E731
    prev = kl(start)
    for steps in (1, 5, 20):
        x_adv = trades.trades_attack(logits_fn, x, y, jax.random.PRNGKey(2), eps=eps,
                                     step_size=0.02, num_steps=steps)
        assert_valid_adversarial(x_adv, x, eps=eps, norm="linf")
        now = kl(x_adv)
        assert np.all(np.asarray(now) >= np.asarray(prev) - 1e-6), (steps, now, prev)
        prev = now
    assert float(jnp.mean(prev)) > 10 * float(jnp.mean(kl(start))) + 1e-3
    # eps = 0: nothing moves.
    x0 = trades.trades_attack(logits_fn, x, y, jax.random.PRNGKey(2), eps=0.0,
                              step_size=0.02, num_steps=3)
    np.testing.assert_array_equal(x0, x)


def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_uniform_start():
    key = jax.random.PRNGKey(3)
    w = jax.random.normal(key, (36, 3))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    x = jax.random.uniform(jax.random.PRNGKey(4), (32, 6, 6, 1))
    y = jax.random.randint(jax.random.PRNGKey(5), (32,), 0, 3)
    eps, k = 0.2, jax.random.PRNGKey(6)
    x_adv = attacks.fgsm_rs(logits_fn, x, y, k, eps=eps)
    assert_valid_adversarial(x_adv, x, eps=eps, norm="linf")
    # NumPy reference: the start U(-eps, eps) clipped to [0, 1], the gradient of
    # the cross-entropy of a linear model there, one signed step of 1.25 eps.
    start = np.clip(np.asarray(x) + eps * np.asarray(
        jax.random.uniform(k, x.shape, jnp.float32, -1.0, 1.0)), 0, 1)
    logits = start.reshape(32, -1) @ np.asarray(w)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    grad = ((p - np.eye(3)[np.asarray(y)]) @ np.asarray(w).T).reshape(x.shape)
    want = np.clip(np.asarray(x) + np.clip(start + 1.25 * eps * np.sign(grad) - np.asarray(x),
                                           -eps, eps), 0, 1)
    np.testing.assert_allclose(np.asarray(x_adv), want, atol=1e-6)
    # The start alone (in the ball, in bounds) and the largest move: up to 2.25 eps
    # from the start, but never past eps from x.
    assert np.max(np.abs(start - np.asarray(x))) <= eps + 1e-6
    assert np.max(np.abs(np.asarray(x_adv) - start)) > eps
    custom = attacks.fgsm_rs(logits_fn, x, y, k, eps=eps, step_size=0.01)
    assert np.max(np.abs(np.asarray(custom) - start)) <= 0.01 + 1e-6


def test_ema_after_k_updates_is_the_closed_form(idx_dir):
    d, k = 0.8, 5
    cfg = _tiny(idx_dir, train_attack="none", ema_decay=d)
    images, labels = data.load(cfg.data.dataset, "train", cfg.data.data_dir)
    images, labels = jnp.asarray(images[:200]), jnp.asarray(labels[:200])
    model, tx = train.build_model(cfg), train.make_optimizer(cfg)
    state = train.create_state(cfg, model, tx, images[:1].astype(jnp.float32))
    step = jax.jit(train.make_train_step(cfg, model, tx))
    seq = [state.params]
    for _ in range(k):
        state, _ = step(state, images, labels)
        seq.append(state.params)
    # ema_k = d^k p_0 + (1 - d) sum_{i=1..k} d^(k-i) p_i
    want = jax.tree_util.tree_map(
        lambda *ps: d ** k * ps[0] + (1 - d) * sum(d ** (k - i) * ps[i] for i in range(1, k + 1)),
        *seq)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                           state.ema_params, want)
    assert not np.allclose(jax.tree_util.tree_leaves(state.ema_params)[0],
                           jax.tree_util.tree_leaves(state.params)[0])


def _eval_log(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in open(path)]


@pytest.mark.slow
def test_resume_with_ema_and_validation_equals_uninterrupted(idx_dir, tmp_path):
    cfg = _tiny(idx_dir, objective="trades", ema_decay=0.7, eval_every=2, val_examples=40,
                val_attack_steps=2, steps=6, checkpoint_every=6)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    a = train.train_and_evaluate(cfg, straight, evaluate=False)
    assert train.train_and_evaluate(cfg, resumed, stop_after=5) is None
    # A crash that lost every regular checkpoint (steps 4 and 5) but left
    # eval.jsonl (steps 2, 4) and best_checkpoint/: the rerun starts from step 0,
    # drops those records, redoes the evaluations and does not save the best
    # step again.
    assert [r["step"] for r in _eval_log(os.path.join(resumed, "eval.jsonl"))] == [2, 4]
    for step in os.listdir(os.path.join(resumed, "checkpoints")):
        shutil.rmtree(os.path.join(resumed, "checkpoints", step))
    b = train.train_and_evaluate(cfg, resumed, evaluate=False)
    assert _eval_log(os.path.join(straight, "eval.jsonl")) == _eval_log(
        os.path.join(resumed, "eval.jsonl"))
    assert [r["step"] for r in _eval_log(os.path.join(resumed, "eval.jsonl"))] == [2, 4, 6]
    assert a["training"]["best"] == b["training"]["best"]
    for which in ("last", "ema", "best"):
        ra, rb = workdir.load_run(straight, which), workdir.load_run(resumed, which)
        assert ra.step == rb.step
        jax.tree_util.tree_map(np.testing.assert_array_equal, ra.variables, rb.variables)
    assert workdir.load_run(straight).which == "ema"
    last, ema = workdir.load_run(straight, "last"), workdir.load_run(straight, "ema")
    assert not np.allclose(jax.tree_util.tree_leaves(last.variables)[0],
                           jax.tree_util.tree_leaves(ema.variables)[0])
    res = json.load(open(os.path.join(straight, "results.json")))
    assert res["training"]["best"]["path"] == f"best_checkpoint/{res['training']['best']['best_step']}"


def test_best_checkpoint_is_the_step_with_the_best_validation_accuracy(idx_dir, tmp_path):
    """Scripted validation scores with a known best step (4 of 2, 4, 6, 8)."""
    cfg = _tiny(idx_dir, train_attack="none", eval_every=2, steps=8)
    wd = str(tmp_path / "wd")
    os.makedirs(wd)
    workdir.write_config(wd, cfg)
    images, labels = data.load(cfg.data.dataset, "train", cfg.data.data_dir)
    model, tx = train.build_model(cfg), train.make_optimizer(cfg)
    state = train.create_state(cfg, model, tx, jnp.zeros((1, 28, 28, 1)))
    step = jax.jit(train.make_train_step(cfg, model, tx))
    pv = validation.PeriodicValidation(cfg, wd, True, None, images[:10], labels[:10])
    scores = {2: 0.30, 4: 0.55, 6: 0.20, 8: 0.50}
    pv.validate = lambda v, x, y: dict(clean_acc=0.9, fgsm_acc=0.5, robust_acc=scores[s], n=10)
    saved = {}
    x, yl = jnp.asarray(images[:200]), jnp.asarray(labels[:200])
    for s in range(1, 9):
        state, _ = step(state, x, yl)
        if pv.due(s):
            pv.run(s, state)
            saved[s] = state.params
    assert pv.manager.best_step() == 4 and pv.manager.all_steps() == [4]
    assert pv.summary()["val_robust_acc"] == 0.55
    best = workdir.load_run(wd, "best")
    assert best.step == 4
    jax.tree_util.tree_map(np.testing.assert_array_equal, best.variables["params"], saved[4])


def test_catastrophic_overfitting_is_flagged():
    flag = validation.catastrophic_overfitting
    assert not flag(dict(robust_acc=0.02, fgsm_acc=0.05), None)  # first evaluation
    assert not flag(dict(robust_acc=0.01, fgsm_acc=0.15), 0.02)  # never robust
    assert not flag(dict(robust_acc=0.40, fgsm_acc=0.55), 0.45)  # normal noise
    assert flag(dict(robust_acc=0.03, fgsm_acc=0.80), 0.45)  # PGD collapses, FGSM high
    assert not flag(dict(robust_acc=0.03, fgsm_acc=0.10), 0.45)  # everything collapsed


def test_validation_split_is_disjoint_from_the_training_batches():
    n, val, bs = 230, 30, 20
    images = np.arange(n)  # each "image" is its own index
    labels = np.zeros(n, np.int32)
    xtr, _, xval, _ = validation.split_validation(images, labels, val)
    assert len(xval) == val and len(xtr) == n - val
    seen = set()
    key = jax.random.PRNGKey(0)
    for s in range(3 * (len(xtr) // bs)):  # three epochs of batches
        idx = np.asarray(train.batch_indices(key, jnp.asarray(s), len(xtr), bs))
        seen.update(int(i) for i in xtr[idx])
    assert seen.isdisjoint(set(int(i) for i in xval))
    assert seen <= set(range(n - val))
    with pytest.raises(ValueError, match="val_examples"):
        validation.split_validation(images, labels, n)


@pytest.mark.parametrize("field,value", [("objective", "mart"), ("trades_beta", -1.0),
                                         ("ema_decay", 1.0), ("eval_every", -1),
                                         ("val_examples", 0)])
def test_bad_options(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(train.TrainConfig(), **{field: value}).validate()
    with pytest.raises(ValueError, match="trades"):
        train.TrainConfig(objective="trades", train_attack="fgsm_rs").validate()


@pytest.mark.slow
def test_load_model_refuses_weights_the_run_does_not_keep(idx_dir, tmp_path):
    cfg = _tiny(idx_dir, steps=2, train_attack="none")
    train.train_and_evaluate(cfg, str(tmp_path), evaluate=False)
    assert workdir.load_run(str(tmp_path)).which == "last"
    for which, msg in (("ema", "ema_decay"), ("best", "eval_every"), ("raw", "which")):
        with pytest.raises(ValueError, match=msg):
            workdir.load_model(str(tmp_path), which)


def test_rerun_may_not_change_the_validation_batches(tmp_path):
    """eval_batch_size may change on a rerun, except with periodic validation, where
    it fixes the validation batches and their attack keys."""
    for eval_every, refused in ((0, False), (10, True)):
        wd = str(tmp_path / str(eval_every))
        os.makedirs(wd)
        cfg = train.TrainConfig(eval_every=eval_every)
        workdir.write_config(wd, cfg)
        other = dataclasses.replace(cfg, eval_batch_size=100)
        if refused:
            with pytest.raises(ValueError, match="eval_batch_size"):
                workdir.write_config(wd, other)
        else:
            assert workdir.write_config(wd, other)
