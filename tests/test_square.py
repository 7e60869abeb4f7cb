"""The Square attack (Andriushchenko et al. 2020): schedule, patterns, invariants, no gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import first_order as attacks
from robustjax.attacks import square
from robustjax.evaluation.accuracy import robust_accuracy

from conftest import assert_valid_adversarial


def test_p_schedule_is_the_papers():
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 501: 0.05,
                1001: 0.025, 2001: 0.0125, 4001: 0.00625, 6001: 0.003125, 8001: 0.0015625}
    for i, p in expected.items():
        np.testing.assert_allclose(float(square.p_schedule(i)), p, rtol=1e-6)
    # Stretched to 1000 queries, query 100 is at 10% of the budget: as 1000 of 10000.
    np.testing.assert_allclose(float(square.p_schedule(100, num_queries=1000, rescale=True)),
                               0.8 / 16, rtol=1e-6)


def _rectangle_reference(nx, ny):
    """The paper's pattern built literally: rectangles of growing size, 1 / (k + 1)^2 each."""
    d = np.zeros((nx, ny))
    cx, cy = nx // 2, ny // 2
    for k in range(max(nx // 2 + 1, ny // 2 + 1)):
        d[max(cx - k, 0):min(cx + k + 1, nx), max(cy - k, 0):min(cy + k + 1, ny)] += \
            1.0 / (k + 1) ** 2
    return d / np.sqrt(np.sum(d * d))


@pytest.mark.parametrize("s", [1, 3, 5, 8, 13, 28])
def test_eta_pattern_matches_the_construction(s):
    eta = np.zeros((s, s))
    if s // 2:
        eta[:s // 2] = _rectangle_reference(s // 2, s)
    eta[s // 2:] = -_rectangle_reference(s - s // 2, s)
    eta /= np.sqrt(np.sum(eta * eta))
    got = np.asarray(square._eta_table(jnp.asarray(s), 28))  # traced side, as in the loop
    np.testing.assert_allclose(got[:s, :s], eta, atol=1e-6)
    assert np.all(got[s:] == 0) and np.all(got[:, s:] == 0)


@pytest.fixture(scope="module")
def batch():
    x = jax.random.uniform(jax.random.PRNGKey(0), (12, 10, 10, 3))
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    w1, w2 = jax.random.normal(k1, (300, 32)) / 17, jax.random.normal(k2, (32, 10)) / 6
    f = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w1) @ w2 * 5
    return x, jnp.argmax(f(x), -1).astype(jnp.int32), f


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_invariants(batch, norm, eps):
    x, y, f = batch
    run = jax.jit(lambda x, y, k: square.square(f, x, y, k, eps=eps, norm=norm,
                                                num_queries=200))
    out = run(x, y, jax.random.PRNGKey(1))
    assert_valid_adversarial(out, x, eps=eps, norm=norm)
    np.testing.assert_array_equal(out, run(x, y, jax.random.PRNGKey(1)))
    assert not np.array_equal(out, run(x, y, jax.random.PRNGKey(2)))
    if norm == "linf":  # every changed pixel sits at a vertex of the ball or at the bounds
        delta = np.abs(np.asarray(out - x))
        at_vertex = np.isclose(delta, eps, atol=1e-6) | np.isclose(np.asarray(out), 0) | \
            np.isclose(np.asarray(out), 1)
        assert np.all(at_vertex | (delta < 1e-7))
    # More queries never end with a higher margin loss (the search only accepts improvements).
    longer = square.square(f, x, y, jax.random.PRNGKey(1), eps=eps, norm=norm,
                           num_queries=400)
    m = lambda z: np.asarray(-attacks.margin(f(z), y))
    assert np.all(m(longer) <= m(out) + 1e-5)


def _no_gradient_model(logits_fn):
    """The model with a VJP that raises: any attempt to differentiate it fails loudly."""
    @jax.custom_vjp
    def forward(z):
        return logits_fn(z)

    def fwd(z):
        return logits_fn(z), None

    def bwd(_, g):
        raise AssertionError("the attack differentiated the model")

    forward.defvjp(fwd, bwd)
    return forward


def test_square_never_calls_the_gradient(batch):
    x, y, f = batch
    trap = _no_gradient_model(f)
    out = square.square(trap, x, y, jax.random.PRNGKey(0), eps=0.05, num_queries=50)
    assert out.shape == x.shape
    with pytest.raises(AssertionError, match="differentiated"):
        attacks.pgd(trap, x, y, jax.random.PRNGKey(0), eps=0.05, step_size=0.01, num_steps=2)


@pytest.mark.slow
def test_square_breaks_a_model_whose_gradients_are_zero(natural_model):
    """Gradient masking in its plainest form: stop_gradient on the input. PGD then never
    moves from its random start, while the gradient-free Square attack still breaks most
    digits at eps 0.3 (real digits, a naturally trained model)."""
    m = natural_model
    masked = jax.jit(lambda z: m.logits_fn(jax.lax.stop_gradient(z)))
    x, y = m.x[:100], m.y[:100]
    eps = 0.3
    pgd = robust_accuracy(masked, x, y, lambda a, b, k: attacks.pgd(
        masked, a, b, k, eps=eps, step_size=0.01, num_steps=20), eps=eps, batch_size=100)
    sq = robust_accuracy(masked, x, y, lambda a, b, k: square.square(
        masked, a, b, k, eps=eps, num_queries=300), eps=eps, batch_size=100)
    print(dict(clean=pgd.clean_accuracy, pgd=pgd.accuracy, square=sq.accuracy))
    assert pgd.accuracy >= pgd.clean_accuracy - 0.15  # PGD stays at its random start
    assert sq.accuracy <= pgd.accuracy - 0.4


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_queries=0), "num_queries"), (dict(eps=-0.1), "eps"), (dict(norm="l0"), "norm"),
    (dict(p_init=1.5), "p_init"), (dict(p_init=0.0), "p_init"), (dict(loss="xent"), "loss")])
def test_bad_input_names_the_argument(batch, kwargs, match):
    x, y, f = batch
    with pytest.raises(ValueError, match=match):
        square.square(f, x, y, jax.random.PRNGKey(0), **{"eps": 0.1, **kwargs})
    with pytest.raises(ValueError, match="images"):
        square.square(f, x.reshape(12, -1), y, jax.random.PRNGKey(0), eps=0.1)
