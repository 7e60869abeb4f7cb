"""Flags and small helpers every peer benchmark shares, defined once.

Each benchmark runs robustjax and its peer (PyTorch written the usual way, or the
official code) side by side in one process, with interleaved repeats and the median
time; these are the flags that say how (threads, XLA preset, repeats, whether to run
the peer) and where the JSON goes.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import flags


def repeats(default: int = 3):
    return flags.DEFINE_integer("repeats", default, "Interleaved timing repeats (median).")


def threads():
    return flags.DEFINE_integer("threads", 0, "CPU threads for both (0: all cores).")


def xla_preset():
    return flags.DEFINE_enum("xla_preset", "tuned", ["tuned", "default"],
                             "tuned: robustjax's XLA defaults; default: JAX's (docstring).")


def json_out():
    return flags.DEFINE_string("json_out", None, "Optional path for the results as JSON.")


def peer():
    return flags.DEFINE_bool("peer", True, "Time PyTorch too (--nopeer, or torch missing: "
                             "robustjax alone).")


def torch_compile(what: str = "torch.compile the PyTorch module."):
    return flags.DEFINE_bool("torch_compile", False, what)


def write_json(path, data: dict) -> None:
    """``data`` as JSON at ``path`` (nothing when ``path`` is empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


def interleaved_times(runs: dict, repeats: int, per_call: int = 1) -> dict:
    """``{name: [seconds per call, one per repeat]}``: each repeat times every run once, in
    turn, so that both sides see the same machine state; ``per_call`` divides each time.
    A run must block until its work is done (``jax.block_until_ready``, a CUDA sync)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) / per_call)
    return times


def medians(times: dict) -> dict:
    """``{name: median}`` of :func:`interleaved_times`' lists."""
    return {name: statistics.median(ts) for name, ts in times.items()}
