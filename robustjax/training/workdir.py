"""The run directory: everything a training run keeps on disk, and how it survives failures.

A workdir holds

* ``config.json``: the :class:`~robustjax.training.config.TrainConfig`; a rerun must
  match it except for :data:`~robustjax.training.config.RESUMABLE_CHANGES` (then it resumes);
* ``.lock``: held with ``fcntl.flock`` by the one process that trains in it
  (it names that process's pid and host). The OS releases it when the process
  ends, however it ends, so a killed run never blocks its rerun;
* ``metrics.jsonl``: one progress record per line; on resume, records after
  the restored step are dropped (they are redone);
* ``checkpoints/``: orbax checkpoints of the train state (the two newest). A
  checkpoint that cannot be read is moved to ``damaged_checkpoints/`` (never
  deleted) with a warning, and the newest readable one is used;
* ``eval.jsonl`` and ``best_checkpoint/`` (with ``eval_every > 0``): one
  validation record per evaluation, and the checkpoint with the best robust
  validation accuracy, kept by orbax's ``best_fn`` option;
* ``results.json``: the evaluation, written atomically.

:func:`load_run` and :func:`load_model` read a trained model back.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from robustjax.runtime import mesh as _mesh
from robustjax.models import paper as models
from robustjax.training.config import RESUMABLE_CHANGES, TrainConfig
from robustjax.training.state import build_model, create_state, make_optimizer, model_logits_fn

__all__ = ["WorkdirInUseError", "CheckpointError", "lock", "write_config", "truncate_metrics", "last_record",
           "checkpoint_manager", "best_checkpoint_manager", "save_state", "restore_latest",
           "LoadedRun", "load_run", "load_model", "WEIGHTS", "SAMPLE_SHAPE"]

log = logging.getLogger("robustjax")

SAMPLE_SHAPE = {"mnist": (1, 28, 28, 1), "fashion_mnist": (1, 28, 28, 1),
                "cifar10": (1, 32, 32, 3)}


class WorkdirInUseError(RuntimeError):
    """Another live process owns the workdir."""


class CheckpointError(ValueError):
    """No checkpoint in the workdir can be read."""


# ----------------------------------------------------------------------------
# One owner per workdir
# ----------------------------------------------------------------------------

def lock(workdir: str):
    """Takes ``workdir/.lock`` for this process, or raises :class:`WorkdirInUseError`.

    Returns the open lock file; the lock lasts until it is closed or the
    process ends (the OS drops ``flock`` locks of dead processes, so a
    SIGKILLed run does not block its rerun).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "an unknown process"
        f.close()
        raise WorkdirInUseError(f"workdir {workdir} is in use by {owner}; wait for it to end "
                                "or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()} "
            f"(since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    f.flush()
    return f


# ----------------------------------------------------------------------------
# config.json and metrics.jsonl
# ----------------------------------------------------------------------------

def write_config(workdir: str, config: TrainConfig) -> bool:
    """Writes config.json, or checks a rerun against it. Returns True if it existed."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = TrainConfig.from_json(json.load(f)).to_flat_json()
        new = config.to_flat_json()
        # With periodic validation, eval_batch_size also fixes the validation
        # batches and their attack keys: changing it would change eval.jsonl.
        resumable = RESUMABLE_CHANGES - (
            {"eval_batch_size"} if config.evaluation.eval_every else set())
        diff = [k for k in new if old.get(k) != new[k] and k not in resumable]
        if diff:
            raise ValueError(
                f"{workdir} holds a run with a different configuration "
                f"({', '.join(f'{k}: {old.get(k)!r} there, {new[k]!r} now' for k in diff)}); "
                "use another --workdir or the same settings")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config.to_json(), f, indent=1)
    existed = os.path.exists(path)
    os.replace(tmp, path)
    return existed


def truncate_metrics(path: str, step: int) -> None:
    """Drops records logged after the checkpoint a run resumes from (they are redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def last_record(path: str) -> dict:
    """The last record of a ``.jsonl`` file ({} if there is none)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]) if lines else {}


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------

BEST_METRIC = "val_robust_acc"


def checkpoint_manager(workdir: str):
    """The orbax manager of ``workdir/checkpoints`` (the two newest are kept)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def best_checkpoint_manager(workdir: str):
    """The orbax manager of ``workdir/best_checkpoint``: keeps the one checkpoint whose
    ``val_robust_acc`` metric is highest (orbax ``best_fn``; on a tie, the later step)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best_checkpoint"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m[BEST_METRIC], best_mode="max",
            keep_checkpoints_without_metrics=False))


_MANAGERS = {"checkpoints": checkpoint_manager, "best_checkpoint": best_checkpoint_manager}


def _tree(state) -> dict:
    """The train state as saved: its fields without the unused (None) ones, so runs
    without weight averaging keep the checkpoint layout of earlier versions."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if getattr(state, f.name) is not None}


def save_state(manager, step: int, state, metrics: Optional[dict] = None) -> None:
    """Saves ``state`` at ``step`` (with ``metrics`` for a best-checkpoint manager)."""
    manager.save(step, args=ocp.args.StandardSave(_tree(state)), metrics=metrics)


def _restore(manager, state, step: int):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _tree(state))
    return state.replace(**manager.restore(step, args=ocp.args.StandardRestore(abstract)))


def restore_latest(workdir: str, manager, state, *, move_damaged: bool = True):
    """``(manager, state)`` from the newest readable checkpoint, or ``(manager, None)`` if none.

    A checkpoint that fails to restore is logged with the reason and, when
    ``move_damaged`` (training does this; readers only skip it), moved to
    ``workdir/damaged_checkpoints/`` (never deleted); the next older one is
    tried. If checkpoints exist and none can be read, raises
    :class:`CheckpointError` naming them. The manager is recreated after a move.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return manager, None
    bad = []
    for step in steps:
        try:
            return manager, _restore(manager, state, step)
        except Exception as e:  # orbax / TensorStore raise many types for a bad file
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            subdir = os.path.basename(os.fspath(manager.directory).rstrip("/"))
            src = os.path.join(os.path.abspath(workdir), subdir, str(step))
            if not move_damaged:
                log.warning("checkpoint %s cannot be read (%s); trying an older one", src, reason)
                bad.append(src)
                continue
            dst_dir = os.path.join(os.path.abspath(workdir), "damaged_checkpoints")
            os.makedirs(dst_dir, exist_ok=True)
            dst = os.path.join(dst_dir, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("checkpoint %s cannot be read (%s); moved to %s", src, reason, dst)
            shutil.move(src, dst)
            bad.append(dst)
            manager.close()
            manager = _MANAGERS[subdir](workdir)
    raise CheckpointError(
        f"no checkpoint in {workdir}/{subdir} can be read ({', '.join(bad)}); to start "
        f"over, remove {workdir}/checkpoints and {workdir}/metrics.jsonl, or use another "
        "--workdir")


# ----------------------------------------------------------------------------
# Reading a trained model back
# ----------------------------------------------------------------------------

WEIGHTS = ("last", "ema", "best")


class LoadedRun(NamedTuple):
    """A trained model read back from a workdir by :func:`load_run`."""

    logits_fn: Any  # x NHWC in [0, 1] -> logits, eval mode, jitted
    config: TrainConfig
    params: int  # parameter count
    step: int  # training step of the checkpoint
    variables: Any = None  # {"params": ..., "batch_stats": ...} of the weights loaded
    which: str = "last"  # which weights: "last", "ema" or "best"


def _default_weights(config: TrainConfig) -> str:
    return "ema" if config.optim.ema_decay > 0 else "last"


def load_run(workdir: str, which: Optional[str] = None) -> LoadedRun:
    """A trained model of ``workdir`` with its configuration (a run of Madry et al.'s
    training, ICLR 2018, Section 4, or of the other objectives).

    ``which``: ``"last"``, the raw weights of the newest readable checkpoint;
    ``"ema"``, the averaged weights of that checkpoint (runs with
    ``ema_decay > 0``); ``"best"``, the checkpoint with the best robust
    validation accuracy (runs with ``eval_every > 0``), in the weights that
    were scored (averaged when ``ema_decay > 0``, else raw). Default: ``"ema"``
    when the run averages weights, else ``"last"``.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; is {workdir!r} a robustjax workdir?")
    with open(path) as f:
        config = TrainConfig.from_json(json.load(f))
    which = _default_weights(config) if which is None else which
    if which not in WEIGHTS:
        raise ValueError(f"which must be one of {WEIGHTS} or None, got {which!r}")
    if which == "ema" and not config.optim.ema_decay > 0:
        raise ValueError(f"which='ema': the run in {workdir} keeps no averaged weights "
                         "(ema_decay is 0); use which='last'")
    if which == "best" and not config.evaluation.eval_every > 0:
        raise ValueError(f"which='best': the run in {workdir} was trained without periodic "
                         "validation (eval_every is 0); use which='last'")
    model = build_model(config)
    state = create_state(config, model, make_optimizer(config),
                         jnp.zeros(SAMPLE_SHAPE[config.data.dataset], jnp.float32))
    subdir = "best_checkpoint" if which == "best" else "checkpoints"
    if not os.path.isdir(os.path.join(workdir, subdir)):
        raise FileNotFoundError(f"{workdir}: no {subdir}/ to load")
    _, restored = restore_latest(workdir, _MANAGERS[subdir](workdir), state,
                                 move_damaged=False)
    if restored is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint in {subdir}/ to load")
    if which == "ema" or (which == "best" and config.optim.ema_decay > 0):
        params, stats = restored.ema_params, restored.ema_batch_stats
    else:
        params, stats = restored.params, restored.batch_stats
    # On every device of the mesh (every process), where evaluations run.
    params, stats = _mesh.replicate(_mesh.make_mesh(), (params, stats))
    fn = model_logits_fn(config, model, params, stats)
    return LoadedRun(logits_fn=jax.jit(fn), config=config,
                     params=models.param_count(params), step=int(restored.step),
                     variables=dict(params=params, batch_stats=stats), which=which)


def load_model(workdir: str, which: Optional[str] = None):
    """``logits_fn(x)`` (x NHWC in [0, 1] -> logits, eval mode) of a trained run.

    The handle that research code composes attacks with (paper Section 4
    models). ``which`` picks the weights, see :func:`load_run`: by default the
    averaged ones when the run keeps them, else the newest checkpoint's.
    """
    return load_run(workdir, which).logits_fn
