"""One device mesh for training and every evaluation: a ``"data"`` axis over all devices
of all processes (JAX's multi-controller SPMD model, ``jax.sharding``).

Every process runs the same program. A batch of examples is laid out along
the mesh's ``"data"`` axis: each process places only its own share of the
batch on its own devices (:func:`shard_batch`), the computation runs where
the data is, and per-example results come back to every process's host
(:func:`to_host`). Batches are padded to a multiple of the global device
count (:func:`padded_size`), so one program is compiled per batch size.

How a batch is split never changes a result. An evaluation hands each
example its *global* index; the example's randomness comes from
``fold_in(key, index)`` (:func:`example_keys`) and the attack runs on it alone
(:func:`per_example`, a ``vmap`` over batches of one), so 1 device, 4 devices
and 2 processes compute the same thing for example j.

:func:`initialize` starts ``jax.distributed`` from explicit settings (a launch
on one machine, or any launcher that passes them) or by JAX's cluster
auto-detection (TPU pods, SLURM, Open MPI, Kubernetes), with CPU collectives
over gloo when there is no accelerator.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS", "make_mesh", "data_sharding", "replicated", "padded_size", "shard_batch",
           "replicate", "to_host", "example_keys", "per_example", "sharded", "map_batch",
           "initialize", "is_primary", "any_process"]

log = logging.getLogger("robustjax")

AXIS = "data"
"""The name of the mesh axis that batches are split along."""


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D data-parallel mesh, axis ``"data"``, over ``devices`` (default: every device of
    every process, in ``jax.devices()`` order, which groups each process's devices)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def data_sharding(mesh: Optional[Mesh]):
    """The batch axis split over the mesh's ``"data"`` axis (None without a mesh)."""
    if mesh is None:
        return None
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def padded_size(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the mesh's device count."""
    return -(-int(n) // mesh.size) * mesh.size


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    """Pads axis 0 to ``size`` by repeating the last row (results of padding are dropped)."""
    if a.shape[0] == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)], axis=0)


def _local_rows(sharding: NamedSharding, shape) -> slice:
    """The rows of a batch of ``shape`` that this process's devices hold (one contiguous
    range: the mesh lists each process's devices together)."""
    idx = sharding.addressable_devices_indices_map(tuple(shape)).values()
    starts = [i[0].start or 0 for i in idx]
    stops = [shape[0] if i[0].stop is None else i[0].stop for i in idx]
    lo, hi = min(starts), max(stops)
    if sum(b - a for a, b in zip(starts, stops)) != hi - lo:
        raise ValueError("this process's devices do not hold one contiguous range of the batch; "
                         "build the mesh with make_mesh() (devices grouped by process)")
    return slice(lo, hi)


def shard_batch(mesh: Mesh, a, size: Optional[int] = None) -> jax.Array:
    """The global batch ``a`` (the same on every process) on the mesh, split along axis 0.

    Padded to ``size`` (default: the next multiple of the device count) by
    repeating the last row. Each process places only its own rows
    (``jax.make_array_from_process_local_data``).
    """
    a = np.asarray(a)
    size = padded_size(a.shape[0], mesh) if size is None else size
    if size % mesh.size:
        raise ValueError(f"size {size} must be a multiple of the device count {mesh.size}")
    shape = (size,) + a.shape[1:]
    sharding = data_sharding(mesh)
    rows = _local_rows(sharding, shape)
    # Only the local rows are padded and copied: a process never touches another's share.
    local = a[rows.start:min(rows.stop, a.shape[0])]
    if local.shape[0] < rows.stop - rows.start:
        fill = local[-1:] if local.shape[0] else a[-1:]
        local = np.concatenate([local, np.repeat(fill, rows.stop - rows.start - local.shape[0],
                                                 axis=0)], axis=0)
    return jax.make_array_from_process_local_data(sharding, local, shape)


def replicate(mesh: Mesh, tree):
    """``tree`` (host or device arrays, the same on every process) copied to every device
    of the mesh; leaves already replicated there are kept as they are."""
    rep = replicated(mesh)

    def one(a):
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(rep, a.ndim):
            return a
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(a)),
                                            impl=jax.random.key_impl(a))
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return jax.device_put(a, rep)
        return jax.device_put(np.asarray(a), rep)
    return jax.tree_util.tree_map(one, tree)


def to_host(tree, n: Optional[int] = None):
    """Device arrays -> NumPy on every process's host (gathered across processes), the
    first ``n`` rows of each (dropping the padding) when ``n`` is given."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = multihost_utils.process_allgather(a, tiled=True)
        a = np.asarray(a)
        return a if n is None else a[:n]
    return jax.tree_util.tree_map(one, tree)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """Keys ``fold_in(key, index[j])``: example j's randomness from its global index."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def per_example(fn: Callable) -> Callable:
    """``fn(x, y, key, *rest)`` on a batch of one, mapped over a batch with one key each.

    ``vmap`` turns the batch of one into the batch again (convolutions and
    matmuls see the whole batch), but every example's arithmetic and random
    draws are its own: the split of a batch cannot change a result.
    ``rest`` is shared by all examples.
    """
    def mapped(x, y, keys, *rest):
        return jax.vmap(lambda xi, yi, ki: jax.tree_util.tree_map(
            lambda a: a[0], fn(xi[None], yi[None], ki, *rest)))(x, y, keys)
    return mapped


def sharded(fn: Callable, mesh: Mesh, num_batched: int) -> Callable:
    """``jit(shard_map(fn))``: the first ``num_batched`` arguments split along the
    ``"data"`` axis, the others (scalars, keys, weights) replicated; every output
    is per example (split along ``"data"``). Each device runs ``fn`` on its rows,
    with no communication. On a one-device mesh this is ``jit(fn)`` (the same
    program; it compiles faster)."""
    if mesh.size == 1:
        return jax.jit(fn)

    def wrapped(*args):
        specs = tuple(PartitionSpec(AXIS) if i < num_batched else PartitionSpec()
                      for i in range(len(args)))
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(AXIS),
                             check_vma=False)(*args)
    return jax.jit(wrapped)


def map_batch(run: Callable, mesh: Mesh, batched: Sequence[Any], rest: Sequence[Any] = (),
              size: Optional[int] = None):
    """Calls a :func:`sharded` ``run`` on host arrays ``batched`` (the same on every
    process) padded to ``size``; returns its per-example outputs on the host, padding
    dropped."""
    n = np.shape(batched[0])[0]
    size = padded_size(n, mesh) if size is None else size
    args = [shard_batch(mesh, a, size) for a in batched]
    rest = [replicate(mesh, r) for r in rest]
    return to_host(run(*args, *rest), n)


# ----------------------------------------------------------------------------
# Several processes
# ----------------------------------------------------------------------------

def initialize(*, distributed: bool = False, coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               heartbeat_timeout_s: Optional[int] = None) -> bool:
    """Starts JAX's multi-controller runtime when asked; returns True if it did.

    With ``coordinator_address``, ``num_processes`` and ``process_id`` the
    launch is explicit (several processes on one machine, or any launcher that
    sets them); with ``distributed=True`` alone, JAX detects the cluster (TPU
    pod slice, SLURM, Open MPI, Kubernetes). Without an accelerator, CPU
    collectives go over gloo. ``heartbeat_timeout_s`` bounds how long the
    others wait for a process that died (JAX's default: 100 s).
    """
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ValueError("coordinator_address, num_processes and process_id go together: "
                         f"got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
    if not distributed and coordinator_address is None:
        return False
    if num_processes is not None and not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}")
    if process_id is not None and not (isinstance(process_id, int)
                                       and 0 <= process_id < (num_processes or 1)):
        raise ValueError(f"process_id must be in [0, num_processes), got {process_id!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if heartbeat_timeout_s is not None:
        kw["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kw)
    log.info("process %d of %d; %d local and %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """True in the process that writes files (index 0)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any of them (a collective: every
    process must call it at the same point). Free with one process."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
    return bool(np.any(flags))
