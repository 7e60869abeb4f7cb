"""AutoAttack, the ensemble: Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks" (ICML 2020,
Section 5), as the official code (fra31/auto-attack) runs it.

The attacks run in a fixed order, each only on the examples that every
earlier attack left correctly classified; an example is robust if the model
classifies it correctly, clean and after every attack. Versions:

=========  =================================================================
standard   APGD-CE (1 restart), APGD-T (9 targets), FAB-T (9 targets),
           Square (5000 queries); 100 steps each (RobustBench's evaluation).
           For L1, as the official code: APGD-CE with 5 restarts and APGD-T
           with 5 targets, both with the large-eps schedule (l1-APGD's
           ``use_largereps``: 3 eps, 2 eps, then eps).
plus       APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts),
           Square, APGD-T, FAB-T.
rand       APGD-CE and APGD-DLR with Expectation over Transformation (20
           samples per gradient), for randomised defences: ``logits_fn`` is
           then called as ``logits_fn(x, key)``.
custom     the ``attacks`` given, with the standard settings.
=========  =================================================================

Between attacks (and between the target classes of APGD-T and FAB-T, as the
official code does) the still-robust examples are gathered on the host and
attacked in equal batches padded to a multiple of ``batch_size / 8`` (and of
the device count), so an attack compiles once per padded size (a handful in a
whole evaluation) and never per batch. Batches are split over every device of
every process (:mod:`robustjax.runtime.mesh`), and each example is attacked alone
with a key folded from its index in ``x``, so the compaction and the devices
never change an example's result. Each attack itself is one jitted call per batch, with no
host round trip inside it. Every adversarial example is validated with the
checks of :func:`robustjax.evaluation.accuracy.robust_accuracy` (shape, dtype, finite,
bounds, eps-ball within ``atol``) before it counts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import apgd as _apgd
from robustjax.attacks import apgd_l1 as _apgd_l1
from robustjax.attacks import first_order as _a
from robustjax.evaluation import accuracy as evaluate
from robustjax.attacks import fab as _fab
from robustjax.runtime import mesh as _mesh
from robustjax.runtime import rowstore
from robustjax.attacks import square as _square

__all__ = ["ATTACKS", "VERSIONS", "version_attacks", "AutoAttackResult", "autoattack"]

log = logging.getLogger("robustjax.evaluation.autoattack")

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
"""Attack names, as the official code spells them."""
VERSIONS = ("standard", "plus", "rand", "custom")

_ORDER = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
          "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
          "rand": ("apgd-ce", "apgd-dlr")}


def version_attacks(version: str, attacks: Optional[Sequence[str]] = None) -> tuple[str, ...]:
    """The attacks a version runs, in order (``custom``: ``attacks``, validated)."""
    _checks.check_choice("version", version, VERSIONS)
    if version != "custom":
        if attacks is not None:
            raise ValueError(f"attacks is only for version='custom'; version={version!r} "
                             f"runs {list(_ORDER[version])}")
        return _ORDER[version]
    if not attacks:
        raise ValueError(f"attacks must name at least one of {ATTACKS} for version='custom'")
    for name in attacks:
        _checks.check_choice("attacks", name, ATTACKS)
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks must not repeat an attack, got {list(attacks)}")
    return tuple(attacks)


class AutoAttackResult(NamedTuple):
    """Output of :func:`autoattack`.

    clean_accuracy, robust_accuracy: fractions of the N examples.
    accuracy_after: ``{attack: robust accuracy after it}``, in the order run.
    seconds: ``{attack: wall time}``, compilation included.
    clean_correct, correct: bool ``[N]``, clean and robust correctness.
    broken_by: ``[N]`` the attack that broke each example, ``"clean"`` for
      clean misclassifications, ``""`` for robust ones.
    x_adv: ``[N, ...]``: the validated adversarial example where one was
      found, the clean input elsewhere.
    warnings: what the official code's sanity checks would flag (probability
      outputs, a randomised model, Square beating the gradient attacks).
    """

    clean_accuracy: float
    robust_accuracy: float
    accuracy_after: dict
    seconds: dict
    clean_correct: np.ndarray
    correct: np.ndarray
    broken_by: np.ndarray
    x_adv: np.ndarray
    warnings: list


def _chunks(n: int, batch_size: int, devices: int = 1) -> tuple[int, int]:
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


class _SizePlanner:
    """Chooses the padded chunk size of each stage of one attack: a new size, or one
    already compiled.

    A new size costs a compilation (seconds to tens of seconds); a compiled larger
    size costs only its padding. The planner times the calls (the first call of a
    size includes its compilation) and picks the cheaper: late stages of an
    ensemble, on a few dozen examples still robust, then reuse a compiled size
    instead of compiling another. Results never depend on the choice (each
    example is attacked alone with its own key). With several processes every
    process must pick the same size, so the choice is the fixed one of
    :func:`_chunks` there.
    """

    def __init__(self, batch_size: int, devices: int, adaptive: bool):
        self.batch_size, self.devices, self.adaptive = batch_size, devices, adaptive
        self.first = {}        # size -> seconds of its first call (compilation included)
        self.rate = None       # seconds per padded example, from calls without compilation
        self.compile_s = None  # estimated compilation time of a new size

    def plan(self, n: int) -> tuple[int, int]:
        chunks, size = _chunks(n, self.batch_size, self.devices)
        if not self.adaptive or self.rate is None or self.compile_s is None or (
                size in self.first):
            return chunks, size
        best = (self.compile_s + chunks * size * self.rate, chunks, size)
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


def _stage_attack(name: str, *, eps, norm, version, num_steps, num_queries, bounds,
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
                                                 use_largereps=l1_standard, **common),
                list(range(2, 7 if l1_standard else 11)))
    if name == "fab":
        return (lambda f, x, y, k, _: _fab.fab(f, x, y, k, targeted=False, restarts=restarts,
                                               num_steps=num_steps, **common), [0])
    if name == "fab-t":
        return (lambda f, x, y, k, r: _fab.fab(f, x, y, k, targeted=True, target_rank=r,
                                               num_steps=num_steps, **common),
                list(range(2, 11)))
    return (lambda f, x, y, k, _: _square.square(f, x, y, k, num_queries=num_queries,
                                                 **common), [0])


def autoattack(logits_fn: Callable, x, y, key: Optional[jax.Array] = None, *, eps: float,
               norm: str = "linf", version: str = "standard",
               attacks: Optional[Sequence[str]] = None, num_steps: int = 100,
               num_queries: int = 5000, eot_samples: int = 20, batch_size: int = 500,
               bounds=(0.0, 1.0), atol: float = 1e-5,
               resume_dir: Optional[str] = None, mesh=None) -> AutoAttackResult:
    """Robust accuracy under AutoAttack (Croce & Hein 2020, Section 5).

    Args:
      logits_fn: ``x -> logits [B, K]`` of the evaluated model; for
        ``version="rand"`` a randomised model ``(x, key) -> logits``.
      x, y: the dataset (inputs in ``bounds``, NHWC for Square; int labels).
      key: PRNG key (default ``PRNGKey(0)``); example j in attack i (target
        rank s for APGD-T and FAB-T, else s = 0) is attacked alone with
        ``fold_in(fold_in(fold_in(key, i), s), j)``, so neither the batches,
        the compaction nor the devices change its result.
      eps, norm: the threat model (``"linf"``, ``"l2"`` or ``"l1"``).
      version: ``"standard"``, ``"plus"``, ``"rand"`` or ``"custom"`` (see the module).
      attacks: for ``"custom"``: names from :data:`ATTACKS`, run in that order.
      num_steps: APGD and FAB iterations (AutoAttack: 100; the L1 standard
        version needs 3 or >= 5 for its three radii).
      num_queries: Square's queries (AutoAttack: 5000).
      eot_samples: EOT samples of the "rand" version (AutoAttack: 20).
      batch_size: the largest attack batch. The examples an attack runs on
        are split into equal chunks, padded to a multiple of batch_size / 8.
      bounds, atol: valid input range; slack of the eps-ball check.
      resume_dir: if given, the state after each attack (robust examples,
        adversarial examples, timings) is stored there as ``stageNN.npz``, and
        a rerun with the same settings, data and model starts after the last
        stored attack: an interrupted evaluation resumes, with the result of
        an uninterrupted one (each attack has its own key).
      mesh: the devices (:func:`robustjax.runtime.mesh.make_mesh`); every batch is split
        along its ``"data"`` axis. Default: every device of every process.

    Raises:
      ValueError: bad settings or data, naming the argument.
      InvalidAdversarialError: an attack returned a point outside the threat model.
    """
    names = version_attacks(version, attacks)
    _checks.check_scalar("eps", eps)
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    _checks.check_int("num_steps", num_steps, 1)
    if norm == "l1" and version in ("standard", "custom") and any(
            n.startswith("apgd") for n in names):
        _apgd_l1.largereps_schedule(num_steps)
    _checks.check_int("num_queries", num_queries, 1)
    _checks.check_int("eot_samples", eot_samples, 1)
    _checks.check_int("batch_size", batch_size, 1)
    _checks.check_scalar("atol", atol)
    lo, hi = _checks.check_bounds(bounds)
    randomized = version == "rand"
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of inputs, got shape {x.shape}")
    probe = (lambda z: logits_fn(z, jax.random.PRNGKey(0))) if randomized else logits_fn
    num_classes = evaluate.num_classes(probe, x.shape[1:])
    x, y = evaluate.check_dataset(x, y, num_classes=num_classes, bounds=(lo, hi))
    if "square" in names and x.ndim != 4:
        raise ValueError(f"x must be images [N, H, W, C] for the Square attack, got {x.shape}")
    if num_classes < 3 and "apgd-dlr" in names:
        raise ValueError(f"the DLR loss needs >= 3 classes, the model has {num_classes}")
    for name in ("apgd-t", "fab-t"):
        if name in names and num_classes < 10:
            raise ValueError(f"{name} attacks 9 target classes and needs >= 10 classes, the "
                             f"model has {num_classes}; use version='custom' without it")
    key = jax.random.PRNGKey(0) if key is None else key
    n = x.shape[0]
    warnings = []

    def evaluated(ke):
        return (lambda z: logits_fn(z, ke)) if randomized else logits_fn

    mesh = _mesh.make_mesh() if mesh is None else mesh

    def clean_local(xb, yb, ib, key):
        if not randomized:
            return jnp.argmax(logits_fn(xb), -1) == yb, logits_fn(xb)

        def one(xe, ye, ke):
            lg = logits_fn(xe, ke)
            return jnp.argmax(lg, -1) == ye, lg
        return _mesh.per_example(one)(xb, yb, _mesh.example_keys(key, ib))

    clean_run = _mesh.sharded(clean_local, mesh, num_batched=3)
    clean_correct = np.zeros(n, bool)
    outputs = []
    chunks, size = _chunks(n, batch_size, mesh.size)
    for sel in np.array_split(np.arange(n), chunks):
        ok, lg = _mesh.map_batch(clean_run, mesh, [x[sel], y[sel], sel.astype(np.int32)],
                                 [jax.random.fold_in(key, 10_000)], size=size)
        clean_correct[sel] = ok
        outputs.append(lg)
    warnings += _output_checks(np.concatenate(outputs), logits_fn if not randomized else None,
                               x[:min(n, batch_size)], version)
    robust = clean_correct.copy()
    broken_by = np.where(clean_correct, "", "clean").astype(object)
    x_adv = x.copy()
    accuracy_after, seconds = {}, {}
    log.info("AutoAttack %s (%s, eps %g) on %d examples: clean accuracy %.2f%%", version, norm,
             eps, n, 100 * clean_correct.mean())
    t_all = time.time()
    first = 0
    if resume_dir:
        fp = rowstore.fingerprint(
            dict(names=names, eps=float(eps), norm=norm, version=version, num_steps=num_steps,
                 num_queries=num_queries, eot_samples=eot_samples, batch_size=batch_size,
                 bounds=[lo, hi], atol=atol), 0, key, data=rowstore.data_fingerprint(x, y),
            models=None if randomized else rowstore.model_fingerprint(logits_fn, x))
        first, stored = _load_stage(resume_dir, names, fp)
        if stored is not None:
            robust, x_adv = stored["robust"], stored["x_adv"]
            broken_by = stored["broken_by"].astype(object)
            accuracy_after = json.loads(str(stored["accuracy_after"]))
            seconds = json.loads(str(stored["seconds"]))
            log.info("resumed after %s (stored in %s)", names[first - 1], resume_dir)
    for i, name in enumerate(names):
        if i < first:
            continue
        attack, stage_args = _stage_attack(name, eps=eps, norm=norm, version=version,
                                           num_steps=num_steps, num_queries=num_queries,
                                           bounds=(lo, hi), eot_samples=eot_samples)

        def run_local(xb, yb, ib, key, arg, attack=attack):
            def one(xe, ye, ke, arg):
                kattack, keval = jax.random.split(ke)
                adv = attack(logits_fn, xe, ye, kattack, arg)
                return adv, evaluate.adversarial_checks(evaluated(keval), xe, ye, adv,
                                                        norm=norm)
            return _mesh.per_example(one)(xb, yb, _mesh.example_keys(key, ib), arg)

        run = _mesh.sharded(run_local, mesh, num_batched=3)
        sizes = _SizePlanner(batch_size, mesh.size, adaptive=jax.process_count() == 1)
        t0 = time.time()
        todo = int(robust.sum()) * len(stage_args)
        done = 0
        for s, arg in enumerate(stage_args):
            idx = np.flatnonzero(robust)
            if not len(idx):
                break
            chunks, size = sizes.plan(len(idx))
            stage_key = jax.random.fold_in(jax.random.fold_in(key, i), s)
            for sel in np.array_split(idx, chunks):
                t_call = time.time()
                adv, checks = _mesh.map_batch(
                    run, mesh, [x[sel], y[sel], sel.astype(np.int32)],
                    [stage_key, np.int32(arg)], size=size)
                sizes.record(size, time.time() - t_call)
                evaluate.validate_checks(checks, eps=float(eps), atol=float(atol), norm=norm,
                                         bounds=(lo, hi), index=sel)
                hit = ~checks["adv_ok"]
                robust[sel[hit]] = False
                broken_by[sel[hit]] = name
                x_adv[sel[hit]] = adv[hit]
                done += len(sel)
                elapsed = time.time() - t0
                left_here = max(todo - done, 0)
                log.info("%s%s: %d/%d examples, %d robust left (%.2f%%), %.0fs, ETA %.0fs",
                         name, (f" {'target' if name in ('apgd-t', 'fab-t') else 'restart'} {arg}"
                                if len(stage_args) > 1 else ""), done,
                         todo, int(robust.sum()), 100 * robust.mean(), elapsed,
                         elapsed / max(done, 1) * left_here)
            todo = done + int(robust.sum()) * (len(stage_args) - s - 1)
        accuracy_after[name] = float(robust.mean())
        seconds[name] = time.time() - t0
        log.info("after %s: robust accuracy %.2f%% (%.1fs)", name, 100 * robust.mean(),
                 seconds[name])
        if resume_dir and _mesh.is_primary():
            _save_stage(resume_dir, i, fp, robust=robust, x_adv=x_adv,
                        broken_by=broken_by.astype(str),
                        accuracy_after=json.dumps(accuracy_after), seconds=json.dumps(seconds))
    if "square" in accuracy_after:
        before = [v for k, v in accuracy_after.items() if k != "square"]
        sq_gain = (min(before) if before else clean_correct.mean()) - accuracy_after["square"]
        if before and sq_gain > 0.002:
            warnings.append(f"Square, which uses no gradients, lowered the robust accuracy by "
                            f"{100 * sq_gain:.2f} points after the gradient attacks: a sign "
                            "of gradient masking; the evaluation may be unreliable")
    for w in warnings:
        log.warning(w)
    log.info("AutoAttack robust accuracy %.2f%% (%.1fs)", 100 * robust.mean(),
             time.time() - t_all)
    return AutoAttackResult(clean_accuracy=float(clean_correct.mean()),
                            robust_accuracy=float(robust.mean()),
                            accuracy_after=accuracy_after, seconds=seconds,
                            clean_correct=clean_correct, correct=robust,
                            broken_by=broken_by.astype(str), x_adv=x_adv, warnings=warnings)


def _stage_path(resume_dir: str, i: int) -> str:
    return os.path.join(resume_dir, f"stage{i:02d}.npz")


def _load_stage(resume_dir: str, names, fp: str):
    """``(attacks done, stored arrays)`` of the last stage stored with fingerprint ``fp``."""
    for i in reversed(range(len(names))):
        try:
            with np.load(_stage_path(resume_dir, i), allow_pickle=False) as f:
                if str(f["fingerprint"]) == fp:
                    return i + 1, {k: f[k] for k in f.files}
        except (OSError, ValueError, KeyError):
            continue
    return 0, None


def _save_stage(resume_dir: str, i: int, fp: str, **arrays) -> None:
    os.makedirs(resume_dir, exist_ok=True)
    path = _stage_path(resume_dir, i)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, fingerprint=fp, **arrays)
    os.replace(path + ".tmp", path)


def _output_checks(logits: np.ndarray, logits_fn, x_probe, version) -> list:
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
