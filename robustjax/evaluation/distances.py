"""The whole robustness curve from one run: per-example minimum adversarial distances.

A minimum-norm attack (FMN, Pintor et al. NeurIPS 2021; DDN, Rony et al. CVPR 2019;
Carlini & Wagner's L2 attack, IEEE S&P 2017; FAB, Croce & Hein ICML 2020) finds, per
example, the smallest perturbation it can that changes the prediction. The robust
accuracy at every radius follows from those distances at once: an example counts as
robust at ``eps`` if the model classifies it correctly and the smallest adversarial
perturbation found is larger than ``eps`` (:func:`curve_from_norms`). Like every curve
from attacks it is an upper bound on the true robust accuracy; it lies at or above the
points of a stronger fixed-budget attack such as AutoAttack.

:func:`minimum_norms` runs one attack over a dataset in batches split over the mesh,
each example alone with ``fold_in(key, index)``, validates every returned point (in the
box, finite, misclassified or classified as the target where a distance was reported,
the reported distance equal to the measured one) and, with ``resume_dir``, stores each
finished batch so that an interrupted run resumes with the same result.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import cw as _cw
from robustjax.attacks import ddn as _ddn
from robustjax.attacks import fab as _fab
from robustjax.attacks import fmn as _fmn
from robustjax.attacks import min_norm as _mn
from robustjax.evaluation import accuracy as evaluate
from robustjax.runtime import mesh as _mesh
from robustjax.runtime import rowstore

__all__ = ["MIN_NORM_ATTACKS", "min_norm_attack", "MinimumNorms", "minimum_norms",
           "curve_from_norms", "fixed_eps_accuracy"]

MIN_NORM_ATTACKS = {"fmn": _mn.NORMS, "ddn": ("l2",), "cw_l2": ("l2",),
                    "fab": ("l1", "l2", "linf")}
"""The attacks :func:`min_norm_attack` builds and the norms each takes."""

MinNormAttack = Callable[[jax.Array, jax.Array, jax.Array], _mn.MinNormResult]


def min_norm_attack(name: str, logits_fn, *, norm: str, steps: Optional[int] = None,
                    targeted: bool = False, bounds=(0.0, 1.0), **settings) -> MinNormAttack:
    """``attack(x, y, key) -> MinNormResult`` for ``name`` in :data:`MIN_NORM_ATTACKS`.

    ``steps`` defaults to 100 (CW-L2: 100 Adam steps per constant, 9 constants: the
    authors' 10,000 steps are rarely affordable); ``settings`` go to the attack.
    ``"fab"`` is untargeted FAB, or FAB-T over ``num_targets`` classes when
    ``targeted`` (its passes: one forward and, per step, K backward untargeted or one
    targeted, per target, plus the final search's forwards).
    """
    _checks.check_choice("attack", name, tuple(MIN_NORM_ATTACKS))
    _checks.check_choice("norm", norm, MIN_NORM_ATTACKS[name])
    steps = 100 if steps is None else steps
    _checks.check_int("steps", steps, 1)
    common = dict(steps=steps, targeted=targeted, bounds=bounds, **settings)
    if name == "fmn":
        return lambda x, y, key: _fmn.fmn(logits_fn, x, y, key, norm=norm, **common)
    if name == "ddn":
        return lambda x, y, key: _ddn.ddn(logits_fn, x, y, key, **common)
    if name == "cw_l2":
        return lambda x, y, key: _cw.cw_l2(logits_fn, x, y, key, **common)
    return _fab_attack(logits_fn, norm, steps, targeted, bounds, settings)


def _fab_attack(logits_fn, norm, steps, targeted, bounds, settings):
    targets = settings.get("num_targets", 9) if targeted else 1
    restarts = settings.get("restarts", 1)
    search = settings.get("final_search_steps", 3)

    def attack(x, y, key):
        adv, dist = _fab.fab_min_norm(logits_fn, x, y, key, norm=norm, num_steps=steps,
                                      targeted=targeted, bounds=bounds, **settings)
        k = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape[-1]
        runs = targets * restarts
        fwd = 1 + runs * (steps + search)
        bwd = runs * steps * (1 if targeted else k)
        size = (x.shape[0],)
        return _mn.MinNormResult(adv, dist, jnp.full(size, fwd, jnp.int32),
                                 jnp.full(size, bwd, jnp.int32))
    return attack


class MinimumNorms(NamedTuple):
    """Output of :func:`minimum_norms`, per example ``[N]`` and in total.

    norms: the smallest adversarial distance found; 0 for a clean misclassification,
      ``inf`` where nothing was found.
    clean_correct: the model's clean prediction equals the label.
    forward, backward: the passes the attack spent per example.
    x_adv: the adversarial points (``x`` where none), when requested.
    seconds: wall time of the call, compilation included (batches loaded on resume cost
      only their loading).
    """

    norms: np.ndarray
    clean_correct: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    x_adv: Optional[np.ndarray]
    seconds: float

    def median(self) -> float:
        """The median distance over every example (clean misclassifications count as 0)."""
        return float(np.median(self.norms))

    def curve(self, eps_grid) -> np.ndarray:
        return curve_from_norms(self.norms, eps_grid)


def curve_from_norms(norms, eps_grid) -> np.ndarray:
    """Robust accuracy at each radius of ``eps_grid`` from per-example distances (the
    security-evaluation curve of Carlini et al. 2019, "On Evaluating Adversarial
    Robustness", Section 5.3, from one minimum-norm run, as Pintor et al. 2021 draw it).

    ``norms [N]``: each example's smallest adversarial distance (0 for a clean
    misclassification, ``inf`` where none was found). An example is robust at ``eps``
    iff its distance exceeds ``eps``, so the accuracy at ``eps`` is
    ``mean(norms > eps)``: nonincreasing in ``eps``, the clean accuracy at 0.
    """
    norms = np.asarray(norms, np.float64)
    if norms.ndim != 1 or norms.size == 0:
        raise ValueError(f"norms must be a non-empty rank-1 array of distances, "
                         f"got shape {norms.shape}")
    if np.any(np.isnan(norms)) or np.any(norms < 0):
        raise ValueError("norms must hold distances >= 0 (inf where no adversarial example "
                         "was found), got NaN or negative values")
    eps = np.asarray(eps_grid, np.float64)
    if eps.ndim != 1 or eps.size == 0 or not np.all(np.isfinite(eps)) or np.any(eps < 0):
        raise ValueError(f"eps_grid must be a non-empty list of finite radii >= 0, "
                         f"got {eps_grid!r}")
    return np.mean(norms[None, :] > eps[:, None], axis=1)


def _validate(out: dict, y_attack: np.ndarray, *, norm: str, targeted: bool, bounds, atol,
              offset: int) -> None:
    """Raises InvalidAdversarialError at the first point that is not what was reported."""
    lo, hi = bounds
    found = np.isfinite(out["norms"])
    checks = [
        (~out["finite"], "contain NaN or infinite values"),
        ((out["low"] < lo) | (out["high"] > hi), f"leave bounds [{lo}, {hi}]"),
        (found & ((out["pred"] != y_attack) if targeted else (out["pred"] == y_attack)),
         "were reported adversarial but are not" + (" classified as the target" if targeted
                                                    else " misclassified")),
        (found & (np.abs(out["dist"] - out["norms"]) > atol * np.maximum(1.0, out["norms"])),
         f"have a measured {norm} distance other than the one reported"),
        (~found & (out["dist"] > 0), "were reported as not found but differ from x"),
    ]
    for bad, what in checks:
        if np.any(bad):
            first = offset + int(np.flatnonzero(bad)[0])
            raise evaluate.InvalidAdversarialError(
                f"{int(bad.sum())} point(s) of the minimum-norm attack {what}; first at "
                f"example {first}")


def minimum_norms(logits_fn, x, y, key: Optional[jax.Array], attack: MinNormAttack, *,
                  norm: str, targets=None, batch_size: int = 500, bounds=(0.0, 1.0),
                  atol: float = 1e-4, keep_adversarial: bool = False,
                  resume_dir: Optional[str] = None, settings: Optional[dict] = None,
                  progress=None, mesh=None) -> MinimumNorms:
    """Per-example minimum adversarial distances over a dataset, validated (FMN, Pintor et
    al. 2021; DDN, Rony et al. 2019; CW-L2, Carlini & Wagner 2017; FAB, Croce & Hein 2020).

    Args:
      logits_fn: the evaluated model.
      x, y: the dataset (inputs in ``bounds``, int labels).
      key: example ``j`` is attacked alone with ``fold_in(key, j)`` (default PRNGKey(0)).
      attack: ``attack(x, y, key) -> MinNormResult``, e.g. :func:`min_norm_attack`.
      norm: the attack's norm (``"l0"``, ``"l1"``, ``"l2"``, ``"linf"``).
      targets: optional int ``[N]`` target classes; the attack must then be targeted.
      batch_size: examples per call (rounded up to a multiple of the device count).
      bounds: the box; atol: relative slack between reported and measured distances.
      keep_adversarial: return the points too.
      resume_dir: store each finished batch there; a rerun with the same settings, data
        and model loads it (``settings``: what identifies the attack, e.g. its name and
        steps, part of the fingerprint).
      progress: ``callback(done, total, median so far)`` after each batch.
      mesh: the devices (default: every device of every process).
    """
    _checks.check_choice("norm", norm, _mn.NORMS)
    _checks.check_int("batch_size", batch_size, 1)
    lo, hi = _checks.check_bounds(bounds)
    x, y = evaluate.check_dataset(x, y, num_classes=evaluate.num_classes(
        logits_fn, np.shape(x)[1:]), bounds=bounds)
    targeted = targets is not None
    y_attack = y if not targeted else evaluate.check_dataset(
        x, targets, num_classes=evaluate.num_classes(logits_fn, x.shape[1:]), bounds=bounds)[1]
    key = jax.random.PRNGKey(0) if key is None else key
    mesh = _mesh.make_mesh() if mesh is None else mesh

    def run_local(xb, yb, tb, ib, key):
        res = _mesh.per_example(attack)(xb, tb, _mesh.example_keys(key, ib))
        flat = res.x_adv.reshape(xb.shape[0], -1)
        return dict(x_adv=res.x_adv, norms=res.norms, forward=res.forward,
                    backward=res.backward, dist=_mn.distance(res.x_adv - xb, norm),
                    finite=jnp.all(jnp.isfinite(flat), axis=1), low=jnp.min(flat, axis=1),
                    high=jnp.max(flat, axis=1),
                    pred=jnp.argmax(logits_fn(res.x_adv), axis=-1),
                    clean=jnp.argmax(logits_fn(xb), axis=-1) == yb)

    run = _mesh.sharded(run_local, mesh, num_batched=4)
    fp = None
    if resume_dir:
        fp = rowstore.fingerprint(dict(settings or {}, norm=norm, targeted=targeted), 0, key,
                                  data=rowstore.data_fingerprint(x, y_attack),
                                  models=rowstore.model_fingerprint(logits_fn, x),
                                  batch_size=batch_size, bounds=[lo, hi])
    n, t0 = x.shape[0], time.time()
    bs = _mesh.padded_size(min(batch_size, n), mesh)
    parts = []
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        out = _load(resume_dir, start, fp)
        if out is None:
            out = _mesh.map_batch(run, mesh, [x[start:stop], y[start:stop], y_attack[start:stop],
                                              np.arange(start, stop, dtype=np.int32)],
                                  [key], size=bs)
            out = {k: np.asarray(v) for k, v in out.items()}
            _validate(out, y_attack[start:stop], norm=norm, targeted=targeted,
                      bounds=(lo, hi), atol=atol, offset=start)
            if resume_dir and _mesh.is_primary():
                _save(resume_dir, start, fp, out)
        parts.append(out)
        if progress is not None:
            done = np.concatenate([_robust_norms(p, targeted) for p in parts])
            progress(stop, n, float(np.median(done)))

    def cat(k):
        return np.concatenate([p[k] for p in parts])
    norms = np.concatenate([_robust_norms(p, targeted) for p in parts])
    x_adv = cat("x_adv") if keep_adversarial else None
    if x_adv is not None and not targeted:  # a clean misclassification is its own adversarial point
        x_adv = np.where((~cat("clean")).reshape((-1,) + (1,) * (x.ndim - 1)), x, x_adv)
    return MinimumNorms(norms=norms, clean_correct=cat("clean"), forward=cat("forward"),
                        backward=cat("backward"), x_adv=x_adv, seconds=time.time() - t0)


def _robust_norms(out: dict, targeted: bool = False) -> np.ndarray:
    """Untargeted: a clean misclassification is at distance 0 (its own adversarial point)."""
    return out["norms"] if targeted else np.where(out["clean"], out["norms"], 0.0)


def _path(resume_dir: str, start: int) -> str:
    return os.path.join(resume_dir, f"norms{start:07d}.npz")


def _load(resume_dir, start: int, fp) -> Optional[dict]:
    if not resume_dir:
        return None
    try:
        with np.load(_path(resume_dir, start), allow_pickle=False) as f:
            if str(f["fingerprint"]) != fp:
                return None
            return {k: f[k] for k in f.files if k != "fingerprint"}
    except (OSError, ValueError, KeyError):
        return None


def _save(resume_dir: str, start: int, fp: str, out: dict) -> None:
    os.makedirs(resume_dir, exist_ok=True)
    path = _path(resume_dir, start)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, fingerprint=fp, **out)
    os.replace(path + ".tmp", path)


def fixed_eps_accuracy(logits_fn, x, y, x_adv, norms, eps_grid: Sequence[float]) -> np.ndarray:
    """The accuracy at each radius when the attack may use its point only if ``norm <= eps``
    (the fixed-budget evaluation of the same examples; equals :func:`curve_from_norms`)."""
    x, y = np.asarray(x), np.asarray(y)
    out = []
    for e in eps_grid:
        use = (np.asarray(norms) <= e).reshape((-1,) + (1,) * (x.ndim - 1))
        pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(np.where(use, x_adv, x))), -1))
        out.append(float(np.mean(pred == y)))
    return np.asarray(out)
