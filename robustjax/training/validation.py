"""Validation during training: a held-out split, periodic robust accuracy, and two failure signs.

* Robust overfitting (Rice, Wong & Kolter, ICML 2020): robust test accuracy of
  adversarial training peaks and then falls while training accuracy keeps
  rising; keeping the checkpoint with the best robust *validation* accuracy
  ("early stopping") recovers most later improvements. The training loop
  evaluates every ``eval_every`` steps and keeps that checkpoint
  (:func:`robustjax.training.workdir.best_checkpoint_manager`).
* Catastrophic overfitting of Fast AT (Wong, Rice & Kolter, ICLR 2020,
  Section 5.2): within a few steps PGD accuracy collapses to near zero while
  FGSM accuracy stays high. :func:`catastrophic_overfitting` flags it.

The validation split is the last ``val_examples`` examples of the training
set, removed from the examples that training draws batches from
(:func:`split_validation`); the test set is never used. Each evaluation
reports clean, FGSM and APGD-CE accuracy (Croce & Hein 2020) with a fixed key,
so two evaluations of the same weights give the same numbers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import apgd as _apgd
from robustjax.attacks import first_order as attacks
from robustjax.runtime import mesh as _mesh
from robustjax.training import workdir as _workdir

__all__ = ["split_validation", "make_validator", "catastrophic_overfitting",
           "PeriodicValidation", "COLLAPSE_RATIO", "FGSM_GAP"]

log = logging.getLogger("robustjax")

# A robust accuracy below COLLAPSE_RATIO times the best one seen before, with
# FGSM accuracy at least FGSM_GAP above it, is catastrophic overfitting.
COLLAPSE_RATIO = 0.5
FGSM_GAP = 0.3


def split_validation(images: np.ndarray, labels: np.ndarray, val_examples: int):
    """``(train_images, train_labels, val_images, val_labels)``: the last ``val_examples``
    examples held out of training."""
    n = len(images)
    if isinstance(val_examples, bool) or not isinstance(val_examples, int) or not (
            0 < val_examples < n):
        raise ValueError(f"val_examples must be an integer in [1, {n - 1}] (the training set "
                         f"has {n} examples), got {val_examples!r}")
    cut = n - val_examples
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def make_validator(logits_fn_of, *, eps: float, attack_steps: int, batch_size: int,
                   seed: int, mesh=None, norm: str = "linf"):
    """``validate(variables, images_uint8, labels) -> dict`` of accuracies on a split.

    ``logits_fn_of(variables)`` returns the eval-mode ``x -> logits`` of some
    weights (raw or averaged). The result holds ``clean_acc``, ``fgsm_acc``
    (FGSM, Eq. 2.2: one step of length eps along the ``norm``'s ascent direction
    from x), ``robust_acc`` (APGD-CE in ``norm`` with ``attack_steps`` iterations;
    an example counts as robust only if it is classified correctly both clean
    and attacked) and ``n``. Example ``j`` is attacked alone with the key
    ``fold_in(PRNGKey(seed), j)``; batches are split over ``mesh`` (default:
    every device of every process) and the last one is padded, so one program
    is compiled and neither the batch size nor the devices change a number.
    """
    root = jax.random.PRNGKey(seed)
    mesh = _mesh.make_mesh() if mesh is None else mesh

    def local(x, y, idx, variables, key):
        logits_fn = logits_fn_of(variables)

        def attack(xe, ye, ke):
            return _apgd.apgd(logits_fn, xe, ye, ke, eps=eps, loss="ce", num_steps=attack_steps,
                              norm=norm)
        clean = jnp.argmax(logits_fn(x), -1) == y
        if norm == "linf":
            x_fgsm = attacks.fgsm(logits_fn, x, y, eps=eps)
        else:
            x_fgsm = attacks.pgd(logits_fn, x, y, None, eps=eps, step_size=eps, num_steps=1,
                                 norm=norm, random_start=False)
        fgsm = jnp.argmax(logits_fn(x_fgsm), -1) == y
        x_adv = _mesh.per_example(attack)(x, y, _mesh.example_keys(key, idx))
        robust = clean & (jnp.argmax(logits_fn(x_adv), -1) == y)
        return clean, fgsm, robust

    run = _mesh.sharded(local, mesh, num_batched=3)
    size = _mesh.padded_size(batch_size, mesh)

    def validate(variables, images: np.ndarray, labels: np.ndarray) -> dict:
        n = len(images)
        totals = np.zeros(3, np.int64)
        for start in range(0, n, size):
            stop = min(start + size, n)
            out = _mesh.map_batch(run, mesh, [images[start:stop].astype(np.float32) / 255.0,
                                              labels[start:stop],
                                              np.arange(start, stop, dtype=np.int32)],
                                  [variables, root], size=size)
            totals += np.array([int(np.sum(c)) for c in out])
        clean, fgsm, robust = (float(t) / n for t in totals)
        return dict(clean_acc=clean, fgsm_acc=fgsm, robust_acc=robust, n=n)

    return validate


def catastrophic_overfitting(record: dict, best_robust_before: Optional[float]) -> bool:
    """True if ``record`` (``robust_acc``, ``fgsm_acc``) shows catastrophic overfitting.

    Wong et al. (2020), Section 5.2: PGD accuracy collapses while FGSM
    accuracy stays high. Here: robust accuracy below :data:`COLLAPSE_RATIO`
    times the best robust accuracy of earlier evaluations, and FGSM accuracy
    at least :data:`FGSM_GAP` above it. A model that was never robust (natural
    training) is never flagged.
    """
    if best_robust_before is None:
        return False
    r, f = record["robust_acc"], record["fgsm_acc"]
    return r < COLLAPSE_RATIO * best_robust_before and f - r >= FGSM_GAP


class PeriodicValidation:
    """The training loop's evaluations every ``eval_every`` steps, with resume.

    Each evaluation scores the raw weights (``"last"``) and, with
    ``ema_decay > 0``, the averaged ones (``"ema"``) with :func:`make_validator`,
    appends one record to ``workdir/eval.jsonl``, flags catastrophic
    overfitting of the raw weights (logged as a warning naming the step) and
    offers the state to ``workdir/best_checkpoint`` with the robust accuracy
    of the scored weights (averaged when kept, else raw) as orbax's metric.

    Resume: records after the restored step are dropped (they are redone with
    the same numbers). The training loop saves a regular checkpoint right
    after every evaluation and waits for earlier saves before one, so the
    best checkpoint can be at most one evaluation ahead of the restored step;
    that step is then not saved again (it holds the same state).
    """

    def __init__(self, config, workdir: str, primary: bool, logits_fn_of, val_images,
                 val_labels, mesh=None):
        self.config, self.primary = config, primary
        self.images, self.labels = val_images, val_labels
        self.validate = make_validator(logits_fn_of, eps=config.threat.eps,
                                       attack_steps=config.evaluation.val_attack_steps,
                                       batch_size=config.evaluation.eval_batch_size,
                                       seed=config.run.seed + 2, mesh=mesh,
                                       norm=config.threat.train_norm)
        self.path = os.path.join(workdir, "eval.jsonl")
        self.manager = _workdir.best_checkpoint_manager(workdir)
        self.scored = "ema" if config.optim.ema_decay > 0 else "last"
        self.history: list[dict] = []
        self.attack = f"APGD-CE-{config.evaluation.val_attack_steps}"

    def resume(self, step: int) -> None:
        """Keeps the records of steps <= ``step`` (the restored checkpoint)."""
        if self.primary:
            _workdir.truncate_metrics(self.path, step)
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.history = [json.loads(line) for line in f if line.strip()]
            self.history = [r for r in self.history if r["step"] <= step]

    def due(self, step: int) -> bool:
        return step % self.config.evaluation.eval_every == 0 or step == self.config.run.steps

    def run(self, step: int, state) -> dict:
        """Evaluates ``state`` at ``step``; returns the record written to eval.jsonl."""
        t0 = time.time()
        rec = dict(step=step, attack=self.attack,
                   last=self.validate(dict(params=state.params,
                                           batch_stats=state.batch_stats),
                                      self.images, self.labels))
        if self.config.optim.ema_decay > 0:
            rec["ema"] = self.validate(dict(params=state.ema_params,
                                            batch_stats=state.ema_batch_stats),
                                       self.images, self.labels)
        before = [r["last"]["robust_acc"] for r in self.history]
        rec["catastrophic_overfitting"] = catastrophic_overfitting(
            rec["last"], max(before) if before else None)
        rec["seconds"] = time.time() - t0
        metric = rec[self.scored]["robust_acc"]
        if step not in self.manager.all_steps():
            _workdir.save_state(self.manager, step, state, {_workdir.BEST_METRIC: metric})
            self.manager.wait_until_finished()
        self.history.append(rec)
        if self.primary:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        parts = [f"{w} clean {rec[w]['clean_acc']:.3f} FGSM {rec[w]['fgsm_acc']:.3f} "
                 f"{self.attack} {rec[w]['robust_acc']:.3f}" for w in ("last", "ema") if w in rec]
        log.info("validation at step %d (%d examples, %.0fs): %s", step, rec["last"]["n"],
                 rec["seconds"], " | ".join(parts))
        if rec["catastrophic_overfitting"]:
            log.warning("catastrophic overfitting at step %d: validation %s accuracy %.3f "
                        "(best before: %.3f) while FGSM accuracy is %.3f", step, self.attack,
                        rec["last"]["robust_acc"], max(before), rec["last"]["fgsm_acc"])
        return rec

    def summary(self) -> dict:
        """The best checkpoint and the catastrophic-overfitting steps, for results.json."""
        best = self.manager.best_step()
        by_step = {r["step"]: r for r in self.history}
        out = dict(best_step=best, weights=self.scored, attack=self.attack,
                   path=os.path.join("best_checkpoint", str(best)) if best is not None else None,
                   catastrophic_overfitting_steps=[r["step"] for r in self.history
                                                   if r["catastrophic_overfitting"]])
        if best in by_step:
            out["val_robust_acc"] = by_step[best][self.scored]["robust_acc"]
            out["val_clean_acc"] = by_step[best][self.scored]["clean_acc"]
        return out
