"""robustjax.runtime.mesh: batches over every device; the evaluations equal on 1 and 4 devices."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from entry import fast_compile_env
from robustjax.runtime import mesh


def test_padding_placement_and_gather_on_one_device():
    m = mesh.make_mesh()
    a = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    g = mesh.shard_batch(m, a, 12)
    assert g.shape == (12, 3) and g.sharding == mesh.data_sharding(m)
    out = mesh.to_host(g, 10)
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(mesh.to_host(g)[10:], np.stack([a[-1], a[-1]]))
    assert mesh.padded_size(10, m) == 10  # one device: nothing to pad
    with pytest.raises(ValueError, match="devices"):
        mesh.make_mesh([])


def test_per_example_keys_do_not_depend_on_the_batch():
    def noisy(x, y, key):  # a batched "attack" whose draws depend on its batch's key
        return x + jax.random.uniform(key, x.shape)

    f = mesh.per_example(noisy)
    x, y = jnp.zeros((6, 2)), jnp.zeros(6, jnp.int32)
    idx = jnp.arange(6)
    whole = f(x, y, mesh.example_keys(jax.random.PRNGKey(0), idx))
    parts = [f(x[i:i + 2], y[i:i + 2], mesh.example_keys(jax.random.PRNGKey(0), idx[i:i + 2]))
             for i in (0, 2, 4)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    assert len({tuple(r) for r in np.asarray(whole)}) == 6  # every example its own draw


def test_initialize_checks_its_arguments():
    assert mesh.initialize() is False  # nothing asked: single process, nothing started
    with pytest.raises(ValueError, match="go together"):
        mesh.initialize(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id"):
        mesh.initialize(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2)
    assert mesh.any_process(True) and not mesh.any_process(False)


SCRIPT = r'''
import functools
import jax, jax.numpy as jnp, numpy as np
from conftest import train_natural, stand_in_digits
from robustjax.attacks import first_order as attacks
from robustjax.evaluation import autoattack
from robustjax.evaluation import accuracy as evaluate
from robustjax.evaluation import landscape
from robustjax.runtime import mesh
from robustjax.evaluation import suite
from robustjax.evaluation import sweeps
from robustjax.training import validation

assert jax.device_count() == 4, jax.devices()
xtr, ytr = stand_in_digits(1500, 0)
xte, yte = stand_in_digits(37, 1)  # 37: every evaluation pads a batch
digits = (xtr / 255.0, ytr, xte / 255.0, yte)
t = train_natural(digits, width=1, epochs=2)
f, x, y = t.logits_fn, xte.astype(np.float32) / 255.0, yte
one, four = mesh.make_mesh(jax.devices()[:1]), mesh.make_mesh()
assert [mesh.padded_size(n, four) for n in (1, 4, 37, 40)] == [4, 4, 40, 40]
assert [mesh.padded_size(n, one) for n in (1, 37)] == [1, 37]
key = jax.random.PRNGKey(3)
eps = 0.04


def same(name, a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        u, v = np.asarray(u), np.asarray(v)
        assert u.shape == v.shape and np.array_equal(u, v), (name, u, v)
    print("equal:", name)


def both(fn):
    return fn(one), fn(four)


# 1. robust_accuracy: PGD with a random start; batch 16 on one device vs 4 x 4.
pgd = functools.partial(attacks.pgd, f, eps=eps, step_size=0.02, num_steps=5)
r1, r4 = both(lambda m: evaluate.robust_accuracy(f, x, y, pgd, eps=eps, batch_size=16, key=key,
                                                 keep_adversarial=True, mesh=m))
same("robust_accuracy", (r1.correct, r1.x_adv), (r4.correct, r4.x_adv))
assert 0 < r1.accuracy < r1.clean_accuracy, (r1.accuracy, r1.clean_accuracy)

# 2. run_suite: every kind of row.
specs = [suite.AttackSpec("Natural", attack="natural", eps=eps),
         suite.AttackSpec("FGSM", attack="fgsm", eps=eps),
         suite.AttackSpec("PGD", eps=eps, steps=3, step_size=0.02, restarts=2)]
s1, s4 = both(lambda m: suite.run_suite(f, x, y, specs, batch_size=16, key=key, mesh=m))
same("run_suite", s1.correct, s4.correct)

# 3. AutoAttack, with its compaction between attacks and target classes (APGD-T's 9
# targets; FAB-T and Square would only add compile time: test_autoattack.py has them).
a1, a4 = both(lambda m: autoattack.autoattack(
    f, x, y, key, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"],
    num_steps=3, num_queries=10, batch_size=16, mesh=m))
same("autoattack", (a1.correct, a1.clean_correct, a1.x_adv), (a4.correct, a4.clean_correct,
                                                               a4.x_adv))
assert list(a1.broken_by) == list(a4.broken_by)

# 4. The eps sweep.
atk = sweeps.sweep_attack("pgd", f, norm="linf", num_steps=3)
c1, c4 = both(lambda m: sweeps.accuracy_curve(f, x, y, key, atk, [0.02, 0.06], norm="linf",
                                              batch_size=16, mesh=m))
same("accuracy_curve", c1.correct, c4.correct)

# 5. The loss landscape: restarts split over the devices.
l1, l4 = both(lambda m: landscape.restart_losses(f, x[:2], y[:2], key, eps=eps, step_size=0.02,
                                                 num_steps=3, restarts=10, chunk_size=6,
                                                 keep_trajectories=3, mesh=m))
same("restart_losses", (l1.final, l1.fooled, l1.trajectories),
     (l4.final, l4.fooled, l4.trajectories))

# 6. Periodic validation during training.
v1, v4 = both(lambda m: validation.make_validator(
    lambda v: (lambda z: t.model.apply(v, z)), eps=eps, attack_steps=3, batch_size=16, seed=5,
    mesh=m)(t.params, xte, yte))
assert v1 == v4, (v1, v4)
print("equal: validation", v1)

# 7. Minimum norms (FMN-L2): a per-example distance, whatever the devices.
from robustjax.evaluation import distances
fmn = distances.min_norm_attack("fmn", f, norm="l2", steps=5)
n1, n4 = both(lambda m: distances.minimum_norms(f, x, y, key, fmn, norm="l2", batch_size=16,
                                                keep_adversarial=True, mesh=m))
same("minimum_norms", (n1.norms, n1.x_adv), (n4.norms, n4.x_adv))

# 8. Randomized smoothing: the vote counts of every example, whatever the devices (7 examples
# over 4 devices: padded), and so CERTIFY's table.
from robustjax import smoothing
c1, c4 = both(lambda m: smoothing.certify(f, x[:7], key, sigma=0.25, n0=20, n=300, batch=64,
                                          alpha=0.01, mesh=m))
same("smoothing counts", (c1.selection_counts, c1.counts, c1.radius),
     (c4.selection_counts, c4.counts, c4.radius))
print("OK")
'''


@pytest.mark.slow
def test_evaluations_equal_on_one_and_four_devices():
    """Each evaluation gives the same per-example results on 1 and on 4 (simulated) devices."""
    env = fast_compile_env(JAX_NUM_CPU_DEVICES="4",
                           PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                       text=True, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]
    assert "OK" in p.stdout
