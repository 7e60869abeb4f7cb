"""The Monte Carlo part of randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019,
Algorithm 1's ``SampleUnderNoise``): counts of the base classifier's votes at noisy copies.

``counts[i, c]`` is how many of ``num`` draws ``x_i + delta``, ``delta ~ N(0, sigma^2 I)``,
the base classifier ``argmax logits_fn`` assigns to class ``c``. The draws are a jitted
loop over noise batches of ``batch`` copies per example (``lax.fori_loop``), so memory
grows with ``len(x) * batch``, never with ``num``; the counts stream through the loop's
carry.

Example ``i``'s noise comes from its own key, ``fold_in(fold_in(fold_in(key, index_i),
stream), b)`` for noise batch ``b``: the counts of an example do not depend on which
other examples share its call, on how the examples are split over devices
(:func:`robustjax.runtime.mesh.sharded`: each device samples for its own rows, with no
communication), or on where an interrupted run resumed. They do depend on ``batch``.
The noise is added without clipping to the input box, as in the paper (Theorem 1 holds for
the Gaussian on all of R^d).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.models import fastpath
from robustjax.runtime import mesh as _mesh

__all__ = ["STREAMS", "vote_counts", "sample_counts"]

STREAMS = {"select": 0, "estimate": 1, "predict": 2}
"""The independent noise streams of one example: CERTIFY's selection and estimation
samples, and PREDICT's."""


def vote_counts(logits_fn, x: jax.Array, keys: jax.Array, *, sigma, num: int, batch: int,
                num_classes: int) -> jax.Array:
    """``[B, num_classes]`` int32 vote counts of ``num`` noisy copies of each row of ``x``.

    ``keys`` holds one key per row (already folded by example and stream); noise batch
    ``b`` of row ``i`` is ``sigma * normal(fold_in(keys[i], b), [batch, *x.shape[1:]])``.
    The last batch is masked to the ``num`` draws asked for. Pure and jit-able. The model
    runs through :func:`robustjax.models.fastpath.auto` (its fast convolutions on CPU).
    """
    logits_fn = fastpath.auto(logits_fn)
    steps = -(-num // batch)
    shape = x.shape[1:]

    def body(b, counts):
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, b),
                                                     (batch,) + shape, jnp.float32))(keys)
        z = x[:, None].astype(jnp.float32) + sigma * noise
        logits = logits_fn(z.reshape((-1,) + shape).astype(x.dtype))
        votes = jnp.argmax(logits, axis=-1).reshape(x.shape[0], batch)
        valid = (b * batch + jnp.arange(batch)) < num
        hits = jax.nn.one_hot(votes, num_classes, dtype=jnp.int32) * valid[None, :, None]
        return counts + jnp.sum(hits, axis=1)

    return jax.lax.fori_loop(0, steps, body, jnp.zeros((x.shape[0], num_classes), jnp.int32))


def sample_counts(logits_fn, x, key: jax.Array, *, sigma: float, num: int, batch: int,
                  stream: str, num_classes: int, indices=None, chunk: Optional[int] = None,
                  mesh=None, progress=None) -> np.ndarray:
    """Vote counts ``[N, num_classes]`` (NumPy) of every example of ``x`` (host array),
    sampled over every device of ``mesh`` (default: all), ``chunk`` examples per call.

    ``indices`` (default ``0..N-1``) are the examples' global indices, which fix their
    noise; ``stream`` is one of :data:`STREAMS`. ``progress(done, total)`` runs after
    each call. ``chunk`` defaults to about 2,048 noisy inputs per forward pass on each CPU
    device (larger passes run slower there) and 65,536 on accelerators.
    """
    _checks.check_choice("stream", stream, tuple(STREAMS))
    mesh = _mesh.make_mesh() if mesh is None else mesh
    x = np.asarray(x)
    n = x.shape[0]
    indices = np.arange(n, dtype=np.int32) if indices is None else np.asarray(indices, np.int32)
    batch = min(batch, num)
    per_device = 2048 if jax.default_backend() == "cpu" else 65536
    chunk = _mesh.padded_size(chunk or max(1, per_device // batch) * mesh.size, mesh)
    call = _program(logits_fn, mesh, num, batch, num_classes, STREAMS[stream])
    sigma = np.float32(sigma)
    out = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        size = chunk if stop - start == chunk else _mesh.padded_size(stop - start, mesh)
        out.append(np.asarray(_mesh.map_batch(call, mesh, [x[start:stop], indices[start:stop]],
                                              [key, sigma], size=size)))
        if progress is not None:
            progress(stop, n)
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.int32)


@functools.lru_cache(maxsize=8)
def _program(logits_fn, mesh, num: int, batch: int, num_classes: int, sid: int):
    """The jitted, sharded sampler of one setting, kept so that the chunks of a table (and
    repeated calls) compile once."""
    def run(xb, ib, key, sigma):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), sid))(ib)
        return vote_counts(logits_fn, xb, keys, sigma=sigma, num=num, batch=batch,
                           num_classes=num_classes)

    return _mesh.sharded(run, mesh, num_batched=2)
