"""Finished rows of an evaluation on disk, so an interrupted table resumes where it stopped.
:func:`robustjax.evaluation.suite.run_suite` with ``resume_dir`` writes each finished row
(its results-table row and the per-example correctness the worst case needs)
to ``resume_dir/row{i:02d}.json``, atomically. A rerun loads a stored row
instead of running it again only if the row's *fingerprint* matches: a hash of
everything the row's result depends on (the AttackSpec, its index and key, the
batch size, bounds and tolerance, the data, and the evaluated and source
models, identified by their logits on the first inputs). Any change reruns the
row, so a resumed table equals an uninterrupted one. The AutoAttack ensemble
stores its stages (one per attack) with the same fingerprints
(:func:`robustjax.evaluation.autoattack.autoattack`, ``resume_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fingerprint", "model_fingerprint", "load", "save"]


def _key_data(key) -> list:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tolist()


def model_fingerprint(logits_fn, x: np.ndarray, n: int = 16) -> str:
    """A hash of the model's logits on the first ``n`` inputs (rounded to 1e-4)."""
    logits = np.asarray(logits_fn(jnp.asarray(x[:n])), np.float64)
    return hashlib.sha256(np.round(logits, 4).tobytes()).hexdigest()


def fingerprint(spec, index: int, key, *, data: str, models, **settings) -> str:
    """The hash that identifies row ``index`` of a suite (see the module docstring).

    ``spec`` is an AttackSpec or a dict of settings (robustjax.evaluation.autoattack's stages).
    """
    spec = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else spec
    payload = dict(spec=spec, index=index, key=_key_data(key), data=data,
                   models=models, settings=settings)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _path(resume_dir: str, index: int) -> str:
    return os.path.join(resume_dir, f"row{index:02d}.json")


def load(resume_dir: str, index: int, fp: str) -> Optional[tuple[dict, np.ndarray]]:
    """``(row, correct)`` stored for row ``index`` with fingerprint ``fp``, else None."""
    try:
        with open(_path(resume_dir, index)) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != fp:
        return None
    return stored["row"], np.array([c == "1" for c in stored["correct"]], bool)


def save(resume_dir: str, index: int, fp: str, row: dict, correct: np.ndarray) -> None:
    """Stores a finished row and its per-example correctness (atomically)."""
    os.makedirs(resume_dir, exist_ok=True)
    path = _path(resume_dir, index)
    with open(path + ".tmp", "w") as f:
        json.dump(dict(fingerprint=fp, row=row,
                       correct="".join("1" if c else "0" for c in correct)), f)
    os.replace(path + ".tmp", path)
