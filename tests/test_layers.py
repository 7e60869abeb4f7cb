"""robustjax.models.layers.conv_general_dilated computes lax's convolution and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from robustjax.models import layers

CASES = [
    # (lhs shape, rhs shape, strides, padding, dimension numbers, rhs_dilation)
    ((2, 9, 9, 1), (5, 5, 1, 4), (1, 1), "SAME", ("NHWC", "HWIO", "NHWC"), None),  # im2col
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "VALID", ("NHWC", "HWIO", "NHWC"), None),  # im2col
    ((2, 9, 9, 6), (5, 5, 6, 4), (1, 1), "SAME", ("NHWC", "HWIO", "NHWC"), None),  # custom vjp
    ((2, 9, 8, 6), (3, 3, 6, 8), (2, 2), "SAME", ("NHWC", "HWIO", "NHWC"), None),
    ((2, 9, 8, 6), (3, 3, 6, 8), (2, 1), ((1, 0), (2, 1)), ("NHWC", "HWIO", "NHWC"), None),
    ((2, 6, 9, 9), (8, 6, 3, 3), (1, 1), "SAME", ("NCHW", "OIHW", "NCHW"), (2, 2)),
    ((2, 2, 9, 9), (8, 2, 3, 3), (1, 1), "SAME", ("NCHW", "OIHW", "NCHW"), None),
]


@pytest.mark.slow
@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding,dn,rhs_dil", CASES)
def test_matches_lax_values_and_vjp(lhs_shape, rhs_shape, strides, padding, dn, rhs_dil):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    lhs = jax.random.normal(k1, lhs_shape)
    rhs = jax.random.normal(k2, rhs_shape)

    def ref(l, r):
        return lax.conv_general_dilated(l, r, strides, padding, rhs_dilation=rhs_dil,
                                        dimension_numbers=dn)

    def ours(l, r):
        return layers.conv_general_dilated(l, r, strides, padding, rhs_dilation=rhs_dil,
                                           dimension_numbers=dn)

    out_ref, vjp_ref = jax.vjp(ref, lhs, rhs)
    out, vjp = jax.vjp(ours, lhs, rhs)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-4)
    ct = jax.random.normal(k3, out.shape)
    for a, b in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_input_gradient_inside_fori_loop_and_second_order():
    lhs = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 6))
    rhs = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 6, 6)) * 0.1
    dn = ("NHWC", "HWIO", "NHWC")

    def loop(conv):
        def body(_, z):
            g = jax.grad(lambda q: jnp.sum(jnp.tanh(conv(q, rhs, (1, 1), "SAME",
                                                         dimension_numbers=dn))))(z)
            return z + 0.1 * g
        return jax.jit(lambda z: lax.fori_loop(0, 5, body, z))(lhs)

    np.testing.assert_allclose(loop(layers.conv_general_dilated),
                               loop(lax.conv_general_dilated), rtol=1e-4, atol=1e-4)

    # Reverse-over-reverse goes through the custom VJP's backward pass.
    def f(conv, z):
        return jnp.sum(jnp.tanh(conv(z, rhs, (1, 1), "SAME", dimension_numbers=dn)) ** 2)

    def hvp(conv):
        return jax.grad(lambda z: jnp.vdot(jax.grad(lambda q: f(conv, q))(z), lhs))(lhs)

    np.testing.assert_allclose(hvp(layers.conv_general_dilated),
                               hvp(lax.conv_general_dilated), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_max_pool_forward_and_first_argmax_gradient(shape):
    import flax.linen as nn

    rng = np.random.default_rng(0)
    # Values from a small set: many exact ties inside windows.
    x = rng.integers(0, 3, shape).astype(np.float32)
    np.testing.assert_array_equal(layers.max_pool_2x2(jnp.asarray(x)),
                                  nn.max_pool(jnp.asarray(x), (2, 2), (2, 2), "VALID"))
    g = rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32)
    _, vjp = jax.vjp(layers.max_pool_2x2, jnp.asarray(x))
    (dx,) = vjp(jnp.asarray(g))
    ref = np.zeros_like(x)  # NumPy: each window's gradient to its first (row-major) max
    for b in range(shape[0]):
        for i in range(shape[1] // 2):
            for j in range(shape[2] // 2):
                for c in range(shape[3]):
                    win = x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c].ravel()
                    k = int(np.argmax(win))
                    ref[b, 2 * i + k // 2, 2 * j + k % 2, c] = g[b, i, j, c]
    np.testing.assert_array_equal(dx, ref)


def test_max_pool_gradient_equals_jax_without_ties():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    g = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 4))
    ref = jax.vjp(lambda z: jnp.max(z.reshape(2, 4, 2, 4, 2, 4), axis=(2, 4)), x)[1](g)[0]
    np.testing.assert_array_equal(jax.vjp(layers.max_pool_2x2, x)[1](g)[0], ref)
