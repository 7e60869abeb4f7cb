"""Cohen et al.'s certification table (ICML 2019, their ``certify.py``): CERTIFY on a
dataset, one row per example, resumable.

Each row holds the example's index, label, prediction (-1: abstain), certified L2
radius, whether it is correct, n_A, the bound p_A and the seconds it took (its chunk's
time shared out). Examples are certified in chunks; with ``resume_dir`` each finished
chunk is stored (``chunkNNNNNNN.json``, with a fingerprint of the settings, the data and
the model) and a rerun loads it instead of sampling again. Every example's noise is keyed
by its index (:mod:`robustjax.smoothing.sampling`), so a resumed table equals an
uninterrupted one, and so does one computed on another number of devices.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import numpy as np

from robustjax.runtime import mesh as _mesh
from robustjax.runtime import rowstore
from robustjax.smoothing import smoothed, stats

__all__ = ["certify_table", "summary"]


def certify_table(logits_fn, x, y, key: jax.Array, *, sigma: float, n0: int = 100,
                  n: int = 100_000, alpha: float = 0.001, batch: int = 1000, indices=None,
                  chunk: int = 20, resume_dir: Optional[str] = None, progress=None,
                  mesh=None) -> list:
    """CERTIFY (:func:`robustjax.smoothing.certify`) of every example of ``x`` (labels ``y``),
    ``chunk`` examples at a time; returns the rows, in order.

    ``indices`` are the examples' indices in their dataset (default ``0..N-1``): they key
    the noise and appear in the rows. ``progress(done, total, rows so far)`` runs after
    each chunk.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    indices = np.arange(len(x)) if indices is None else np.asarray(indices)
    settings = dict(sigma=float(sigma), n0=n0, n=n, alpha=float(alpha), batch=batch)
    fp = None
    if resume_dir:
        fp = rowstore.fingerprint(settings, 0, key, data=rowstore.data_fingerprint(x, y),
                                  models=rowstore.model_fingerprint(logits_fn, x),
                                  indices=indices.tolist(), chunk=chunk)
    rows = []
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        part = _load(resume_dir, start, fp)
        if part is None:
            t0 = time.time()
            c = smoothed.certify(logits_fn, x[start:stop], key, indices=indices[start:stop],
                                 mesh=mesh, **settings)
            seconds = (time.time() - t0) / (stop - start)
            part = [dict(index=int(indices[i]), label=int(y[i]),
                         predict=int(c.prediction[j]), radius=float(c.radius[j]),
                         correct=bool(c.prediction[j] == y[i]), count=int(c.count[j]),
                         p_lower=float(c.p_lower[j]), time=seconds)
                    for j, i in enumerate(range(start, stop))]
            if resume_dir and _mesh.is_primary():
                _save(resume_dir, start, fp, part)
        rows += part
        if progress is not None:
            progress(stop, len(x), rows)
    return rows


def summary(rows: list, radii) -> dict:
    """Certified accuracy at each radius (abstentions count as wrong), the abstention rate
    and the mean seconds per example, of :func:`certify_table`'s rows."""
    pred = np.asarray([r["predict"] for r in rows])
    acc = stats.certified_accuracy(pred, [r["radius"] for r in rows],
                                   [r["label"] for r in rows], radii)
    return dict(examples=len(rows), radii=[float(r) for r in radii],
                certified_accuracy=[float(a) for a in acc],
                abstain=float(np.mean(pred < 0)) if rows else 0.0,
                seconds_per_example=float(np.mean([r["time"] for r in rows])) if rows else 0.0)


def _path(resume_dir: str, start: int) -> str:
    return os.path.join(resume_dir, f"chunk{start:07d}.json")


def _load(resume_dir, start: int, fp) -> Optional[list]:
    if not resume_dir:
        return None
    try:
        with open(_path(resume_dir, start)) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored["rows"] if stored.get("fingerprint") == fp else None


def _save(resume_dir: str, start: int, fp: str, rows: list) -> None:
    os.makedirs(resume_dir, exist_ok=True)
    path = _path(resume_dir, start)
    with open(path + ".tmp", "w") as f:
        json.dump(dict(fingerprint=fp, rows=rows), f)
    os.replace(path + ".tmp", path)
