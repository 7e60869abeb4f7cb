"""FAB and FAB-T (Croce & Hein 2020): exact projections, closed-form minimal perturbations, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from robustjax.attacks import first_order as attacks
from robustjax.attacks import fab

from conftest import assert_valid_adversarial


# ---------------------------------------------------------------------------
# The box-constrained projection against an LP / QP solver
# ---------------------------------------------------------------------------

def _solve_reference(t, w, b, norm):
    """min ||d|| s.t. w.(t + d) = b, 0 <= t + d <= 1 by scipy; None if infeasible."""
    dim = t.size
    bounds = [(-t[i], 1 - t[i]) for i in range(dim)]
    rhs = b - w @ t
    if norm == "linf":
        a_ub = np.r_[np.c_[np.eye(dim), -np.ones(dim)], np.c_[-np.eye(dim), -np.ones(dim)]]
        res = linprog(np.r_[np.zeros(dim), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dim),
                      A_eq=np.r_[w, 0.0][None], b_eq=[rhs], bounds=bounds + [(0, None)])
        return res.x[-1] if res.status == 0 else None
    res = minimize(lambda d: d @ d, np.zeros(dim), jac=lambda d: 2 * d, bounds=bounds,
                   constraints=[dict(type="eq", fun=lambda d: w @ d - rhs)], method="SLSQP",
                   options=dict(ftol=1e-14, maxiter=1000))
    ok = res.success and abs(w @ res.x - rhs) < 1e-7 * np.abs(w).sum()
    return np.linalg.norm(res.x) if ok else None


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_lp_and_qp(norm):
    rng = np.random.default_rng(0)
    dim, trials = 6, 120
    t = rng.random((trials, dim))
    w = rng.normal(size=(trials, dim)) * np.exp(rng.normal(size=(trials, 1)) * 2)
    w[::5, 0] = 0.0          # coordinates the hyperplane ignores
    t[::7, 1] = 0.0          # coordinates already at the box
    b = np.sum(w * t, 1) + rng.normal(size=trials) * np.abs(w).sum(1) / 3
    d = np.asarray(fab.project_onto_hyperplane(jnp.asarray(t, jnp.float32),
                                               jnp.asarray(w, jnp.float32),
                                               jnp.asarray(b, jnp.float32), norm=norm))
    z = t + d
    assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
    assert np.all(d[w == 0] == 0)
    checked = 0
    for i in range(trials):
        gap = w[i] @ t[i] - b[i]
        toward = -np.sign(w[i]) * np.sign(gap)            # the direction that closes the gap
        full = np.where(toward > 0, 1 - t[i], -t[i]) * (w[i] != 0)
        if abs(w[i] @ full) <= abs(gap):  # unreachable inside the box: all the way to it
            np.testing.assert_allclose(d[i], full, atol=1e-6)
            continue
        assert abs(w[i] @ z[i] - b[i]) <= 1e-4 * np.abs(w[i]).sum()
        ref = _solve_reference(t[i], w[i], b[i], norm)
        if ref is None:  # the QP solver gave up; the LP never does
            continue
        checked += 1
        size = np.abs(d[i]).max() if norm == "linf" else np.linalg.norm(d[i])
        np.testing.assert_allclose(size, ref, rtol=1e-4, atol=1e-6)
    assert checked > trials // 3


# ---------------------------------------------------------------------------
# Closed-form minimal perturbations of linear models
# ---------------------------------------------------------------------------

def _linear(key, num_classes, shape=(6, 6, 1)):
    w = jax.random.normal(key, (int(np.prod(shape)), num_classes))
    return (lambda z: z.reshape(z.shape[0], -1) @ w), w


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [True, False])
def test_linear_model_minimal_perturbation(norm, targeted):
    """For logits W x, the smallest perturbation to class k is |z_k - z_y| / ||w_k - w_y||_q.

    Points near the middle of the box, so the box does not bind. FAB-T towards
    the runner-up (one target), and untargeted FAB over all classes, find it up
    to a relative 1% (FAB overshoots the boundary by eta = 1.05, then backs off).
    """
    f, w = _linear(jax.random.PRNGKey(0), 4)
    x = 0.45 + 0.1 * jax.random.uniform(jax.random.PRNGKey(1), (8, 6, 6, 1))
    z = np.asarray(f(x))
    y = z.argmax(1)
    q = 1 if norm == "linf" else 2
    wn = np.asarray(w)
    with np.errstate(invalid="ignore"):  # k == y: 0 / 0, replaced below
        dist = np.stack([np.abs(z[:, k] - z[np.arange(8), y]) /
                         np.linalg.norm(wn[:, k][None] - wn[:, y].T, ord=q, axis=1)
                         for k in range(4)], 1)
    dist[np.arange(8), y] = np.inf
    runner_up = np.argsort(z, 1)[:, -2]
    expected = dist[np.arange(8), runner_up] if targeted else dist.min(1)
    adv, found = fab.fab_min_norm(f, x, jnp.asarray(y), jax.random.PRNGKey(2), norm=norm,
                                  targeted=targeted, num_targets=1, num_steps=30)
    np.testing.assert_allclose(found, expected, rtol=0.01)
    assert np.all(np.asarray(jnp.argmax(f(adv), -1)) != y)
    np.testing.assert_allclose(attacks.NORMS[norm].distance(adv - x), found, rtol=1e-5)
    # Within an eps-ball: fooled iff the minimum is below eps, else x back unchanged.
    eps = float(np.median(expected))
    out = fab.fab(f, x, jnp.asarray(y), jax.random.PRNGKey(2), eps=eps, norm=norm,
                  targeted=targeted, num_targets=1, num_steps=30)
    broken = np.asarray(jnp.argmax(f(out), -1)) != y
    np.testing.assert_array_equal(broken, np.asarray(found) <= eps)
    np.testing.assert_array_equal(np.asarray(out)[~broken], np.asarray(x)[~broken])
    assert float(attacks.NORMS[norm].distance(out - x).max()) <= eps + 1e-6


@pytest.mark.slow
def test_final_search_shrinks_and_stays_adversarial():
    f, _ = _linear(jax.random.PRNGKey(3), 10)
    x = 0.4 + 0.2 * jax.random.uniform(jax.random.PRNGKey(4), (16, 6, 6, 1))
    y = jnp.argmax(f(x), -1)
    kw = dict(norm="l2", targeted=True, num_targets=3, num_steps=5)
    a0, n0 = fab.fab_min_norm(f, x, y, None, final_search_steps=0, **kw)
    a3, n3 = fab.fab_min_norm(f, x, y, None, final_search_steps=3, **kw)
    assert np.all(np.asarray(n3) <= np.asarray(n0) + 1e-6) and float(jnp.sum(n3 < n0)) > 0
    assert np.all(np.asarray(jnp.argmax(f(a3), -1) != y))


# ---------------------------------------------------------------------------
# Invariants and bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("targeted,restarts", [(True, 1), (False, 2)])
def test_invariants(norm, eps, targeted, restarts):
    x = jax.random.uniform(jax.random.PRNGKey(0), (12, 8, 8, 1))
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    w1, w2 = jax.random.normal(k1, (64, 32)) / 8, jax.random.normal(k2, (32, 10)) / 6
    f = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w1) @ w2 * 5
    y = jnp.argmax(f(x), -1)
    run = jax.jit(lambda x, y, k: fab.fab(f, x, y, k, eps=eps, norm=norm, targeted=targeted,
                                          num_targets=3, restarts=restarts, num_steps=10))
    out = run(x, y, jax.random.PRNGKey(1))
    assert_valid_adversarial(out, x, eps=eps, norm=norm)
    np.testing.assert_array_equal(out, run(x, y, jax.random.PRNGKey(1)))
    assert np.any(np.asarray(jnp.argmax(f(out), -1) != y)), "eps should break some"


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-1.0), "eps"), (dict(norm="l0"), "norm"), (dict(num_steps=0), "num_steps"),
    (dict(restarts=0), "restarts"), (dict(num_targets=0), "num_targets"),
    (dict(num_targets=10), "target ranks"), (dict(eta=0.0), "eta"),
    (dict(final_search_steps=-1), "final_search_steps")])
def test_bad_input_names_the_argument(kwargs, match):
    f, _ = _linear(jax.random.PRNGKey(0), 10)
    x = jnp.full((2, 6, 6, 1), 0.5)
    y = jnp.zeros(2, jnp.int32)
    with pytest.raises(ValueError, match=match):
        fab.fab(f, x, y, jax.random.PRNGKey(0), **{"eps": 0.1, **kwargs})
