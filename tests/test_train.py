"""Adversarial training (Danskin step), progress files, checkpoints and resume."""

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax.attacks import first_order as attacks
from robustjax import training as train
from robustjax.training import workdir


def _tiny(idx_dir, **kw):
    base = dict(data_dir=idx_dir, width=1, steps=6, batch_size=20, attack_steps=3,
                checkpoint_every=3, log_every=2, eval_examples=40, eval_batch_size=40,
                eval_attack_steps=(2,), lr=1e-3)
    base.update(kw)
    return train.TrainConfig(**base)


def _probe():
    return jax.random.uniform(jax.random.PRNGKey(9), (4, 28, 28, 1))


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_equals_uninterrupted(idx_dir, tmp_path, caplog, schedule):
    cfg = _tiny(idx_dir, lr_schedule=schedule)
    # Interrupted at step 3 (not a checkpoint multiple: stop_after saves one),
    # then the same call again.
    # Evaluation is test_progress_files_and_results's.
    cfg = dataclasses.replace(cfg, checkpoint_every=2)
    train.train_and_evaluate(cfg, str(tmp_path / "straight"), evaluate=False)
    assert train.train_and_evaluate(cfg, str(tmp_path / "resumed"), stop_after=3,
                                    evaluate=False) is None
    with caplog.at_level(logging.INFO, logger="robustjax"):
        train.train_and_evaluate(cfg, str(tmp_path / "resumed"), evaluate=False)
    assert "resumed from step 3" in caplog.text
    # metrics.jsonl reads as if the run had never stopped (no repeated steps).
    steps = [json.loads(l)["step"] for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert steps == [json.loads(l)["step"] for l in open(tmp_path / "straight" / "metrics.jsonl")]
    a = train.load_model(str(tmp_path / "straight"))(_probe())
    b = train.load_model(str(tmp_path / "resumed"))(_probe())
    np.testing.assert_array_equal(a, b)
    # And training moved the parameters at all.
    fresh = train.build_model(cfg)
    p0 = train.create_state(cfg, fresh, optax.adam(cfg.optim.lr), _probe()[:1]).params
    assert not np.allclose(fresh.apply({"params": p0}, _probe()), a)


@pytest.mark.slow
def test_progress_files_and_results(idx_dir, tmp_path):
    wd = str(tmp_path / "run")
    res = train.train_and_evaluate(_tiny(idx_dir), wd)
    recs = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    assert [r["step"] for r in recs] == [2, 4, 6]
    for r in recs:
        assert {"loss", "nat_acc", "adv_acc", "examples_per_s", "eta_s", "eps"} <= set(r)
    on_disk = json.load(open(os.path.join(wd, "results.json")))
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["n"] == 40 and on_disk["model"]["params"] == 13_514
    assert [r["attack"] for r in on_disk["rows"]] == ["natural", "fgsm", "pgd", "worst_case"]
    for r in on_disk["rows"]:
        assert {"attack", "norm", "eps", "steps", "step_size", "restarts", "loss",
                "source", "accuracy"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0
    acc = [r["accuracy"] for r in on_disk["rows"]]
    assert acc[-1] <= min(acc[:-1])
    assert json.load(open(os.path.join(wd, "config.json")))["model"]["width"] == 1


@pytest.mark.slow
def test_train_step_is_the_danskin_step(idx_dir):
    """Params move by the optimizer applied to grad_theta L(theta, x_adv, y), x_adv =
    PGD(theta) held fixed, on adversarial examples only. (For L-inf PGD the
    derivative through sign/clip is zero almost everywhere, so the stop_gradient
    saves work rather than changing this number; what would change it is a loss
    on clean or mixed examples, or another batch or key.)"""
    cfg = _tiny(idx_dir, attack_steps=5)
    from robustjax.data import datasets as data

    xtr, ytr = data.load("mnist", "train", idx_dir)
    images, labels = jnp.asarray(xtr), jnp.asarray(ytr)  # uint8, as the step takes them
    model, tx = train.build_model(cfg), optax.adam(cfg.optim.lr)
    state = train.create_state(cfg, model, tx, jnp.zeros((1, 28, 28, 1)))
    new_state, _ = jax.jit(train.make_train_step(cfg, model, tx))(state, images, labels)

    data_key, attack_root = jax.random.split(state.key)
    idx = train.batch_indices(data_key, state.step, images.shape[0], cfg.run.batch_size)
    x, y = images[idx].astype(jnp.float32) / 255.0, labels[idx]
    key = jax.random.fold_in(attack_root, state.step)

    f0 = lambda z: model.apply({"params": state.params}, z)  # noqa: E731
    x_adv = attacks.pgd(f0, x, y, key, eps=cfg.threat.eps, step_size=cfg.threat.attack_step_size,
                        num_steps=cfg.threat.attack_steps)

    def stepped(inputs):
        def loss(params):
            logits = model.apply({"params": params}, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        upd, _ = tx.update(jax.grad(loss)(state.params), state.opt_state, state.params)
        return optax.apply_updates(state.params, upd)

    want, natural = stepped(x_adv), stepped(x)
    for a, b in zip(jax.tree_util.tree_leaves(new_state.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(natural)))
    assert gap > 1e-6  # the test can tell adversarial from natural training


def test_batches_are_permutations_per_epoch():
    key = jax.random.PRNGKey(0)
    idx = np.concatenate([np.asarray(train.batch_indices(key, jnp.int32(s), 10, 3))
                          for s in range(3)])
    assert sorted(idx) == sorted(set(idx)) and len(idx) == 9  # one epoch: no repeats
    nxt = np.concatenate([np.asarray(train.batch_indices(key, jnp.int32(s), 10, 3))
                          for s in range(3, 6)])
    assert not np.array_equal(idx, nxt)  # a new permutation each epoch


def test_eps_ramp():
    cfg = train.TrainConfig(eps=0.3, eps_ramp_steps=100)
    assert float(train.eps_at(cfg, 0)) == 0.0
    assert float(train.eps_at(cfg, 50)) == pytest.approx(0.15)
    assert float(train.eps_at(cfg, 500)) == pytest.approx(0.3)


@pytest.mark.parametrize("field,value", [("dataset", "cifar100"), ("train_attack", "cw"),
                                         ("lr_schedule", "step"),
                                         ("width", 0), ("eps", -0.1), ("lr", 0.0),
                                         ("batch_size", 0), ("eval_examples", 0)])
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        train.TrainConfig(**{field: value}).validate()


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused(idx_dir, tmp_path):
    wd = str(tmp_path / "run")
    train.train_and_evaluate(_tiny(idx_dir, steps=2), wd)
    before = open(os.path.join(wd, "config.json")).read()
    with pytest.raises(ValueError, match="width"):
        train.train_and_evaluate(_tiny(idx_dir, steps=2, width=2), wd)
    assert open(os.path.join(wd, "config.json")).read() == before  # nothing lost
    with pytest.raises(FileNotFoundError):
        train.load_model(str(tmp_path / "nothing"))


def test_metrics_after_the_restored_checkpoint_are_dropped(tmp_path):
    """After a hard kill, steps logged past the last checkpoint are redone on resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    workdir.truncate_metrics(str(path), 3)
    assert [json.loads(l)["step"] for l in open(path)] == [1, 2, 3]


@pytest.mark.slow
def test_several_steps_per_call_give_the_same_run(idx_dir, tmp_path):
    """steps_per_call=4 (a lax.scan over steps) against one step per call: the same
    metrics.jsonl and parameters, with log (3) and checkpoint (5) steps that split calls,
    and a resume from the stop_after checkpoint in the middle of a call."""
    cfg = _tiny(idx_dir, steps=11, log_every=3, checkpoint_every=5, eval_examples=20,
                eval_batch_size=20)
    train.train_and_evaluate(cfg, str(tmp_path / "one"), evaluate=False)
    multi = dataclasses.replace(cfg, steps_per_call=4)
    assert train.train_and_evaluate(multi, str(tmp_path / "multi"), stop_after=6,
                                    evaluate=False) is None
    train.train_and_evaluate(multi, str(tmp_path / "multi"), evaluate=False)

    def metrics(name):
        recs = [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl")]
        return [{k: r[k] for k in ("step", "loss", "nat_acc", "adv_acc", "eps")} for r in recs]
    one, many = metrics("one"), metrics("multi")
    assert [r["step"] for r in one] == [3, 6, 9, 11] == [r["step"] for r in many]
    for a, b in zip(one, many):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(train.load_model(str(tmp_path / "one"))(_probe()),
                               train.load_model(str(tmp_path / "multi"))(_probe()),
                               rtol=1e-5, atol=1e-5)
