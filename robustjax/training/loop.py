"""The training loop: :func:`train_and_evaluate`, the library entry point of the experiments.

It runs the jitted Danskin step of :mod:`robustjax.training.step` on the state of
:mod:`robustjax.training.state`, over one mesh of every device of every process
(:mod:`robustjax.runtime.mesh`), and handles what a long run meets: progress lines
and ``metrics.jsonl`` records (step, losses, accuracies, examples/s, ETA),
periodic robust validation and the best checkpoint
(:mod:`robustjax.training.validation`), preemption by SIGTERM (a checkpoint of the
current step, on every process at the same step), divergence (a non-finite
loss or parameter names the step; no non-finite state is saved), and the
end-of-run evaluation (the paper's Table 1 rows at the training eps). What the
run directory holds and how damaged files are handled is
:mod:`robustjax.training.workdir`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.data import datasets as data
from robustjax.runtime import mesh as _mesh
from robustjax.models import paper as models
from robustjax.evaluation import suite
from robustjax.training import validation
from robustjax.training import workdir as _workdir
from robustjax.training.config import TrainConfig
from robustjax.training.state import build_model, create_state, make_optimizer, model_logits_fn
from robustjax.training.step import make_train_step, stacked

__all__ = ["train_and_evaluate", "evaluate_model", "evaluation_specs", "Preempted", "Diverged"]

log = logging.getLogger("robustjax")


class Preempted(Exception):
    """SIGTERM stopped training; a checkpoint of the current step was saved."""

    def __init__(self, step: int, workdir: str):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint saved in {workdir}; "
                         "rerun the same command to resume")
        self.step = step


class Diverged(ValueError):
    """The training loss became NaN or infinite."""


def _load_split(config: TrainConfig, split: str):
    """uint8 images [N, H, W, C] and int32 labels of ``split``."""
    return data.load(config.data.dataset, split, config.data.data_dir)


def evaluation_specs(config: TrainConfig) -> list:
    """Natural, FGSM and PGD-k rows (paper Table 1 layout) at the training eps and norm.

    FGSM is L-inf only; L2 and L1 runs get the natural and PGD-k rows, with steps of
    2.5 eps / k.
    """
    eps, norm = config.threat.eps, config.threat.train_norm
    specs = [suite.AttackSpec("Natural", attack="natural", eps=eps, norm=norm)]
    if norm == "linf":
        specs.append(suite.AttackSpec("FGSM", attack="fgsm", eps=eps))
    for k in (int(k) for k in config.evaluation.eval_attack_steps if int(k) > 0):
        ss = config.evaluation.eval_attack_step_size if norm == "linf" else 2.5 * eps / k
        specs.append(suite.AttackSpec("PGD", eps=eps, steps=k, step_size=ss, norm=norm))
    return specs


def evaluate_model(logits_fn, x, y, config: TrainConfig, key=None, mesh=None) -> list[dict]:
    """Rows of :func:`evaluation_specs` plus the per-example worst case (Section 5)."""
    key = jax.random.PRNGKey(config.run.seed + 1) if key is None else key
    return suite.run_suite(logits_fn, x, y, evaluation_specs(config),
                           batch_size=config.evaluation.eval_batch_size, key=key, mesh=mesh).rows


def train_and_evaluate(config: TrainConfig, workdir: str, *,
                       stop_after: Optional[int] = None,
                       evaluate: bool = True) -> Optional[dict]:
    """Trains (or resumes) and evaluates: Madry et al.'s saddle-point training (ICLR 2018,
    Eq. 2.1; the outer minimisation by Danskin's theorem, Section 2), as a library call.

    Writes ``workdir/config.json``, appends to ``workdir/metrics.jsonl``, keeps
    orbax checkpoints in ``workdir/checkpoints`` and writes ``workdir/results.json``
    (see :mod:`robustjax.training.workdir`). Returns the results dict. ``stop_after=N``
    stops at step N with a checkpoint and no evaluation (returns None), as a
    time-boxed job would; the same call without it then resumes. With
    ``eval_every > 0`` the last ``val_examples`` training examples are held
    out and scored periodically (:class:`robustjax.training.validation.PeriodicValidation`);
    results.json names the best checkpoint. The test evaluation scores the
    weights :func:`load_model` returns (averaged when ``ema_decay > 0``);
    ``evaluate=False`` skips it (results.json then has no rows).

    What a run survives: a second process on the same workdir raises
    :class:`~robustjax.training.workdir.WorkdirInUseError` naming the owner; unreadable
    checkpoints are moved aside and the newest readable one is used; SIGTERM
    saves a checkpoint of the current step and raises :class:`Preempted`; a
    non-finite loss or parameter raises :class:`Diverged` naming the step, and
    no checkpoint is saved without checking that the state is finite.

    Several processes (``jax.distributed`` started, see
    :func:`robustjax.runtime.mesh.initialize`): every process calls this with the
    same arguments. The mesh spans every device of every process; orbax saves
    and restores collectively; process 0 alone holds the lock and writes
    config.json, metrics.jsonl, eval.jsonl and results.json. A SIGTERM that
    reaches any process stops all of them after the same step, with one
    checkpoint: the processes all-gather the flag after each call.
    """
    config.validate()
    mesh = _mesh.make_mesh()
    if config.run.batch_size % mesh.size:
        raise ValueError(f"batch_size {config.run.batch_size} must be divisible by the number of "
                         f"devices ({mesh.size}) to shard the batch")
    primary = _mesh.is_primary()  # several processes: process 0 alone writes files
    xtr, ytr = _load_split(config, "train")
    xte, yte = _load_split(config, "test")
    val = None
    if config.evaluation.eval_every:
        xtr, ytr, xval, yval = validation.split_validation(xtr, ytr, config.evaluation.val_examples)
        val = (xval, yval)
    if config.run.batch_size > len(xtr):
        raise ValueError(f"batch_size {config.run.batch_size} exceeds the {len(xtr)} training "
                         "examples")
    owner = _start(config, workdir, primary)
    try:
        out = _train(config, workdir, mesh, primary, xtr, ytr, stop_after, val)
        if out is None:
            return None
        return _evaluate_and_write(config, workdir, mesh, primary, *out, xte, yte, evaluate)
    finally:
        if owner is not None:
            owner.close()


def _start(config: TrainConfig, workdir: str, primary: bool):
    """Process 0 takes the workdir lock and writes (or checks) config.json; every process
    learns whether that worked (a collective), so a refused run stops everywhere."""
    owner, error = None, None
    if primary:
        try:
            owner = _workdir.lock(workdir)
            _workdir.write_config(workdir, config)
        except (ValueError, _workdir.WorkdirInUseError) as e:
            error = e
    if _mesh.any_process(error is not None):
        if owner is not None:
            owner.close()
        if error is not None:
            raise error
        raise _workdir.WorkdirInUseError(f"process 0 could not start the run in {workdir}; "
                                         "its error names the reason")
    return owner


def _train(config: TrainConfig, workdir: str, mesh, primary: bool, xtr, ytr,
           stop_after: Optional[int], val=None):
    """The training loop; returns ``(final state, training summary)``, or None when
    stopped by ``stop_after``."""
    model, tx, state, manager, metrics_path = _restore(config, workdir, mesh, primary, xtr)
    validator = None
    if val is not None:
        validator = validation.PeriodicValidation(
            config, workdir, primary,
            lambda v: model_logits_fn(config, model, v["params"], v["batch_stats"]), *val,
            mesh=mesh)
        validator.resume(int(state.step))
    train_s = _workdir.last_record(metrics_path).get("train_s", 0.0)
    one_step = make_train_step(config, model, tx, mesh)
    calls = {1: jax.jit(stacked(one_step, 1), donate_argnums=0)}
    if config.run.steps_per_call > 1:
        calls[config.run.steps_per_call] = jax.jit(
            stacked(one_step, config.run.steps_per_call), donate_argnums=0)
    # The whole training set on every device, as uint8 (CIFAR-10: 150 MB).
    images, labels = _mesh.replicate(mesh, (xtr, ytr))
    log.info("training %s on %s: %d device(s), %d process(es), %s parameters",
             type(model).__name__, config.data.dataset, mesh.size, jax.process_count(),
             f"{models.param_count(state.params):,}")

    def save(step, state, pending, first):
        _check_finite(pending, first, state, step, manager)
        _workdir.save_state(manager, step, state)

    start = int(state.step)
    pending, t_last, s_last = [], time.time(), start
    end = config.run.steps if stop_after is None else min(stop_after, config.run.steps)
    done = start
    val_note = ""
    with _sigterm_flag() as sigterm, open(metrics_path if primary else os.devnull, "a") as mf:
        while done < end:
            # A call of steps_per_call steps, or single steps up to the next log,
            # checkpoint, evaluation or end step: at most two compiled programs.
            boundary = min(_next_multiple(done, config.run.log_every),
                           _next_multiple(done, config.run.checkpoint_every),
                           _next_multiple(done, config.evaluation.eval_every or end), end)
            k = config.run.steps_per_call if boundary - done >= config.run.steps_per_call else 1
            state, m = calls[k](state, images, labels)
            pending.append(m)
            done += k
            if done % config.run.log_every == 0 or done == config.run.steps:
                _check_finite(pending, s_last + 1, None, done, manager)
                now = time.time()
                train_s += now - t_last
                _log_progress(config, mf, pending, done, done - s_last, now - t_last, train_s,
                              val_note)
                pending, t_last, s_last = [], now, done
            evaluate_now = validator is not None and validator.due(done)
            if evaluate_now:
                # Evaluate, offer the state to best_checkpoint/, then checkpoint it
                # (see PeriodicValidation on resume).
                _check_finite(pending, s_last + 1, state, done, manager)
                manager.wait_until_finished()
                t_eval = time.time()
                rec = validator.run(done, state)
                val_note = f"  val {validator.attack} {rec[validator.scored]['robust_acc']:.3f}"
                t_last += time.time() - t_eval  # validation time is not training time
            if (done % config.run.checkpoint_every == 0 or done in (config.run.steps, end)
                    or evaluate_now):
                save(done, state, pending, s_last + 1)
            # Every process stops at the same step: a SIGTERM that reached any of
            # them stops all (one all-gather of a flag per call with several processes).
            if _mesh.any_process(sigterm.is_set()):
                if manager.latest_step() != done:
                    save(done, state, pending, s_last + 1)
                manager.wait_until_finished()
                log.info("SIGTERM: saved the checkpoint of step %d; rerun to resume", done)
                raise Preempted(done, workdir)
    manager.wait_until_finished()
    if end < config.run.steps:
        log.info("stopped at step %d of %d (stop_after)", end, config.run.steps)
        return None
    summary = dict(final_step=int(state.step), train_s=train_s)
    if validator is not None:
        summary["best"] = validator.summary()
    return state, summary


def _restore(config: TrainConfig, workdir: str, mesh, primary: bool, xtr):
    """The model, optimiser and state (from the last checkpoint when there is one), the
    checkpoint manager, and ``metrics.jsonl`` cut back to the restored step."""
    model = build_model(config)
    tx = make_optimizer(config)
    state = create_state(config, model, tx, jnp.zeros((1,) + xtr.shape[1:], jnp.float32))
    state = _mesh.replicate(mesh, state)
    manager, restored = _workdir.restore_latest(workdir, _workdir.checkpoint_manager(workdir),
                                                state, move_damaged=primary)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if restored is not None:
        state = restored
        log.info("resumed from step %d", int(state.step))
    if primary:
        _workdir.truncate_metrics(metrics_path, int(state.step))
    return model, tx, state, manager, metrics_path


def _log_progress(config: TrainConfig, mf, pending, done: int, steps: int, seconds: float,
                  train_s: float, val_note: str) -> None:
    """One progress line and one ``metrics.jsonl`` record: the metrics averaged over the
    ``steps`` since the last line, examples/s and the ETA."""
    avg = {k: float(v) for k, v in jax.tree_util.tree_map(
        lambda *a: jnp.mean(jnp.concatenate(a)), *pending).items()}
    now = time.time()
    ex_s = steps * config.run.batch_size / max(seconds, 1e-9)
    eta = (config.run.steps - done) * config.run.batch_size / max(ex_s, 1e-9)
    rec = dict(step=done, **avg, examples_per_s=ex_s, eta_s=eta, time=now, train_s=train_s)
    mf.write(json.dumps(rec) + "\n")
    mf.flush()
    log.info("step %d/%d  loss %.4f  nat_acc %.3f  adv_acc %.3f  eps %.3f  %.0f ex/s  ETA %s%s",
             done, config.run.steps, avg["loss"], avg["nat_acc"], avg["adv_acc"], avg["eps"],
             ex_s, _fmt_time(eta), val_note)


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _check_finite(pending, first: int, state, step: int, manager) -> None:
    """Raises :class:`Diverged` if a pending loss (steps ``first, ...``) or ``state``'s
    parameters are not finite; the checkpoint on disk is then the last finite state."""
    bad_step = None
    if pending:
        losses = np.asarray(jnp.concatenate([m["loss"] for m in pending]))
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            bad_step = first + int(bad[0])
    if bad_step is None and state is not None:
        finite = jax.tree_util.tree_reduce(
            jnp.logical_and, jax.tree_util.tree_map(lambda a: jnp.all(jnp.isfinite(a)),
                                                    state.params))
        bad_step = None if bool(finite) else step
    if bad_step is not None:
        manager.wait_until_finished()
        last = manager.latest_step()
        raise Diverged(f"training diverged: non-finite loss or parameters at step {bad_step}; "
                       f"the last checkpoint ({'none' if last is None else f'step {last}'}) "
                       "holds the last finite state; lower --lr or check the data")


class _sigterm_flag:
    """Context manager: an Event set by SIGTERM while inside (main thread only)."""

    def __enter__(self):
        self.event, self.previous = threading.Event(), None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _evaluate_and_write(config: TrainConfig, workdir: str, mesh, primary: bool, state, summary,
                        xte, yte, evaluate: bool = True):
    model = build_model(config)
    wanted = config.evaluation.eval_examples
    n = len(xte) if wanted == -1 else min(wanted, len(xte))
    ema = config.optim.ema_decay > 0
    params, stats = ((state.ema_params, state.ema_batch_stats) if ema
                     else (state.params, state.batch_stats))
    rows = []
    if evaluate:
        logits_fn = jax.jit(model_logits_fn(config, model, params, stats))
        rows = evaluate_model(logits_fn, xte[:n].astype(np.float32) / 255.0, yte[:n], config,
                              mesh=mesh)
    results = dict(dataset=config.data.dataset, split="test", n=int(n) if evaluate else 0,
                   weights="ema" if ema else "last",
                   model=dict(arch=type(model).__name__, width=config.model.width,
                              params=models.param_count(state.params)),
                   training=dict(config.to_json(), **summary), rows=rows)
    if primary:
        suite.write_results(os.path.join(workdir, "results.json"), results, table=False)
    if rows and primary:
        print(suite.markdown_table(rows))
    return results


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
