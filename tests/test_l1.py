"""The L1 threat model: the exact projection onto the L1 ball and the box, L1 PGD,
l1-APGD, FAB-L1, Square-L1, the L1 AutoAttack ensemble and L1 training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from robustjax.attacks import apgd
from robustjax.attacks import apgd_l1
from robustjax.attacks import first_order as attacks
from robustjax.evaluation import autoattack, ensemble
from robustjax.evaluation import accuracy as evaluate
from robustjax.attacks import fab
from robustjax.attacks import l1
from robustjax.attacks import square
from robustjax.evaluation import sweeps
from robustjax import training as train

from conftest import assert_valid_adversarial, random_mlp


def _qp_projection(x, z, eps, lo=0.0, hi=1.0):
    """Brute force: min 0.5 ||p - z||^2 s.t. ||p - x||_1 <= eps, lo <= p <= hi (SLSQP, float64).

    Variables d = a - b with a, b >= 0 and sum(a + b) <= eps.
    """
    n = x.size

    def f(w):
        return 0.5 * np.sum((x + w[:n] - w[n:] - z) ** 2)

    def jac(w):
        r = x + w[:n] - w[n:] - z
        return np.concatenate([r, -r])

    cons = [dict(type="ineq", fun=lambda w: eps - np.sum(w)),
            dict(type="ineq", fun=lambda w: x + w[:n] - w[n:] - lo),
            dict(type="ineq", fun=lambda w: hi - x - w[:n] + w[n:])]
    res = optimize.minimize(f, np.zeros(2 * n), jac=jac, constraints=cons, method="SLSQP",
                            bounds=[(0, None)] * (2 * n),
                            options=dict(ftol=1e-12, maxiter=1000))
    # SLSQP may stop with "positive directional derivative" at the optimum: the caller
    # compares objectives, not the status.
    return x + res.x[:n] - res.x[n:]


@pytest.mark.slow
def test_projection_matches_a_qp_solver():
    rng = np.random.default_rng(0)
    for trial in range(12):
        d = int(rng.integers(2, 9))
        x = rng.uniform(0, 1, d)
        x[: d // 3] = rng.choice([0.0, 1.0], d // 3)  # some coordinates on the box's faces
        z = x + rng.normal(0, 1.0, d)
        eps = float(rng.uniform(0.05, 2.0))
        got = np.asarray(l1.project_l1_box(jnp.asarray(x[None], jnp.float32),
                                           jnp.asarray(z[None], jnp.float32), eps))[0]
        want = _qp_projection(x, z, eps)
        assert np.abs(got - x).sum() <= eps * (1 + 1e-6) and got.min() >= 0 and got.max() <= 1
        # Feasible and no worse than the solver's point; the optimum is unique.
        assert np.sum((got - z) ** 2) <= np.sum((want - z) ** 2) + 1e-6, trial
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"trial {trial}")


def test_projection_hand_made_cases():
    proj = lambda x, z, eps: np.asarray(l1.project_l1_box(  # noqa: E731
        jnp.asarray([x], jnp.float32), jnp.asarray([z], jnp.float32), eps))[0]
    # Inside both: unchanged.
    np.testing.assert_allclose(proj([0.5, 0.5], [0.6, 0.4], 1.0), [0.6, 0.4], atol=1e-7)
    # No face active: soft thresholding. v = (0.4, 0.1), eps 0.2: lambda = 0.2 (with
    # lambda < 0.1 both would stay and sum to 0.5 - 2 lambda > 0.3), so d = (0.2, 0).
    np.testing.assert_allclose(proj([0.5, 0.5], [0.9, 0.6], 0.2), [0.7, 0.5], atol=1e-6)
    # v = (0.4, 0.3), eps 0.5: lambda = 0.1, d = (0.3, 0.2).
    np.testing.assert_allclose(proj([0.5, 0.5], [0.9, 0.8], 0.5), [0.8, 0.7], atol=1e-6)
    # The box binds: v = (1, 0.3) from x = (0.9, 0.5), eps 0.5. Projecting onto the ball
    # first gives (0.6, 0) and clipping (0.1, 0): L1 0.1 of a budget of 0.5. The exact
    # projection uses the rest: (0.1, 0.3).
    np.testing.assert_allclose(proj([0.9, 0.5], [1.9, 0.8], 0.5), [1.0, 0.8], atol=1e-6)
    # A radius of 0 returns x; a coordinate on a face cannot move outwards.
    np.testing.assert_allclose(proj([0.2, 0.0], [0.9, -1.0], 0.0), [0.2, 0.0], atol=1e-7)
    np.testing.assert_allclose(proj([0.2, 0.0], [0.3, -1.0], 5.0), [0.3, 0.0], atol=1e-7)


@pytest.mark.slow
def test_projection_batched_idempotent_and_per_example_eps():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(k1, (6, 8, 8, 1))
    z = x + jax.random.normal(k2, x.shape)
    eps = jnp.asarray([0.0, 0.5, 1.0, 3.0, 10.0, 100.0])
    p = l1.project_l1_box(x, z, eps)
    dist = l1.l1_distance(p - x)
    assert np.all(np.asarray(dist) <= np.asarray(eps) * (1 + 1e-6) + 1e-6)
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    # Budget used fully where the box allows it (all but the largest radius).
    np.testing.assert_allclose(dist[1:5], eps[1:5], rtol=1e-5)
    np.testing.assert_allclose(l1.project_l1_box(x, p, eps), p, atol=1e-6)
    # Radius 100 exceeds what the box allows: the projection is clipping alone.
    np.testing.assert_allclose(p[5], jnp.clip(z[5], 0, 1), atol=1e-6)


def test_uniform_start_and_sparse_ascent():
    d = jax.random.uniform(jax.random.PRNGKey(1), (4000, 3), minval=0, maxval=0)
    u = l1.l1_ball_uniform(jax.random.PRNGKey(2), d.shape, 2.0)
    r = np.asarray(l1.l1_distance(u))
    assert r.max() <= 2.0 + 1e-6
    # The radius of a uniform point of the d-dimensional L1 ball has mean d / (d + 1).
    assert abs(r.mean() / 2.0 - 0.75) < 0.015
    g = jnp.asarray([[0.1, -3.0, 0.2, 2.0, 0.0, -0.05, 0.0, 0.0, 0.0, 0.0]])
    step = np.asarray(l1.sparse_ascent(g, 0.2))
    np.testing.assert_allclose(step, [[0, -0.5, 0, 0.5, 0, 0, 0, 0, 0, 0]])
    assert np.asarray(l1.sparse_ascent(g, 0.01)).tolist() == [[0, -1.0] + [0] * 8]


def _linear(seed, d=10):
    """Logits (0, w.x): the margin maximiser over the L1 ball and the box is greedy in |w_i|."""
    w = jax.random.normal(jax.random.PRNGKey(seed), (d,))
    f = lambda z: jnp.stack([jnp.zeros(z.shape[0]), z.reshape(z.shape[0], -1) @ w], 1)  # noqa
    return w, f


def _greedy_optimum(w, x, eps):
    """max_{d} w.d over ||d||_1 <= eps, 0 <= x + d <= 1: fill by decreasing |w_i|."""
    gain, left = 0.0, eps
    for i in np.argsort(-np.abs(w)):
        room = (1 - x[i]) if w[i] > 0 else x[i]
        move = min(room, left)
        gain += abs(w[i]) * move
        left -= move
    return gain


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_linear_model_reaches_the_greedy_optimum(method):
    w, f = _linear(0)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 10), minval=0.2, maxval=0.8)
    y = jnp.zeros(5, jnp.int32)
    eps = 1.5  # more than the room of the best coordinate: the box binds
    if method == "pgd":
        # From x with small steps: the box-aware sparse step fills the coordinates
        # greedily; at the ball it oscillates within about a step of the optimum.
        x_adv = attacks.pgd(f, x, y, None, eps=eps, step_size=0.02, num_steps=100,
                            norm="l1", loss="cw", cw_kappa=1e9, random_start=False)
    else:
        x_adv = apgd.apgd(f, x, y, jax.random.PRNGKey(2), eps=eps, norm="l1", loss="cw",
                          cw_kappa=1e9, num_steps=60)
    assert_valid_adversarial(x_adv, x, eps=eps, norm="l1")
    got = np.asarray((x_adv - x) @ w)
    want = np.asarray([_greedy_optimum(np.asarray(w), np.asarray(xi), eps) for xi in x])
    np.testing.assert_allclose(got, want, rtol=2e-3 if method == "apgd" else 1e-2)


@pytest.fixture(scope="module")
def batch():
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 1))
    f = random_mlp(jax.random.PRNGKey(2), (8, 8, 1))
    return x, jnp.argmax(f(x), -1).astype(jnp.int32), f


def _fooled(f, x_adv, y):
    return np.asarray(jnp.argmax(f(x_adv), -1) != y)


@pytest.mark.slow
def test_apgd_l1_invariants_restarts_and_largereps(batch):
    x, y, f = batch
    eps = 1.0
    k = jax.random.PRNGKey(3)
    one = apgd.apgd(f, x, y, k, eps=eps, norm="l1", num_steps=12)
    assert_valid_adversarial(one, x, eps=eps, norm="l1")
    three = apgd.apgd(f, x, y, k, eps=eps, norm="l1", num_steps=12, restarts=3)
    a, b = _fooled(f, one, y), _fooled(f, three, y)
    assert np.sum(a & ~b) <= 1 and b.sum() >= a.sum() and 0 < a.sum() < len(a)
    big = apgd.apgd(f, x, y, k, eps=eps, norm="l1", num_steps=12, use_largereps=True)
    assert_valid_adversarial(big, x, eps=eps, norm="l1")  # the 3 eps phases never leak
    t = apgd.apgd_t(f, x, y, k, eps=eps, norm="l1", num_steps=12, num_targets=2,
                    use_largereps=True)
    assert_valid_adversarial(t, x, eps=eps, norm="l1")
    assert apgd_l1.largereps_schedule(100) == ((3.0, 30), (2.0, 30), (1.0, 40))
    with pytest.raises(ValueError, match="num_steps must be 3 or >= 5"):
        apgd.apgd(f, x, y, k, eps=eps, norm="l1", num_steps=4, use_largereps=True)
    with pytest.raises(ValueError, match="use_largereps"):
        apgd.apgd(f, x, y, k, eps=eps, norm="linf", use_largereps=True)


@pytest.mark.slow
def test_fab_l1_projection_matches_an_lp():
    rng = np.random.default_rng(1)
    for trial in range(10):
        d = int(rng.integers(3, 9))
        t = rng.uniform(0, 1, d)
        w = rng.normal(0, 1, d)
        b = float(w @ t + rng.normal(0, 0.5))
        got = np.asarray(fab.project_onto_hyperplane(
            jnp.asarray(t[None], jnp.float32), jnp.asarray(w[None], jnp.float32),
            jnp.asarray([b], jnp.float32), norm="l1"))[0]
        # min sum(a + c) s.t. w.(t + a - c) = b, 0 <= t + a - c <= 1, a, c >= 0.
        res = optimize.linprog(np.ones(2 * d), A_eq=np.concatenate([w, -w])[None],
                               b_eq=[b - w @ t], bounds=[(0, 1 - ti) for ti in t] +
                               [(0, ti) for ti in t])
        if res.status == 2:  # the box cannot reach the hyperplane: everything moves
            continue
        assert res.status == 0
        np.testing.assert_allclose(np.abs(got).sum(), res.fun, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(w @ (t + got), b, atol=1e-4)
        assert np.all(t + got >= -1e-6) and np.all(t + got <= 1 + 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["fab", "square", "pgd"])
def test_other_l1_attacks_stay_in_the_threat_model(batch, attack):
    x, y, f = batch
    eps = 1.0
    k = jax.random.PRNGKey(4)
    if attack == "fab":
        x_adv = fab.fab(f, x, y, k, eps=eps, norm="l1", num_steps=15, num_targets=2)
    elif attack == "square":
        x_adv = square.square(f, x, y, k, eps=eps, norm="l1", num_queries=150)
    else:
        x_adv = attacks.pgd(f, x, y, k, eps=eps, step_size=0.1, num_steps=15, norm="l1",
                            restarts=2)
    assert_valid_adversarial(x_adv, x, eps=eps, norm="l1")
    assert 0 < _fooled(f, x_adv, y).sum()


@pytest.mark.slow
def test_l1_sweep_curves(batch):
    """Every sweep attack in L1: validated points, accuracy 1 at eps 0 for clean-correct inputs."""
    x, y, f = batch
    xs, ys = np.asarray(x[:8]), np.asarray(y[:8])
    for j, name in enumerate(sweeps.SWEEP_ATTACKS):
        attack = sweeps.sweep_attack(name, f, norm="l1", num_steps=5, num_queries=20)
        curve = sweeps.accuracy_curve(f, xs, ys, jax.random.PRNGKey(j), attack, [0.0, 1.0, 3.0],
                                      norm="l1", batch_size=8)
        assert curve.accuracy[0] == 1.0 and curve.accuracy[2] <= curve.accuracy[0], name


@pytest.mark.slow
def test_l1_ensemble_and_the_l1_check(batch):
    x, y, f = batch
    res = autoattack.autoattack(f, np.asarray(x), np.asarray(y), eps=1.0, norm="l1",
                                num_steps=10, num_queries=50)
    assert list(res.accuracy_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert res.robust_accuracy <= res.accuracy_after["apgd-ce"] < res.clean_accuracy
    assert_valid_adversarial(jnp.asarray(res.x_adv), x, eps=1.0, norm="l1")
    # APGD-T runs the official code's 5 target classes for L1.
    _, ranks = ensemble.stage_attack("apgd-t", eps=1.0, norm="l1", version="standard",
                                     num_steps=10, num_queries=5, bounds=(0, 1),
                                     eot_samples=1)
    assert ranks == [2, 3, 4, 5, 6]
    # A point just outside the L1 ball (inside the L-inf ball of the same eps) is refused.
    bump = jnp.zeros_like(x).at[:, 0, :4, 0].set(0.26)
    outside = lambda xb, yb, kb: jnp.clip(xb + bump[: xb.shape[0]], 0, 1)  # noqa: E731
    xs = np.full((4, 8, 8, 1), 0.5, np.float32)
    with pytest.raises(evaluate.InvalidAdversarialError, match="l1 ball"):
        evaluate.robust_accuracy(f, xs, np.asarray(y[:4]), outside, eps=1.0, norm="l1")
    with pytest.raises(ValueError, match="num_steps must be 3 or >= 5"):
        autoattack.autoattack(f, np.asarray(x), np.asarray(y), eps=1.0, norm="l1",
                              num_steps=4)


@pytest.mark.slow
def test_l1_training_config(idx_dir, tmp_path):
    base = dict(data_dir=idx_dir, width=1, steps=2, batch_size=10, attack_steps=3,
                attack_step_size=1.0, eps=4.0, train_norm="l1", checkpoint_every=2,
                log_every=1, eval_examples=20, eval_batch_size=20, eval_attack_steps=(3,),
                lr=1e-3)
    cfg = train.TrainConfig(**base)
    with pytest.raises(ValueError, match="L-inf attack"):
        dataclasses.replace(cfg, train_attack="fgsm_rs").validate()
    result = train.train_and_evaluate(cfg, str(tmp_path / "wd"))
    names = [r["name"] for r in result["rows"]]
    assert "FGSM" not in names and any(n.startswith("PGD") for n in names)
    assert {r["norm"] for r in result["rows"]} == {"l1"}
