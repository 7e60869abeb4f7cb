"""Data parallelism (jax.sharding): one step on 8 simulated CPU devices equals one device."""

import os
import subprocess
import sys

import pytest

from conftest import REPO
from entry import fast_compile_env

SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
import chex
from robustjax import training as train
from conftest import separable_cifar

assert jax.device_count() == 8, jax.devices()
base = dict(dataset="cifar10", width=1, eps=8 / 255, attack_steps=2,
            attack_step_size=2 / 255, optimizer="momentum", lr=0.1, weight_decay=2e-4,
            batch_size=32, steps=1, augment_pad=4, augment_flip=True)
x, y = separable_cifar(64, 0)


def run(cfg, devices):
    model = train.build_model(cfg)
    tx = train.make_optimizer(cfg)
    state0 = train.create_state(cfg, model, tx, jnp.zeros((1, 32, 32, 3)))
    mesh = train.make_mesh(devices)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(state0, rep)
    xs, ys = jax.device_put(x, rep), jax.device_put(y, rep)
    step = jax.jit(train.make_train_step(cfg, model, tx, mesh))
    hlo = step.lower(state, xs, ys).as_text()
    adv = jax.jit(lambda s: train.adversarial_batch(cfg, model, s, xs, ys, mesh)[1])(state)
    state, m = step(state, xs, ys)  # one step (later steps amplify float noise)
    return state0, jax.device_get(state), jax.device_get(m), hlo, np.asarray(adv)


# Natural training: no sign() in the loop, so the 8-way all-reduced step must match
# to float tolerance. Per-shard batch norm (4 images a shard) would be far off.
cfg = train.TrainConfig(train_attack="none", **base)
s0, one, m1, _, _ = run(cfg, jax.devices()[:1])
_, eight, m8, hlo, _ = run(cfg, jax.devices())
assert "num_partitions = 8" in hlo, hlo[:2000]
# Reductions run in another order on 8 devices: ~5e-5 absolute after one step.
chex.assert_trees_all_close(one.params, eight.params, rtol=1e-4, atol=1e-4)
chex.assert_trees_all_close(one.batch_stats, eight.batch_stats, rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


def max_gap(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


moved = max_gap(one.params, s0.params)
assert moved > 1e-3, moved
assert max_gap(one.params, eight.params) < 1e-2 * moved  # noise, not a different step

# PGD training: the same adversarial examples up to the rare pixel whose gradient
# is ~0 and whose sign flips with the summation order; then the same step.
cfg = train.TrainConfig(train_attack="pgd", **base)
_, one, m1, _, adv1 = run(cfg, jax.devices()[:1])
_, eight, m8, hlo, adv8 = run(cfg, jax.devices())
assert "num_partitions = 8" in hlo
assert np.max(np.abs(adv1 - adv8)) <= 2 * 2 / 255 + 1e-6
assert np.mean(adv1 != adv8) < 1e-3, np.mean(adv1 != adv8)
chex.assert_trees_all_close(one.params, eight.params, rtol=1e-3, atol=1e-3)
np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-4)
print("OK", float(m1["loss"]), float(m8["loss"]), float(np.mean(adv1 != adv8)))
'''


@pytest.mark.slow
def test_sharded_step_equals_single_device_step():
    env = fast_compile_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                       text=True, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "OK" in p.stdout
