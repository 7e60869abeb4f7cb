"""Tests for robustjax.models.paper: the paper's architectures, counts and modes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.models import paper as models


def _count(model, shape, **kw):
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), **kw), jax.random.PRNGKey(0))
    return models.param_count(shapes["params"])


def _mnist_formula(w):
    c1, c2, fc = 2 * w, 4 * w, 64 * w
    return (25 * c1 + c1) + (25 * c1 * c2 + c2) + (7 * 7 * c2 * fc + fc) + (fc * 10 + 10)


def _cifar_formula(w):
    def unit(cin, cout):  # BN(cin) + conv3x3 + BN(cout) + conv3x3, no conv biases
        return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout

    total = 9 * 3 * 16  # stem
    cin = 16
    for f in (16 * w, 32 * w, 64 * w):
        total += unit(cin, f) + 4 * unit(f, f)
        cin = f
    return total + 2 * cin + cin * 10 + 10  # final BN + logits


def test_mnist_width16_is_madrys_model():
    assert _count(models.MnistCNN(16), (1, 28, 28, 1)) == 3_274_634


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16])
def test_mnist_capacity_family_counts(width):
    assert _count(models.MnistCNN(width), (1, 28, 28, 1)) == _mnist_formula(width)


def test_cifar_parameter_counts():
    assert _count(models.CifarResNet(1), (1, 32, 32, 3), train=False) == 464_154
    assert _count(models.CifarResNet(10), (1, 32, 32, 3), train=False) == 45_901_914
    assert _cifar_formula(1) == 464_154 and _cifar_formula(10) == 45_901_914


def test_shapes_and_bad_inputs():
    m = models.MnistCNN(1)
    p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert m.apply(p, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)
    with pytest.raises(ValueError, match="rank 4"):
        m.apply(p, jnp.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="width"):
        models.MnistCNN(0).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def test_max_pool_matches_flax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 3))
    np.testing.assert_array_equal(models.max_pool_2x2(x),
                                  nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))


def test_per_image_standardization_matches_numpy():
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    x[1] = 0.5  # constant image: std floored at 1/sqrt(N)
    n = 32 * 32 * 3
    mean = x.reshape(3, -1).mean(1)[:, None, None, None]
    std = x.reshape(3, -1).std(1)[:, None, None, None]
    ref = (x - mean) / np.maximum(std, 1 / np.sqrt(n))
    np.testing.assert_allclose(models.per_image_standardization(jnp.asarray(x)), ref,
                               atol=1e-5)


@pytest.fixture(scope="module")
def small_resnet():
    m = models.CifarResNet(1)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    return m, m.init(jax.random.PRNGKey(0), x, train=False), x


@pytest.mark.slow
def test_cifar_batch_norm_modes(small_resnet):
    m, v, x = small_resnet
    # Eval mode: running statistics, no mutation, per-example (batch-independent) outputs.
    out = m.apply(v, x, train=False)
    np.testing.assert_allclose(m.apply(v, x[:1], train=False), out[:1], rtol=1e-5, atol=1e-5)
    # Train mode: batch statistics, which must be declared mutable and get updated.
    with pytest.raises(Exception):
        m.apply(v, x, train=True)
    out_t, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(m.apply(v, x[:1], train=True, mutable=["batch_stats"])[0], out_t[:1])
    before = jax.tree_util.tree_leaves(v["batch_stats"])
    after = jax.tree_util.tree_leaves(upd["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # Decay 0.9 (TF's batch_norm in Madry's code): from zero running means, one
    # train step leaves 0.1 * the batch mean of the final BN's input.
    _, state = m.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                       capture_intermediates=True)
    feats = state["intermediates"]["unit_3_4"]["__call__"][0]
    np.testing.assert_allclose(state["batch_stats"]["final_bn"]["mean"],
                               0.1 * feats.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda f: models.MnistCNN(2, loop_friendly=f),
                                  lambda f: models.CifarResNet(1, loop_friendly=f)])
def test_loop_friendly_same_function_and_gradients(make):
    fast, stock = make(True), make(False)
    is_cifar = isinstance(fast, models.CifarResNet)
    shape = (3, 32, 32, 3) if is_cifar else (3, 28, 28, 1)
    x = jax.random.uniform(jax.random.PRNGKey(3), shape)
    v = fast.init(jax.random.PRNGKey(0), x, train=False)

    probe = jax.random.normal(jax.random.PRNGKey(4), (shape[0], 10))

    def loss(model, variables, z):
        return jnp.sum(probe * model.apply(variables, z, train=False))

    np.testing.assert_allclose(fast.apply(v, x, train=False), stock.apply(v, x, train=False),
                               rtol=1e-5, atol=1e-5)
    g_fast = jax.grad(loss, argnums=(1, 2))(fast, v, x)
    g_stock = jax.grad(loss, argnums=(1, 2))(stock, v, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_stock)):
        # Different but equivalent convolution algorithms: float32 rounding only.
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))
