"""Convolution and max-pooling whose input gradients stay fast inside ``lax.fori_loop``.

PGD (Madry et al., Section 2.1) differentiates the model with respect to its
*input* once per step, inside a ``fori_loop``. Under XLA's CPU backend the
stock input gradient of ``lax.conv_general_dilated`` is a convolution whose
kernel is reversed and has its feature axes swapped through the dimension
labels (``01oi``). Outside a loop XLA materialises that kernel once; inside a
while loop it keeps the swapped labels and falls back to a generic loop
emitter that is several times slower than the library kernels. That is most
of why a rolled PGD loop ran at 0.4x PyTorch while the unrolled one did not.

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated``
(pass it to ``flax.linen.Conv(conv_general_dilated=...)``) that computes the
same function and the same gradients:

* ordinary convolutions get a custom VJP whose input gradient reads a kernel
  that is *physically* transposed (behind an ``optimization_barrier``, so XLA
  cannot fold the transpose back into the labels): the backward convolution
  then has the native ``01io`` layout on every backend;
* convolutions with very few input channels (the first layer on MNIST:
  1 -> 32 channels) are computed as im2col + matmul in plain JAX. A convolution
  whose input gradient has one channel is a poor shape for every convolution
  library (about 13 GFLOP/s here); as a matmul plus a sum of shifted slices
  it is about five times faster. Its patch extraction has a custom VJP too
  (see ``_patches_bwd``), so that the input gradient is a buffer read once.

:func:`max_pool_2x2` is 2x2/stride-2 max-pooling written as reshape + max
(no ``reduce_window``, whose gradient is a slow select-and-scatter on CPU),
with a VJP that routes each window's gradient to its first maximum, as
TensorFlow's ``MaxPoolGrad`` in Madry's original code does. Both that and
JAX's default (splitting the gradient between tied maxima) are valid
subgradients; they differ only at exact ties. The custom VJP saves the tie
counting and is about 5% of a PGD step on CPU.

Limitation: the custom VJPs do not support forward-mode autodiff (``jax.jvp``
/ ``jax.jacfwd`` directly through the model). Build models with
``loop_friendly=False`` to get the stock layers for that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "max_pool_2x2", "max_pool_2x2_autodiff",
           "max_pool_tiled", "conv_transpose", "IM2COL_MAX_IN_FEATURES"]

IM2COL_MAX_IN_FEATURES = 4
"""Convolutions with at most this many input channels use im2col + matmul."""

_NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1))  # lhs_spec, rhs_spec of NHWC x HWIO


def _conv(lhs, rhs, cfg):
    strides, padding, lhs_dil, rhs_dil, dn, precision = cfg
    return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dil, rhs_dil, dn,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_loop_friendly(lhs, rhs, cfg):
    return _conv(lhs, rhs, cfg)


def _conv_fwd(lhs, rhs, cfg):
    return _conv(lhs, rhs, cfg), (lhs, rhs)


def _conv_bwd(cfg, residuals, g):
    lhs, rhs = residuals
    strides, padding, lhs_dil, rhs_dil, dn, precision = cfg
    out_dim, in_dim = dn.rhs_spec[0], dn.rhs_spec[1]
    perm = list(range(rhs.ndim))
    perm[out_dim], perm[in_dim] = in_dim, out_dim
    # The same kernel with its two feature axes physically swapped, so the
    # transposed convolution below reads it in its native order.
    rhs_swapped = lax.optimization_barrier(jnp.transpose(rhs, perm))
    dn_swapped = lax.ConvDimensionNumbers(
        dn.lhs_spec, (in_dim, out_dim) + tuple(dn.rhs_spec[2:]), dn.out_spec)
    cfg_swapped = (strides, padding, lhs_dil, rhs_dil, dn_swapped, precision)
    (d_lhs,) = jax.linear_transpose(lambda l: _conv(l, rhs_swapped, cfg_swapped), lhs)(g)
    (d_rhs,) = jax.linear_transpose(lambda r: _conv(lhs, r, cfg), rhs)(g)
    return d_lhs, d_rhs


_conv_loop_friendly.defvjp(_conv_fwd, _conv_bwd)


def _extract_patches(xp, kh, kw, ho, wo):
    """[B, ho, wo, kh * kw, C]: the kh x kw windows of the padded input, row-major."""
    return jnp.stack([xp[:, a:a + ho, c:c + wo, :] for a in range(kh) for c in range(kw)],
                     axis=-2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _patches(xp, kh, kw, ho, wo):
    return _extract_patches(xp, kh, kw, ho, wo)


def _patches_fwd(xp, kh, kw, ho, wo):
    return _extract_patches(xp, kh, kw, ho, wo), xp.shape


def _patches_bwd(kh, kw, ho, wo, shape, g):
    """col2im: each window's gradient added back where the window was read.

    JAX's own transpose of :func:`_extract_patches` is one sum of kh * kw
    padded slices, which XLA fuses into *every* consumer of the input
    gradient: an attack that reads the gradient in several places (APGD,
    FAB's projections) recomputed it each time, about half of a FAB step on
    CPU. Summing the column offsets first and adding each row of windows into
    the result in place gives the same gradient (up to float summation order)
    as a buffer that consumers read once.
    """
    _, _, wp, _ = shape
    out = jnp.zeros(shape, g.dtype)
    for a in range(kh):
        row = sum(jnp.pad(g[:, :, :, a * kw + c, :], ((0, 0), (0, 0), (c, wp - wo - c), (0, 0)))
                  for c in range(kw))
        # A slice update, not ``out.at[...].add``: that is a scatter, which vmap (the
        # per-example evaluations of robustjax.runtime.mesh) turns into a slow batched scatter.
        at = (0, a, 0, 0)
        out = lax.dynamic_update_slice(out, lax.dynamic_slice(out, at, row.shape) + row, at)
    return (out,)


_patches.defvjp(_patches_fwd, _patches_bwd)


def _conv_im2col(lhs, rhs, padding, precision):
    """NHWC x HWIO stride-1 convolution as patches @ kernel."""
    kh, kw, cin, cout = rhs.shape
    b, h, w, _ = lhs.shape
    (plh, phh), (plw, phw) = padding
    xp = jnp.pad(lhs, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
    ho, wo = h + plh + phh - kh + 1, w + plw + phw - kw + 1
    patches = _patches(xp, kh, kw, ho, wo)
    out = jnp.dot(patches.reshape(-1, kh * kw * cin), rhs.reshape(kh * kw * cin, cout),
                  precision=precision)
    return out.reshape(b, ho, wo, cout)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated`` with a loop-friendly input gradient.

    Same arguments and results as the JAX function. Used by the paper's
    networks (:mod:`robustjax.models.paper`) so that the PGD inner maximisation of
    Section 2.1 runs at full speed as a ``fori_loop``. Grouped convolutions and
    ``preferred_element_type`` go to the stock implementation.
    """
    nspatial = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    ones = (1,) * nspatial
    lhs_dil = tuple(lhs_dilation) if lhs_dilation is not None else ones
    rhs_dil = tuple(rhs_dilation) if rhs_dilation is not None else ones
    strides = tuple(window_strides)
    if (feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None):
        return lax.conv_general_dilated(
            lhs, rhs, strides, padding, lhs_dil, rhs_dil, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    if isinstance(padding, str):
        in_shape = [lhs.shape[d] for d in dn.lhs_spec[2:]]
        window = [(rhs.shape[d] - 1) * r + 1 for d, r in zip(dn.rhs_spec[2:], rhs_dil)]
        padding = lax.padtype_to_pads(in_shape, window, strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if ((tuple(dn.lhs_spec), tuple(dn.rhs_spec)) == _NHWC_HWIO
            and tuple(dn.out_spec) == _NHWC_HWIO[0]
            and rhs.shape[2] <= IM2COL_MAX_IN_FEATURES
            and strides == ones and lhs_dil == ones and rhs_dil == ones
            and all(lo >= 0 and hi >= 0 for lo, hi in padding)):
        return _conv_im2col(lhs, rhs, padding, precision)
    return _conv_loop_friendly(lhs, rhs, (strides, padding, lhs_dil, rhs_dil, dn, precision))


def _pool_view(x):
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2, :].reshape(b, h2, 2, w2, 2, c)


def max_pool_2x2_autodiff(x: jax.Array) -> jax.Array:
    """2x2 max-pooling, stride 2, VALID, as reshape + max with JAX's own gradient.

    Same forward as :func:`max_pool_2x2`; tied maxima share the gradient. No
    ``reduce_window``, whose gradient is a slow select-and-scatter on CPU.
    """
    return jnp.max(_pool_view(x), axis=(2, 4))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling, stride 2, VALID (the paper's MNIST pooling), on NHWC inputs.

    Odd trailing rows/columns are dropped, as VALID pooling does. The gradient
    goes to the first maximum of each window (row-major), like TF's MaxPoolGrad.
    """
    return jnp.max(_pool_view(x), axis=(2, 4))


def _pool_fwd(x):
    y = max_pool_2x2(x)
    return y, (x, y)


def _pool_bwd(residuals, g):
    x, y = residuals
    is_max = _pool_view(x) == y[:, :, None, :, None, :]
    e00, e01 = is_max[:, :, 0:1, :, 0:1], is_max[:, :, 0:1, :, 1:2]
    e10, e11 = is_max[:, :, 1:2, :, 0:1], is_max[:, :, 1:2, :, 1:2]
    first = jnp.concatenate([
        jnp.concatenate([e00, e01 & ~e00], axis=4),
        jnp.concatenate([e10 & ~(e00 | e01), e11 & ~(e00 | e01 | e10)], axis=4)], axis=2)
    dx = jnp.where(first, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    b, h2, _, w2, _, c = dx.shape
    dx = dx.reshape(b, 2 * h2, 2 * w2, c)
    h, w = x.shape[1], x.shape[2]
    if (h, w) != (2 * h2, 2 * w2):
        dx = jnp.pad(dx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0)))
    return (dx,)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


def _tiled_view(x, window):
    """x cropped to whole windows and reshaped to [..., n_i, k_i, ...] per axis i."""
    x = x[tuple(slice(0, (n // k) * k) for n, k in zip(x.shape, window))]
    shape = []
    for n, k in zip(x.shape, window):
        shape += [n // k, k]
    return x.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_tiled(x: jax.Array, window: tuple) -> jax.Array:
    """Max-pooling whose windows tile the input: window = stride on every axis, no padding.

    ``window`` gives the window (= stride) per axis of ``x``, in any layout
    (NHWC, NCHW, 1-D or 3-D); trailing elements that do not fill a window are
    dropped, as VALID pooling does. The same function as
    ``lax.reduce_window(x, -inf, lax.max, window, window, "VALID")`` and the
    same gradient as JAX's: each window's gradient goes to its first maximum
    in row-major window order. Computed as reshape + max, without
    ``reduce_window``, whose gradient is a slow select-and-scatter on CPU.
    """
    return jnp.max(_tiled_view(x, window), axis=tuple(range(1, 2 * x.ndim, 2)))


def _tiled_fwd(x, window):
    y = max_pool_tiled(x, window)
    return y, (x, y)


def _tiled_bwd(window, residuals, g):
    x, y = residuals
    view = _tiled_view(x, window)
    yb = jnp.expand_dims(y, tuple(range(1, 2 * x.ndim, 2)))
    gb = jnp.expand_dims(g, tuple(range(1, 2 * x.ndim, 2)))
    nd = x.ndim
    # Flatten each window's offsets (row-major) onto one trailing axis, take the first maximum.
    perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
    flat = jnp.transpose(view == yb, perm).reshape(y.shape + (-1,))
    first = jax.nn.one_hot(jnp.argmax(flat, axis=-1), flat.shape[-1], dtype=bool)
    inv = tuple(i for pair in zip(range(nd), range(nd, 2 * nd)) for i in pair)
    first = jnp.transpose(first.reshape(y.shape + tuple(window)), inv)
    dx = jnp.where(first, gb, jnp.zeros((), g.dtype)).reshape(
        tuple(n * k for n, k in zip(y.shape, window)))
    pad = [(0, n - m) for n, m in zip(x.shape, dx.shape)]
    if any(hi for _, hi in pad):
        dx = jnp.pad(dx, pad)
    return (dx,)


max_pool_tiled.defvjp(_tiled_fwd, _tiled_bwd)


# ---------------------------------------------------------------------------------------------
# The transposed convolution of a linear bound's backward pass (robustjax.certify.crown), with a kernel
# gradient that is a matmul. Training with CROWN-IBP differentiates that pass with respect to
# the kernels; JAX's kernel gradient of a transposed convolution is a convolution whose window
# is the whole feature map, which XLA's CPU backend runs through a slow generic loop (about 10x
# the transposed convolution itself for DM-small). As im2col + matmul it is about 2x faster.

def _conv_nhwc(x, w, cfg):
    strides, padding, _ = cfg
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO",
                                    "NHWC"), precision=lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose(ct, w, cfg):
    """The transpose of ``x -> conv(x, w)`` applied to ``ct`` [N, Ho, Wo, O]: [N, H, W, C]."""
    shape = (ct.shape[0],) + cfg[2]
    (out,) = jax.linear_transpose(lambda x: _conv_nhwc(x, w, cfg),
                                  jax.ShapeDtypeStruct(shape, ct.dtype))(ct)
    return out


def conv_transpose_fwd(ct, w, cfg):
    return conv_transpose(ct, w, cfg), (ct, w)


def conv_transpose_bwd(cfg, residuals, g):
    ct, w = residuals
    (sh, sw), ((plh, phh), (plw, phw)), _ = cfg
    kh, kw, cin, cout = w.shape
    ho, wo = ct.shape[1], ct.shape[2]
    gp = jnp.pad(g, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
    cols = jnp.stack([gp[:, a:a + sh * (ho - 1) + 1:sh, c:c + sw * (wo - 1) + 1:sw, :]
                      for a in range(kh) for c in range(kw)], axis=-2)
    cols = cols.reshape(-1, kh * kw * cin)
    d_ct = jnp.dot(cols, w.reshape(-1, cout), precision=lax.Precision.HIGHEST)
    d_w = jnp.dot(cols.T, ct.reshape(-1, cout), precision=lax.Precision.HIGHEST)
    return d_ct.reshape(ct.shape), d_w.reshape(w.shape)


conv_transpose.defvjp(conv_transpose_fwd, conv_transpose_bwd)
