"""Memory for linear bounds: an estimate per example, and chunks of examples that fit a budget.

CROWN (Zhang et al. 2018) bounds each relaxed layer of n neurons by a backward
pass of n specification rows over every earlier layer: per example, memory
grows with n times the largest earlier layer. :func:`memory_per_example` reads
that from the model's graph; :class:`Chunked` compiles the bound function for
a chunk of examples and shrinks the chunk until XLA's memory analysis of the
compiled program fits the budget.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp

from robustjax.certify.graph import trace
from robustjax.certify.crown import relu_like

__all__ = ["available_memory", "memory_per_example", "too_big", "Chunked"]

log = logging.getLogger("robustjax.certify.verifier")

_TEMPS = 6     # live coefficient arrays per backward pass (lower, upper, their +/- parts, vjp)


def available_memory(device=None) -> int:
    """Free bytes of ``device`` (default: the first): its allocator's, or MemAvailable."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def memory_per_example(logits_fn: Callable, input_shape, *, method: str = "crown",
                       crown_max_neurons: int = 4096, upcast: bool = False) -> tuple:
    """``(bytes, where)``: an estimate of one example's peak memory, and its largest pass.

    The largest pass is a CROWN pass from a relaxed layer of n neurons (n rows
    of coefficients over every earlier layer) or the pass from the specification.
    """
    method = method.replace("-", "_")
    g = trace(logits_fn, jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
              upcast=upcast)
    size = {i: math.prod(s.shape) for i, s in g.shapes.items()}
    bounded, producer = set(g.inputs), g.producer()
    largest = size[g.inputs[0]]     # the largest bounded value so far, per row
    scratch = 0                     # the largest transposed convolution's im2col, per row
    k = size[g.outputs[0]]
    worst = (k * (_TEMPS * largest + scratch), "the pass from the specification")
    for node in g.nodes:
        ins = [i for i in node.inputs if i in bounded]
        if not ins:
            continue
        if (method in ("crown", "alpha_crown") and relu_like(node) is not None and
                producer.get(ins[0]) is not None and size[ins[0]] <= crown_max_neurons):
            n = size[ins[0]]
            need = n * (_TEMPS * largest + scratch)
            if need > worst[0]:
                worst = (need, f"the CROWN pass of the {node.name} on a value of shape "
                               f"{tuple(g.shapes[ins[0]].shape[1:])} ({n} neurons, over "
                               f"earlier layers of up to {largest} values)")
        if node.name == "conv_general_dilated":
            # The backward pass transposes it: a convolution over its input's pixels whose
            # library kernels may unfold (im2col) its kernel window for each of them.
            dn = node.params["dimension_numbers"]
            lhs, rhs = g.shapes[node.inputs[0]].shape, g.shapes[node.inputs[1]].shape
            pixels = math.prod(lhs[d] for d in dn.lhs_spec[2:])
            window = math.prod(rhs[d] for d in dn.rhs_spec[2:]) * rhs[dn.rhs_spec[0]]
            scratch = max(scratch, pixels * window)
        bounded.update(node.outputs)
        largest = max([largest] + [size[o] for o in node.outputs])
    values = sum(size[i] for i in bounded)
    forward = 2 * 4 * values
    # alpha-CROWN differentiates the pass from the specification: its tape holds k rows of
    # coefficients over every layer (lower and upper chains, and their +/- parts).
    tape = 4 * _TEMPS * k * values if method == "alpha_crown" else 0
    return forward + 4 * worst[0] + tape + k * k * 8 * 4, worst[1]


def too_big(where, need, budget):
    """The ``MemoryError`` for one example that needs more than the budget for ``where``."""
    return MemoryError(
        f"certify: one example needs about {need / 2**30:.2f} GiB for {where}, over the "
        f"memory budget of {budget / 2**30:.2f} GiB; lower crown_max_neurons (relaxed layers "
        f"with more neurons get IBP bounds), use method='crown_ibp', or raise memory_budget")


class Chunked:
    """A compiled bound function for chunks of ``size`` examples within a memory budget."""

    def __init__(self, fn, x, spec, size, budget, where):
        while True:
            args = (jax.ShapeDtypeStruct((size,) + x.shape[1:], jnp.float32),
                    jax.ShapeDtypeStruct((size,), jnp.float32),
                    jax.ShapeDtypeStruct((size,) + spec.shape[1:], jnp.float32))
            self.compiled = fn.lower(*args).compile()
            mem = self.compiled.memory_analysis()
            need = 0 if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                                          mem.output_size_in_bytes)
            if need <= budget:
                break
            if size == 1:
                raise too_big(where, need, budget)
            size = max(1, min(size // 2, int(size * budget / need)))
            log.info("certify: compiled chunk needs %.2f GiB; retrying with %d examples",
                     need / 2**30, size)
        self.size = size
