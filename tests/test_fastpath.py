"""robustjax.models.fastpath: the rewrite computes the same function and gradients on stock models."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jex

from robustjax.attacks import apgd
from robustjax.attacks import first_order as attacks
from robustjax.attacks import fab
from robustjax.models import fastpath
from robustjax.models import layers
from robustjax.training import trades


def _primitives(closed) -> set:
    """Every primitive name in a jaxpr, nested jaxprs included."""
    names = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for sub in jex.jaxprs_in_params(eqn.params):
                walk(sub)
    walk(closed.jaxpr)
    return names


def _input_grad(fn, x, y):
    return jax.grad(lambda z: jnp.sum(attacks.xent_loss(fn(z), y)))(x)


def _jit_input_grad(fn, x, y):
    return jax.jit(lambda z: _input_grad(fn, z, y))(x)


def _assert_same_function(fn, x, y, *, exact_forward=True):
    fast = fastpath.rewrite(fn)
    ref, out = jax.jit(fn)(x), jax.jit(fast)(x)
    if exact_forward:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    else:
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    g_ref, g_fast = _jit_input_grad(fn, x, y), _jit_input_grad(fast, x, y)
    scale = float(jnp.max(jnp.abs(g_ref)))
    assert scale > 0
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_ref), rtol=1e-4,
                               atol=1e-5 * scale)
    return fast


class StockFlax(nn.Module):
    """Stock Flax layers: strides, SAME/VALID/explicit padding, batch norm (inference), pools."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(16, (3, 3), strides=(2, 2), padding=((1, 2), (0, 1)))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.Conv(16, (3, 3), padding="VALID", kernel_dilation=(2, 1))(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(1, 1))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def _stock_flax():
    model = StockFlax()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 3)))
    stats = jax.tree_util.tree_map(  # batch statistics that are not the identity
        lambda v: jax.random.uniform(jax.random.PRNGKey(v.size), v.shape, minval=0.5, maxval=1.5),
        variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    return lambda z: model.apply(variables, z)


def _batch(shape, seed=1, classes=10):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return (jax.random.uniform(kx, shape),
            jax.random.randint(ky, (shape[0],), 0, classes))


@pytest.mark.slow
def test_stock_flax_model_same_function_and_rewritten():
    fn = _stock_flax()
    x, y = _batch((4, 20, 20, 3))
    fast = _assert_same_function(fn, x, y, exact_forward=False)
    grad_prims = _primitives(jax.make_jaxpr(lambda z: _input_grad(fast, z, y))(x))
    stock_prims = _primitives(jax.make_jaxpr(lambda z: _input_grad(fn, z, y))(x))
    assert "select_and_scatter_add" in stock_prims
    assert "select_and_scatter_add" not in grad_prims  # the tiled max-pool was replaced
    assert "custom_vjp_call" in grad_prims  # the convolutions were replaced
    assert "reduce_window_sum" in grad_prims  # avg_pool is kept as it is


def _haiku_style_params(key):
    k = jax.random.split(key, 6)
    return dict(w1=jax.random.normal(k[0], (8, 2, 3, 3)) * 0.3,     # OIHW
                w2=jax.random.normal(k[1], (8, 4, 3, 3)) * 0.2,     # grouped: 2 groups
                w3=jax.random.normal(k[2], (6, 8, 2, 2)) * 0.2,     # transposed conv (lhs dil.)
                w4=jax.random.normal(k[3], (12, 6, 3, 3)) * 0.2,    # dilated
                scale=jax.random.uniform(k[4], (12,), minval=0.5, maxval=2.0),
                dense=jax.random.normal(k[5], (12 * 2 * 2, 5)) * 0.1)


def _haiku_style(params, x):
    """Hand-written ``lax`` in NCHW (as a Haiku or PyTorch-converted model is)."""
    dn = ("NCHW", "OIHW", "NCHW")
    x = jnp.transpose(x, (0, 3, 1, 2))
    x = jax.nn.relu(lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME",
                                             dimension_numbers=dn))
    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    x = jax.nn.relu(lax.conv_general_dilated(x, params["w2"], (1, 1), "SAME",
                                             dimension_numbers=dn, feature_group_count=2))
    x = lax.conv_general_dilated(x, params["w3"], (1, 1), ((1, 1), (1, 1)),
                                 lhs_dilation=(2, 2), dimension_numbers=dn)
    x = jax.nn.relu(lax.conv_general_dilated(x, params["w4"], (2, 2), "VALID",
                                             rhs_dilation=(2, 2), dimension_numbers=dn))
    x = x * params["scale"][None, :, None, None]
    # 3x3 windows tiling an odd-sized map (the last row and column are dropped).
    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 3, 3), "VALID")
    return x.reshape(x.shape[0], -1) @ params["dense"]


@pytest.mark.slow
def test_hand_written_lax_model_nchw_groups_dilation_padding():
    params = _haiku_style_params(jax.random.PRNGKey(2))
    fn = functools.partial(_haiku_style, params)
    x, y = _batch((3, 16, 16, 2), classes=5)
    assert fn(x).shape == (3, 5)
    fast = _assert_same_function(fn, x, y, exact_forward=False)
    prims = _primitives(jax.make_jaxpr(lambda z: _input_grad(fast, z, y))(x))
    assert "select_and_scatter_add" not in prims
    # The grouped convolution is not recognised: it is kept in its stock form.
    assert "conv_general_dilated" in prims


@pytest.mark.slow
def test_nested_jit_and_remat_are_rewritten_inside():
    fn = _stock_flax()
    inner = jax.jit(fn)
    fn2 = jax.checkpoint(lambda z: inner(z) * 2.0)
    x, y = _batch((2, 20, 20, 3))
    fast = _assert_same_function(fn2, x, y, exact_forward=False)
    prims = _primitives(jax.make_jaxpr(lambda z: _input_grad(fast, z, y))(x))
    assert "select_and_scatter_add" not in prims


@pytest.mark.slow
@pytest.mark.parametrize("shape,window", [
    ((2, 6, 6, 3), (1, 2, 2, 1)),      # NHWC 2x2 (layers.max_pool_2x2)
    ((2, 3, 7, 7), (1, 1, 2, 2)),      # NCHW, odd size
    ((2, 9, 8, 2), (1, 3, 2, 1)),      # rectangular windows
    ((3, 10, 4), (1, 5, 1)),           # 1-D
])
def test_tiled_max_pool_same_values_and_gradient_at_ties(shape, window):
    # Values in {0, 1, 2}: most windows hold tied maxima, where the gradient must
    # still go to the same (first, row-major) element as JAX's own.
    x = jax.random.randint(jax.random.PRNGKey(3), shape, 0, 3).astype(jnp.float32)

    def stock(z):
        return lax.reduce_window(z, -jnp.inf, lax.max, window, window, "VALID")

    fast = fastpath.rewrite(stock)
    np.testing.assert_array_equal(np.asarray(fast(x)), np.asarray(stock(x)))
    w = jax.random.normal(jax.random.PRNGKey(4), stock(x).shape)
    g_ref = jax.grad(lambda z: jnp.sum(stock(z) * w))(x)
    g_fast = jax.grad(lambda z: jnp.sum(fast(z) * w))(x)
    np.testing.assert_array_equal(np.asarray(g_fast), np.asarray(g_ref))
    g_tiled = jax.grad(lambda z: jnp.sum(layers.max_pool_tiled(z, window) * w))(x)
    np.testing.assert_array_equal(np.asarray(g_tiled), np.asarray(g_ref))


def test_unrecognised_pooling_is_kept():
    def overlapping(z):  # 3x3 windows, stride 2, padded: not tiled
        return lax.reduce_window(z, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = jax.random.uniform(jax.random.PRNGKey(5), (2, 8, 8, 3))
    fast = fastpath.rewrite(overlapping)
    np.testing.assert_array_equal(np.asarray(fast(x)), np.asarray(overlapping(x)))
    assert "reduce_window_max" in _primitives(jax.make_jaxpr(fast)(x))


def test_randomised_model_pytree_outputs_and_untraceable_fallback():
    def noisy(z, key):
        return {"logits": z.reshape(z.shape[0], -1)[:, :4] + jax.random.normal(key, (4,))}

    x = jax.random.uniform(jax.random.PRNGKey(6), (2, 3, 3, 1))
    key = jax.random.PRNGKey(7)
    chex.assert_trees_all_equal(fastpath.rewrite(noisy)(x, key), noisy(x, key))

    def python_control_flow(z):  # not traceable to a jaxpr: called as it is
        return z * 2.0 if float(jnp.sum(z)) > 0 else z

    np.testing.assert_array_equal(np.asarray(fastpath.rewrite(python_control_flow)(x)),
                                  np.asarray(x * 2.0))


@pytest.mark.slow
def test_auto_switches(monkeypatch):
    fn = _stock_flax()
    monkeypatch.delenv(fastpath.ENV_VAR, raising=False)
    fast = fastpath.auto(fn)
    assert fast is not fn and fastpath.auto(fast) is fast and fastpath.rewrite(fast) is fast
    kept = fastpath.stock(fn)
    assert fastpath.auto(kept) is kept
    monkeypatch.setenv(fastpath.ENV_VAR, "0")
    assert not fastpath.enabled() and fastpath.auto(fn) is fn
    monkeypatch.setenv(fastpath.ENV_VAR, "1")
    monkeypatch.setattr(fastpath, "FAST_BACKENDS", ())
    assert fastpath.auto(fn) is fn


def _attack_outputs(fn, x, y):
    key = jax.random.PRNGKey(8)
    return dict(
        pgd=attacks.pgd(fn, x, y, key, eps=0.1, step_size=0.02, num_steps=5),
        fgsm=attacks.fgsm(fn, x, y, eps=0.1),
        apgd=apgd.apgd(fn, x, y, key, eps=0.1, num_steps=5),
        fab=fab.fab(fn, x, y, key, eps=0.1, num_steps=5, num_targets=2),
        trades=trades.trades_attack(fn, x, y, key, eps=0.1, step_size=0.02, num_steps=5),
    )


@pytest.mark.slow
def test_attacks_with_and_without_the_rewrite_agree(monkeypatch):
    fn = _stock_flax()
    x, y = _batch((4, 20, 20, 3))
    monkeypatch.setenv(fastpath.ENV_VAR, "1")
    fast = jax.tree_util.tree_map(np.asarray, _attack_outputs(fn, x, y))
    monkeypatch.setenv(fastpath.ENV_VAR, "0")
    ref = jax.tree_util.tree_map(np.asarray, _attack_outputs(fn, x, y))
    for name in ref:
        a, b = fast[name], ref[name]
        # Sign steps can flip where a gradient entry is at float round-off:
        # allow a tiny fraction of differing pixels, nothing more.
        differ = np.mean(np.abs(a - b) > 1e-5)
        assert differ < 0.01, (name, differ)
