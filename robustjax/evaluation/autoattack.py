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

import dataclasses
import json
import logging
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import apgd_l1 as _apgd_l1
from robustjax.attacks import first_order as _a
from robustjax.evaluation import accuracy as evaluate
from robustjax.evaluation import ensemble
from robustjax.evaluation import inspection as _inspection
from robustjax.evaluation.ensemble import ATTACKS, VERSIONS, version_attacks  # noqa: F401
from robustjax.runtime import mesh as _mesh
from robustjax.runtime import rowstore

__all__ = ["ATTACKS", "VERSIONS", "version_attacks", "AutoAttackResult", "autoattack"]

log = logging.getLogger("robustjax.evaluation.autoattack")


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
      outputs, a randomised model, zero gradients, a dynamic defence, Square beating
      the gradient attacks) and what :func:`robustjax.inspect` found.
    inspection: :meth:`robustjax.evaluation.inspection.Inspection.to_json` of the
      evaluated model (None with ``inspect=False``, or when the model could not be read).
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
    inspection: Optional[dict] = None


def autoattack(logits_fn: Callable, x, y, key: Optional[jax.Array] = None, *, eps: float,
               norm: str = "linf", version: str = "standard",
               attacks: Optional[Sequence[str]] = None, num_steps: int = 100,
               num_queries: int = 5000, eot_samples: int = 20, batch_size: int = 500,
               bounds=(0.0, 1.0), atol: float = 1e-5,
               resume_dir: Optional[str] = None, mesh=None,
               attack_fn: Optional[Callable] = None, inspect: bool = True) -> AutoAttackResult:
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
      attack_fn: the model the attacks run on, when it is not ``logits_fn``: an adaptive
        stand-in with the same signature, such as ``robustjax.bpda(...)`` over a
        non-differentiable defence or ``robustjax.eot(...)`` of a randomised one
        (Athalye et al. 2018). Every adversarial example is still validated and counted
        on ``logits_fn``.
      inspect: first run :func:`robustjax.inspect` on ``logits_fn`` (the static scan of its
        program, the gradient probes on up to 32 examples, the custom-rule checks) and
        add its warnings, among them the official code's zero-gradient and dynamic
        checks, to the result's.

    Raises:
      ValueError: bad settings or data, naming the argument.
      InvalidAdversarialError: an attack returned a point outside the threat model.
    """
    if attack_fn is not None and not callable(attack_fn):
        raise TypeError(f"attack_fn must be a function or None, got {type(attack_fn).__name__}")
    names, (lo, hi), x, y, randomized = _validate(
        logits_fn, x, y, eps=eps, norm=norm, version=version, attacks=attacks,
        num_steps=num_steps, num_queries=num_queries, eot_samples=eot_samples,
        batch_size=batch_size, bounds=bounds, atol=atol)
    key = jax.random.PRNGKey(0) if key is None else key
    mesh = _mesh.make_mesh() if mesh is None else mesh
    n = x.shape[0]
    clean_correct, warnings = _clean_pass(logits_fn, x, y, key, version=version,
                                          batch_size=batch_size, mesh=mesh)
    report = _inspect(logits_fn, x, y, key, randomized, (lo, hi), warnings) if inspect else None
    state = _State(robust=clean_correct.copy(), x_adv=x.copy(),
                   broken_by=np.where(clean_correct, "", "clean").astype(object))
    log.info("AutoAttack %s (%s, eps %g) on %d examples: clean accuracy %.2f%%", version, norm,
             eps, n, 100 * clean_correct.mean())
    t_all = time.time()
    first, fp = 0, None
    if resume_dir:
        fp = ensemble.rowstore_fingerprint(
            logits_fn, x, y, key, names=names, eps=float(eps), norm=norm, version=version,
            num_steps=num_steps, num_queries=num_queries, eot_samples=eot_samples,
            batch_size=batch_size, bounds=[lo, hi], atol=atol, randomized=randomized,
            **_attack_fingerprint(attack_fn, x, randomized))
        first = _resume(state, resume_dir, names, fp)
    settings = dict(eps=eps, norm=norm, version=version, num_steps=num_steps,
                    num_queries=num_queries, bounds=(lo, hi), eot_samples=eot_samples)
    for i, name in enumerate(names[first:], start=first):
        t0 = time.time()
        _run_attack(logits_fn, x, y, jax.random.fold_in(key, i), name, state, settings,
                    atol=atol, batch_size=batch_size, mesh=mesh, randomized=randomized,
                    attack_fn=attack_fn)
        state.accuracy_after[name] = float(state.robust.mean())
        state.seconds[name] = time.time() - t0
        log.info("after %s: robust accuracy %.2f%% (%.1fs)", name, 100 * state.robust.mean(),
                 state.seconds[name])
        if resume_dir and _mesh.is_primary():
            ensemble.save_stage(resume_dir, i, fp, robust=state.robust, x_adv=state.x_adv,
                                broken_by=state.broken_by.astype(str),
                                accuracy_after=json.dumps(state.accuracy_after),
                                seconds=json.dumps(state.seconds))
    warnings += _masking_warnings(state.accuracy_after, clean_correct.mean())
    for w in warnings:
        log.warning(w)
    log.info("AutoAttack robust accuracy %.2f%% (%.1fs)", 100 * state.robust.mean(),
             time.time() - t_all)
    return AutoAttackResult(clean_accuracy=float(clean_correct.mean()),
                            robust_accuracy=float(state.robust.mean()),
                            accuracy_after=state.accuracy_after, seconds=state.seconds,
                            clean_correct=clean_correct, correct=state.robust,
                            broken_by=state.broken_by.astype(str), x_adv=state.x_adv,
                            warnings=warnings,
                            inspection=None if report is None else report.to_json())


@dataclasses.dataclass
class _State:
    """What the attacks have found so far: robust flags, adversarial examples, who broke what."""
    robust: np.ndarray
    x_adv: np.ndarray
    broken_by: np.ndarray
    accuracy_after: dict = dataclasses.field(default_factory=dict)
    seconds: dict = dataclasses.field(default_factory=dict)


def _validate(logits_fn, x, y, *, eps, norm, version, attacks, num_steps, num_queries,
              eot_samples, batch_size, bounds, atol):
    """Step 1: every setting and the data checked; ``(names, (lo, hi), x, y, randomized)``."""
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
    return names, (lo, hi), x, y, randomized


def _clean_pass(logits_fn, x, y, key, *, version, batch_size, mesh):
    """Step 2: clean correctness of every example, and the checks of the model's outputs."""
    randomized = version == "rand"

    def clean_local(xb, yb, ib, key):
        if not randomized:
            return jnp.argmax(logits_fn(xb), -1) == yb, logits_fn(xb)

        def one(xe, ye, ke):
            lg = logits_fn(xe, ke)
            return jnp.argmax(lg, -1) == ye, lg
        return _mesh.per_example(one)(xb, yb, _mesh.example_keys(key, ib))

    clean_run = _mesh.sharded(clean_local, mesh, num_batched=3)
    n = x.shape[0]
    clean_correct = np.zeros(n, bool)
    outputs = []
    count, size = ensemble.chunks(n, batch_size, mesh.size)
    for sel in np.array_split(np.arange(n), count):
        ok, lg = _mesh.map_batch(clean_run, mesh, [x[sel], y[sel], sel.astype(np.int32)],
                                 [jax.random.fold_in(key, 10_000)], size=size)
        clean_correct[sel] = ok
        outputs.append(lg)
    warnings = ensemble.output_checks(np.concatenate(outputs),
                                      None if randomized else logits_fn,
                                      x[:min(n, batch_size)], version)
    return clean_correct, warnings


def _resume(state: _State, resume_dir: str, names, fp: str) -> int:
    """Step 3: the state after the last stored attack; returns how many attacks are done."""
    first, stored = ensemble.load_stage(resume_dir, names, fp)
    if stored is not None:
        state.robust, state.x_adv = stored["robust"], stored["x_adv"]
        state.broken_by = stored["broken_by"].astype(object)
        state.accuracy_after = json.loads(str(stored["accuracy_after"]))
        state.seconds = json.loads(str(stored["seconds"]))
        log.info("resumed after %s (stored in %s)", names[first - 1], resume_dir)
    return first


def _inspect(logits_fn, x, y, key, randomized, bounds, warnings):
    """Step 2b: :func:`robustjax.inspect` of the evaluated model; its warnings join the
    official checks'. A model the inspection cannot read is still evaluated (with a warning)."""
    try:
        report = _inspection.inspect(logits_fn, x, y, key=jax.random.fold_in(key, 20_000),
                                     randomized=randomized, bounds=bounds)
    except Exception as e:  # noqa: BLE001 -- the evaluation must not depend on it
        warnings.append(f"inspection: could not inspect logits_fn ({type(e).__name__}: {e})")
        return None
    warnings += [w for w in report.warnings() if w not in warnings]
    return report


def _attack_fingerprint(attack_fn, x, randomized):
    """What a stored stage's fingerprint adds for ``attack_fn`` (nothing without one, so
    that stages stored before it existed still resume): its outputs, when deterministic."""
    if attack_fn is None:
        return {}
    return dict(attack_model="randomised" if randomized else rowstore.model_fingerprint(
        attack_fn, x))


def _run_attack(logits_fn, x, y, key, name, state: _State, settings: dict, *, atol,
                batch_size, mesh, randomized, attack_fn=None):
    """Step 4: one attack of the ensemble, stage by stage (restart or target rank), each on
    the examples still robust, in equal padded batches; every result validated."""
    attack, stage_args = ensemble.stage_attack(name, **settings)
    norm, (lo, hi) = settings["norm"], settings["bounds"]
    attacked = logits_fn if attack_fn is None else attack_fn

    def run_local(xb, yb, ib, key, arg):
        def one(xe, ye, ke, arg):
            kattack, keval = jax.random.split(ke)
            adv = attack(attacked, xe, ye, kattack, arg)
            model = (lambda z: logits_fn(z, keval)) if randomized else logits_fn
            return adv, evaluate.adversarial_checks(model, xe, ye, adv, norm=norm)
        return _mesh.per_example(one)(xb, yb, _mesh.example_keys(key, ib), arg)

    run = _mesh.sharded(run_local, mesh, num_batched=3)
    sizes = ensemble.SizePlanner(batch_size, mesh.size, adaptive=jax.process_count() == 1)
    t0 = time.time()
    todo, done = int(state.robust.sum()) * len(stage_args), 0
    for s, arg in enumerate(stage_args):
        idx = np.flatnonzero(state.robust)
        if not len(idx):
            break
        count, size = sizes.plan(len(idx))
        for sel in np.array_split(idx, count):
            t_call = time.time()
            adv, checks = _mesh.map_batch(run, mesh, [x[sel], y[sel], sel.astype(np.int32)],
                                          [jax.random.fold_in(key, s), np.int32(arg)],
                                          size=size)
            sizes.record(size, time.time() - t_call)
            evaluate.validate_checks(checks, eps=float(settings["eps"]), atol=float(atol),
                                     norm=norm, bounds=(lo, hi), index=sel)
            hit = ~checks["adv_ok"]
            state.robust[sel[hit]] = False
            state.broken_by[sel[hit]] = name
            state.x_adv[sel[hit]] = adv[hit]
            done += len(sel)
            _progress(name, arg, len(stage_args) > 1, done, todo, state.robust, t0)
        todo = done + int(state.robust.sum()) * (len(stage_args) - s - 1)


def _progress(name, arg, staged, done, todo, robust, t0):
    elapsed = time.time() - t0
    stage = (f" {'target' if name in ('apgd-t', 'fab-t') else 'restart'} {arg}"
             if staged else "")
    log.info("%s%s: %d/%d examples, %d robust left (%.2f%%), %.0fs, ETA %.0fs", name, stage,
             done, todo, int(robust.sum()), 100 * robust.mean(), elapsed,
             elapsed / max(done, 1) * max(todo - done, 0))


def _masking_warnings(accuracy_after: dict, clean_accuracy: float) -> list:
    """Step 5: Square, which uses no gradient, beating the gradient attacks (official check)."""
    if "square" not in accuracy_after:
        return []
    before = [v for k, v in accuracy_after.items() if k != "square"]
    sq_gain = (min(before) if before else clean_accuracy) - accuracy_after["square"]
    if before and sq_gain > 0.002:
        return [f"Square, which uses no gradients, lowered the robust accuracy by "
                f"{100 * sq_gain:.2f} points after the gradient attacks: a sign "
                "of gradient masking; the evaluation may be unreliable"]
    return []
