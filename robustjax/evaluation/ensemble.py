"""The parts of the AutoAttack ensemble (Croce & Hein, ICML 2020, Section 5) that
:func:`robustjax.autoattack` composes: which attacks a version runs and with which
settings, equal padded batches of the still-robust examples, the stages stored for
resume, and the official code's checks of the model's outputs.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import apgd as _apgd
from robustjax.attacks import fab as _fab
from robustjax.attacks import square as _square
from robustjax.runtime import rowstore

__all__ = ["ATTACKS", "VERSIONS", "version_attacks", "stage_attack", "chunks", "SizePlanner",
           "load_stage", "save_stage", "output_checks", "rowstore_fingerprint"]

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
"""Attack names, as the official code spells them."""
VERSIONS = ("standard", "plus", "rand", "custom")

_ORDER = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
          "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
          "rand": ("apgd-ce", "apgd-dlr")}


def version_attacks(version: str, attacks: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """The attacks a version runs, in order (``custom``: ``attacks``, validated; ``rand``:
    ``attacks`` if given, each with EOT, else the official APGD-CE and APGD-DLR)."""
    _checks.check_choice("version", version, VERSIONS)
    if version == "rand" and attacks is None:
        return _ORDER[version]
    if version not in ("custom", "rand"):
        if attacks is not None:
            raise ValueError(f"attacks is only for version='custom' or 'rand'; "
                             f"version={version!r} runs {list(_ORDER[version])}")
        return _ORDER[version]
    if not attacks:
        raise ValueError(f"attacks must name at least one of {ATTACKS} for "
                         f"version={version!r}")
    for name in attacks:
        _checks.check_choice("attacks", name, ATTACKS)
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks must not repeat an attack, got {list(attacks)}")
    return tuple(attacks)


def chunks(n: int, batch_size: int, devices: int = 1) -> tuple[int, int]:
    """``(chunks, size)``: n examples in equal chunks of at most ``batch_size``, padded to ``size``.

    Sizes are rounded up to a multiple of ``batch_size / 8`` (below that, to a
    power of two), so an attack sees at most a dozen distinct shapes in a whole
    evaluation, each compiled once, while padding wastes little: 880 robust
    examples with batch 500 run as 2 x 441, not 500 + 380 padded to 500. The
    size is then rounded up to a multiple of ``devices`` (the mesh's device count).
    """
    chunks = -(-n // batch_size)
    size = -(-n // chunks)
    quantum = max(1, -(-batch_size // 8))
    if size > quantum:
        size = -(-size // quantum) * quantum
    else:
        size = 1 << (size - 1).bit_length()
    size = min(size, batch_size)
    return chunks, -(-size // devices) * devices


class SizePlanner:
    """Chooses the padded chunk size of each stage of one attack: a new size, or one
    already compiled.

    A new size costs a compilation (seconds to tens of seconds); a compiled larger
    size costs only its padding. The planner times the calls (the first call of a
    size includes its compilation) and picks the cheaper: late stages of an
    ensemble, on a few dozen examples still robust, then reuse a compiled size
    instead of compiling another. Results never depend on the choice (each
    example is attacked alone with its own key). With several processes every
    process must pick the same size, so the choice is the fixed one of
    :func:`chunks` there.
    """

    def __init__(self, batch_size: int, devices: int, adaptive: bool):
        self.batch_size, self.devices, self.adaptive = batch_size, devices, adaptive
        self.first = {}        # size -> seconds of its first call (compilation included)
        self.rate = None       # seconds per padded example, from calls without compilation
        self.compile_s = None  # estimated compilation time of a new size

    def plan(self, n: int) -> tuple[int, int]:
        count, size = chunks(n, self.batch_size, self.devices)
        if not self.adaptive or self.rate is None or self.compile_s is None or (
                size in self.first):
            return count, size
        best = (self.compile_s + count * size * self.rate, count, size)
        for s in self.first:
            c = -(-n // s)
            best = min(best, (c * s * self.rate, c, s))
        return best[1], best[2]

    def record(self, size: int, seconds: float) -> None:
        if size not in self.first:
            self.first[size] = seconds
        else:
            self.rate = seconds / size
        if self.rate is not None:
            est = [t - s * self.rate for s, t in self.first.items()]
            self.compile_s = max(0.0, float(np.median(est)))


def stage_attack(name: str, *, eps, norm, version, num_steps, num_queries, bounds,
                 eot_samples) -> tuple[Callable, list]:
    """``(attack(logits, x, y, key, arg), stage args)`` for one attack of the ensemble.

    APGD-T and FAB-T are run one target rank at a time (the traced ``arg``),
    and APGD-CE / APGD-DLR one restart at a time, so that each rank or restart
    only attacks the examples still robust, as in the official code.
    """
    plus = version == "plus"
    l1_standard = norm == "l1" and version in ("standard", "custom")
    restarts = 5 if plus else 1
    eot = eot_samples if version == "rand" else 1
    common = dict(eps=eps, norm=norm, bounds=bounds)
    if name in ("apgd-ce", "apgd-dlr"):
        # Restarts run as stages, each on the examples still robust (as the official
        # code does); stage s has its own key.
        loss = "ce" if name == "apgd-ce" else "dlr"
        apgd_restarts = 5 if l1_standard else restarts
        return (lambda f, x, y, k, _: _apgd.apgd(f, x, y, k, loss=loss, num_steps=num_steps,
                                                 eot_samples=eot, use_largereps=l1_standard,
                                                 **common),
                list(range(apgd_restarts)))
    if name == "apgd-t":
        return (lambda f, x, y, k, r: _apgd.apgd(f, x, y, k, loss="dlr", targeted=True,
                                                 target_rank=r, num_steps=num_steps,
                                                 use_largereps=l1_standard,
                                                 eot_samples=eot, **common),
                list(range(2, 7 if l1_standard else 11)))
    if name == "fab":
        return (lambda f, x, y, k, _: _fab.fab(f, x, y, k, targeted=False, restarts=restarts,
                                               num_steps=num_steps, eot_samples=eot,
                                               **common), [0])
    if name == "fab-t":
        return (lambda f, x, y, k, r: _fab.fab(f, x, y, k, targeted=True, target_rank=r,
                                               num_steps=num_steps, eot_samples=eot,
                                               **common),
                list(range(2, 11)))
    return (lambda f, x, y, k, _: _square.square(f, x, y, k, num_queries=num_queries,
                                                 eot_samples=eot, **common), [0])


def rowstore_fingerprint(logits_fn, x, y, key, *, randomized: bool, **settings) -> str:
    """The fingerprint of an evaluation (settings, key, data and, unless randomised, the
    model's outputs): a stored stage resumes only an evaluation with the same one."""
    return rowstore.fingerprint(settings, 0, key, data=rowstore.data_fingerprint(x, y),
                                models=None if randomized else rowstore.model_fingerprint(
                                    logits_fn, x))


def _stage_path(resume_dir: str, i: int) -> str:
    return os.path.join(resume_dir, f"stage{i:02d}.npz")


def load_stage(resume_dir: str, names, fp: str):
    """``(attacks done, stored arrays)`` of the last stage stored with fingerprint ``fp``."""
    for i in reversed(range(len(names))):
        try:
            with np.load(_stage_path(resume_dir, i), allow_pickle=False) as f:
                if str(f["fingerprint"]) == fp:
                    return i + 1, {k: f[k] for k in f.files}
        except (OSError, ValueError, KeyError):
            continue
    return 0, None


def save_stage(resume_dir: str, i: int, fp: str, **arrays) -> None:
    """Stores the state after attack ``i`` (atomically: a temporary file, then a rename)."""
    os.makedirs(resume_dir, exist_ok=True)
    path = _stage_path(resume_dir, i)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, fingerprint=fp, **arrays)
    os.replace(path + ".tmp", path)


def output_checks(logits: np.ndarray, logits_fn, x_probe, version) -> list:
    """The official code's checks on the model's outputs (probabilities, randomness)."""
    out = []
    if (logits.max() <= 1 + 1e-5 and logits.min() >= -1e-5
            and np.all(np.abs(logits.sum(-1) - 1) < 1e-5)):
        out.append("logits_fn seems to return probabilities; AutoAttack needs logits")
    if logits_fn is not None and version != "rand":
        a = np.asarray(logits_fn(jnp.asarray(x_probe)))
        b = np.asarray(logits_fn(jnp.asarray(x_probe)))
        if not np.allclose(a, b, rtol=1e-4, atol=1e-5):
            out.append("logits_fn gave different outputs for the same inputs: a randomised "
                       "defence needs version='rand'")
    return out
