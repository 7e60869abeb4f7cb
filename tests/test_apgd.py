"""APGD and the DLR loss (Croce & Hein 2020, Sections 3 and 4): rule, losses, invariants, strength."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import apgd
from robustjax.attacks import first_order as attacks
from robustjax.evaluation.accuracy import robust_accuracy

from conftest import assert_valid_adversarial, random_mlp


@pytest.fixture(scope="module")
def batch():
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 1))
    f = random_mlp(jax.random.PRNGKey(2), (8, 8, 1))
    return x, jnp.argmax(f(x), -1).astype(jnp.int32), f


# ---------------------------------------------------------------------------
# DLR losses against NumPy
# ---------------------------------------------------------------------------

def _np_dlr(z, y):
    s = np.sort(z, axis=1)
    zy = z[np.arange(len(y)), y]
    best_other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(1)
    return -(zy - best_other) / (s[:, -1] - s[:, -3] + 1e-12)


def _np_dlr_targeted(z, y, t):
    s = np.sort(z, axis=1)
    i = np.arange(len(y))
    return -(z[i, y] - z[i, t]) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


def test_dlr_losses_match_numpy():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(64, 10)) * 7).astype(np.float32)
    y = rng.integers(0, 10, 64)
    t = (y + rng.integers(1, 10, 64)) % 10
    np.testing.assert_allclose(apgd.dlr_loss(jnp.asarray(z), jnp.asarray(y)), _np_dlr(z, y),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apgd.dlr_loss_targeted(jnp.asarray(z), jnp.asarray(y),
                                                      jnp.asarray(t)),
                               _np_dlr_targeted(z, y, t), rtol=1e-5, atol=1e-6)
    # Shift and scale invariance (the point of the DLR loss, Section 4).
    np.testing.assert_allclose(apgd.dlr_loss(jnp.asarray(3 * z + 11), jnp.asarray(y)),
                               _np_dlr(z, y), rtol=1e-4, atol=1e-5)
    # Positive iff misclassified.
    np.testing.assert_array_equal(np.asarray(apgd.dlr_loss(jnp.asarray(z), jnp.asarray(y))) > 0,
                                  z.argmax(1) != y)


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="K >= 3"):
        apgd.dlr_loss(jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="K >= 4"):
        apgd.dlr_loss_targeted(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32),
                               jnp.ones(2, jnp.int32))


# ---------------------------------------------------------------------------
# The step-size rule (Section 3.2) on synthetic loss sequences
# ---------------------------------------------------------------------------

def test_checkpoints_are_the_papers():
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert apgd.checkpoint_schedule(100) == tuple(int(np.ceil(v * 100 - 1e-9)) for v in p[1:])
    assert apgd.checkpoint_schedule(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert apgd.checkpoint_schedule(5) == (1, 2, 3, 4, 5)


def _np_rule(losses, rho):
    """The paper's two conditions, written out on one loss sequence [N + 1]."""
    n = len(losses) - 1
    ws = (0,) + apgd.checkpoint_schedule(n)
    best = np.maximum.accumulate(losses)
    out, halved_before = [], True
    for j in range(1, len(ws)):
        lo, hi = ws[j - 1], ws[j]
        increases = sum(losses[i + 1] > losses[i] for i in range(lo, hi))
        cond1 = increases <= rho * (hi - lo)
        cond2 = (not halved_before) and best[lo] >= best[hi]
        out.append(cond1 or cond2)
        halved_before = cond1 or cond2
    return np.array(out)


def test_step_size_rule_on_synthetic_losses():
    n = 100
    rising = np.arange(n + 1, dtype=np.float32)
    flat = np.zeros(n + 1, np.float32)
    # 16 increases in the first interval of 22 steps: 16 <= 0.75 * 22 = 16.5 halves;
    # 17 does not.

    def first_interval(k):
        seq = np.arange(n + 1, dtype=np.float32)
        for i in range(22 - k):
            seq[i + 1] = seq[i] - 0.5  # a decrease
        for i in range(22 - k, 22):
            seq[i + 1] = seq[i] + 1.0
        seq[23:] = seq[22] + np.arange(1, n - 21)
        return seq
    # Condition 2: the first interval halves nothing (22 increases), the second rises
    # from far below the best loss, 18 increases of 19 steps, so only the stall halves.
    stall = np.concatenate([np.arange(23) * 10.0, np.arange(19) - 50.0,
                            np.arange(n + 1 - 42) + 1000.0]).astype(np.float32)
    seqs = np.stack([rising, flat, first_interval(16), first_interval(17), stall], axis=1)
    got = apgd.step_size_halvings(seqs, rho=0.75)
    want = np.stack([_np_rule(seqs[:, j], 0.75) for j in range(seqs.shape[1])], axis=1)
    np.testing.assert_array_equal(got, want)
    assert not got[:, 0].any()                         # always improving: never halves
    assert got[:, 1].all()                             # never improving: halves every time
    assert got[0, 2] and not got[0, 3]                 # the rho threshold, both sides
    assert not got[0, 4] and got[1, 4]                 # condition 2 alone
    # Random sequences.
    rng = np.random.default_rng(0)
    seqs = rng.normal(size=(n + 1, 64)).cumsum(0).astype(np.float32)
    got = apgd.step_size_halvings(seqs, rho=0.75)
    want = np.stack([_np_rule(seqs[:, j], 0.75) for j in range(64)], axis=1)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("loss,targeted", [("ce", False), ("dlr", False), ("dlr", True),
                                           ("cw", False)])
def test_invariants(batch, norm, eps, loss, targeted):
    x, y, f = batch
    run = jax.jit(lambda x, y, k: apgd.apgd(f, x, y, k, eps=eps, norm=norm, loss=loss,
                                            targeted=targeted, num_steps=10))
    x_adv = run(x, y, jax.random.PRNGKey(3))
    assert_valid_adversarial(x_adv, x, eps=eps, norm=norm)
    # Deterministic in the key; another key gives another start.
    np.testing.assert_array_equal(x_adv, run(x, y, jax.random.PRNGKey(3)))
    assert not np.array_equal(x_adv, run(x, y, jax.random.PRNGKey(4)))
    # Without jit too (float rounding differs, so only the invariants are compared).
    eager = apgd.apgd(f, x, y, jax.random.PRNGKey(3), eps=eps, norm=norm, loss=loss,
                      targeted=targeted, num_steps=10)
    assert_valid_adversarial(eager, x, eps=eps, norm=norm)


@pytest.mark.slow
def test_eps_is_traced_and_vmappable(batch):
    x, y, f = batch
    eps = jnp.asarray([0.0, 0.02, 0.05])
    out = jax.vmap(lambda e: apgd.apgd(f, x, y, jax.random.PRNGKey(0), eps=e, num_steps=5))(eps)
    dist = jax.vmap(lambda o: attacks.LINF.distance(o - x).max())(out)
    assert np.all(np.asarray(dist) <= np.asarray(eps) + 1e-6)
    np.testing.assert_array_equal(out[0], x)


def test_linear_model_reaches_the_optimum():
    """On logits (0, d.x) the cross-entropy maximiser over the L-inf ball is x + eps sign(d)."""
    d = jax.random.normal(jax.random.PRNGKey(0), (6, 6, 1))
    f = lambda z: jnp.stack([jnp.zeros(z.shape[0]), jnp.sum(z * d, axis=(1, 2, 3))], 1)
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 6, 6, 1))
    y = jnp.zeros(8, jnp.int32)
    x_adv = apgd.apgd(f, x, y, jax.random.PRNGKey(2), eps=0.2, num_steps=20,
                      bounds=(-10.0, 10.0))
    np.testing.assert_allclose(x_adv, x + 0.2 * jnp.sign(d), atol=1e-5)


def test_keep_best_rule():
    """Per example: the first fooling run wins; without one, the highest loss."""
    x = jnp.zeros((4, 1, 1, 1))
    carry = (x, jnp.asarray([False, True, False, False]), jnp.asarray([0.0, 0.0, 5.0, 1.0]))
    run = (x + 1, jnp.asarray([True, True, False, False]), jnp.asarray([-1.0, 9.0, 4.0, 2.0]))
    out, fooled, best = apgd._keep_best(carry, run)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [1, 0, 0, 1])
    np.testing.assert_array_equal(fooled, [True, True, False, False])
    np.testing.assert_array_equal(best, [-1.0, 0.0, 5.0, 2.0])


@pytest.mark.slow
def test_restarts_and_targets_never_weaker(batch):
    """Run i uses fold_in(key, i), so more restarts or targets repeat the shorter schedule first.

    With the first fooling run kept, the examples broken can only grow; the
    runs are the same computations inside a scan, so at most one example of 16
    may differ by float rounding.
    """
    x, y, f = batch
    k = jax.random.PRNGKey(5)
    fooled = lambda xa: np.asarray(jnp.argmax(f(xa), -1) != y)
    one = fooled(apgd.apgd(f, x, y, k, eps=0.03, num_steps=10))
    three = fooled(apgd.apgd(f, x, y, k, eps=0.03, num_steps=10, restarts=3))
    assert np.sum(one & ~three) <= 1 and three.sum() >= one.sum()
    t1 = fooled(apgd.apgd_t(f, x, y, k, eps=0.03, num_steps=10, num_targets=1))
    t9 = fooled(apgd.apgd_t(f, x, y, k, eps=0.03, num_steps=10, num_targets=9))
    assert np.sum(t1 & ~t9) <= 1 and t9.sum() >= t1.sum()
    assert 0 < one.sum() < len(one), "eps should be informative"


@pytest.mark.slow
def test_eot_averages_the_gradient():
    """With eot_samples > 1 the gradient is the mean over samples of a randomised model."""
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 10))

    def noisy(z, key):
        mask = jax.random.bernoulli(key, 0.5, (16,)).astype(jnp.float32)
        return (z.reshape(z.shape[0], -1) * mask) @ w

    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 1))
    y = jnp.zeros(4, jnp.int32)
    obj = apgd._objective("ce", False, 0.0)
    key = jax.random.PRNGKey(2)
    v, g, _ = apgd._value_and_grad(noisy, obj, x, y, y, key, 5)
    keys = jax.random.split(key, 5)
    grads = [jax.grad(lambda z, k=k: jnp.sum(obj(noisy(z, k), y, y)))(x) for k in keys]
    vals = [obj(noisy(x, k), y, y) for k in keys]
    np.testing.assert_allclose(g, np.mean(grads, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, np.mean(vals, 0), rtol=1e-5, atol=1e-6)
    x_adv = apgd.apgd(noisy, x, y, key, eps=0.1, num_steps=5, eot_samples=5)
    assert float(jnp.abs(x_adv - x).max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss="hinge"), "loss"), (dict(norm="l0"), "norm"), (dict(eps=-0.1), "eps"),
    (dict(num_steps=0), "num_steps"), (dict(restarts=0), "restarts"), (dict(rho=1.5), "rho"),
    (dict(targeted=True, target_rank=1), "target_rank"), (dict(eot_samples=0), "eot_samples"),
    (dict(targeted=True, target_rank=11), "target rank 11")])
def test_bad_input_names_the_argument(batch, kwargs, match):
    x, y, f = batch
    with pytest.raises(ValueError, match=match):
        apgd.apgd(f, x, y, jax.random.PRNGKey(0), **{"eps": 0.1, **kwargs})
    with pytest.raises(ValueError, match="num_targets"):
        apgd.apgd_t(f, x, y, jax.random.PRNGKey(0), eps=0.1, num_targets=0)


# ---------------------------------------------------------------------------
# Strength on a small model trained on real digits
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_apgd_at_least_as_strong_as_pgd(natural_model, pgd_baselines):
    """APGD-CE 100 steps vs PGD-100 (step eps / 6) at the same eps, on real digits; APGD-T vs
    PGD-100 x 5 restarts. Tolerance 1% (2 of 200 examples): all are randomised, and APGD
    is expected to be at least as strong."""
    m, b = natural_model, pgd_baselines
    f = m.logits_fn

    def acc(attack):
        return robust_accuracy(f, m.x[:b.n], m.y[:b.n], attack, eps=b.eps, batch_size=200,
                               key=jax.random.PRNGKey(7)).accuracy
    apgd_ce = acc(lambda x, y, k: apgd.apgd(f, x, y, k, eps=b.eps))
    apgd_t = acc(lambda x, y, k: apgd.apgd_t(f, x, y, k, eps=b.eps))
    print(dict(pgd100=b.pgd100.accuracy, pgd100x5=b.pgd100x5.accuracy, apgd_ce=apgd_ce,
               apgd_t=apgd_t, clean=b.pgd100.clean_accuracy))
    assert 0.05 < b.pgd100.accuracy < b.pgd100.clean_accuracy - 0.1, "eps should be informative"
    assert apgd_ce <= b.pgd100.accuracy + 0.01
    assert apgd_t <= b.pgd100x5.accuracy + 0.01
