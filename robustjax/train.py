"""Adversarial training: the outer minimisation of Madry et al. (ICLR 2018), Section 2-3.

The saddle-point problem (Eq. 2.1) is min_theta E[max_{delta in S} L(theta, x + delta, y)].
By Danskin's theorem (Section 2.1 and Appendix A) the gradient of the inner
maximum is the gradient of the loss at a maximiser, so each step

1. finds adversarial examples with the attack library (PGD or FGSM), wrapped in
   ``jax.lax.stop_gradient``;
2. takes the loss on the adversarial examples only, as the paper does, and
3. applies its parameter gradient through optax.

Attack and update are one jitted function. The whole training set lives on the
device, and the batch for step ``s`` is a pure function of ``s``: the
permutation of its epoch comes from ``fold_in(data_key, epoch)``. The attack's
key is ``fold_in(key, s)``. A run resumed from a checkpoint therefore sees the
same data and the same random starts as one that was never interrupted.

:func:`train_and_evaluate` is the library entry point that the experiments
call. It writes ``config.json``, ``metrics.jsonl``, orbax checkpoints and
``results.json`` to ``workdir``, and rerunning it resumes.
:func:`load_model` turns a ``workdir`` into a ``logits_fn``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import attacks, data, evaluate, models

__all__ = ["TrainConfig", "TrainState", "create_state", "make_train_step",
           "train_and_evaluate", "load_model", "evaluate_model"]

log = logging.getLogger("robustjax")

TRAIN_ATTACKS = ("none", "fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in ``workdir/config.json``).

    Defaults are Madry's MNIST recipe (Section 4): MnistCNN(16), PGD-40 with
    step 0.01 at eps 0.3 and a random start, Adam 1e-4, batch 50, 100k steps.
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    width: int = 16
    train_attack: str = "pgd"
    eps: float = 0.3
    attack_steps: int = 40
    attack_step_size: float = 0.01
    # Linear ramp of the training eps from 0 over this many steps (0: off, the
    # paper's recipe). Small models on little data can stall at chance without it.
    eps_ramp_steps: int = 0
    lr: float = 1e-4
    # "constant" (the paper's Adam) or "cosine" (decay to 0 over `steps`).
    lr_schedule: str = "constant"
    batch_size: int = 50
    steps: int = 100_000
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_examples: int = -1  # -1: the whole test split
    eval_batch_size: int = 500
    eval_attack_steps: tuple = (40, 100)
    eval_attack_step_size: float = 0.01

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.dataset not in data.IDX_DATASETS:  # CIFAR-10 training: the CIFAR issue
            raise ValueError(f"dataset must be one of {data.IDX_DATASETS}, "
                             f"got {self.dataset!r}")
        if self.train_attack not in TRAIN_ATTACKS:
            raise ValueError(f"train_attack must be one of {TRAIN_ATTACKS}, "
                             f"got {self.train_attack!r}")
        positive = ("width", "attack_steps", "batch_size", "steps", "log_every",
                    "checkpoint_every", "eval_batch_size")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("eps", "attack_step_size", "lr", "eval_attack_step_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 or (
                    name != "eps" and v == 0):
                raise ValueError(f"{name} must be a finite number "
                                 f"{'>= 0' if name == 'eps' else '> 0'}, got {v!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', "
                             f"got {self.lr_schedule!r}")
        if self.eps_ramp_steps < 0:
            raise ValueError(f"eps_ramp_steps must be >= 0, got {self.eps_ramp_steps}")
        if self.eval_examples == 0 or self.eval_examples < -1:
            raise ValueError(f"eval_examples must be -1 (all) or positive, "
                             f"got {self.eval_examples}")
        if any(int(s) < 0 for s in self.eval_attack_steps):
            raise ValueError(f"eval_attack_steps must be >= 0, got {self.eval_attack_steps}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["eval_attack_steps"] = list(self.eval_attack_steps)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["eval_attack_steps"] = tuple(d.get("eval_attack_steps", (40, 100)))
        return cls(**d)


# Fields a rerun may change without starting a different experiment.
_RESUMABLE_CHANGES = {"steps", "log_every", "checkpoint_every", "eval_examples",
                      "eval_batch_size", "eval_attack_steps", "eval_attack_step_size",
                      "data_dir"}


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state, batch-norm statistics, step and root PRNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    key: jax.Array


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam (the paper's MNIST optimizer) with a constant or cosine-decayed learning rate."""
    if config.lr_schedule == "cosine":
        return optax.adam(optax.cosine_decay_schedule(config.lr, config.steps))
    return optax.adam(config.lr)


def build_model(config: TrainConfig) -> models.MnistCNN:
    """The network for ``config`` (MNIST-family datasets: the paper's MNIST CNN)."""
    return models.MnistCNN(width=config.width)


def create_state(config: TrainConfig, model, tx, sample: jax.Array) -> TrainState:
    """Initial state from ``config.seed``."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = model.init(init_key, sample, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      batch_stats=variables.get("batch_stats", {}), key=train_key)


def _eps_at(config: TrainConfig, step):
    if config.eps_ramp_steps == 0:
        return config.eps
    return config.eps * jnp.minimum(1.0, step / config.eps_ramp_steps)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int):
    """Indices of the batch for ``step``: epochs are key-driven permutations (Section 4 data).

    The incomplete tail of each permutation is dropped, so every batch is full.
    """
    per_epoch = num_examples // batch_size
    epoch, i = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)


def make_train_step(config: TrainConfig, model, tx):
    """``step(state, images, labels) -> (state, metrics)``: one Danskin step (Section 2.1).

    ``images`` (float32 in [0, 1]) and ``labels`` are the whole training set on
    the device. The batch is chosen inside the step.
    """
    config.validate()
    n_steps, step_size = config.attack_steps, config.attack_step_size

    def step_fn(state: TrainState, images, labels):
        data_key, attack_key_root = jax.random.split(state.key)
        idx = batch_indices(data_key, state.step, images.shape[0], config.batch_size)
        x, y = images[idx], labels[idx]
        eps = _eps_at(config, state.step)
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats

        def logits_fn(z):  # the attack sees the model in eval mode
            return model.apply(variables, z, train=False)

        key = jax.random.fold_in(attack_key_root, state.step)
        if config.train_attack == "pgd":
            x_adv = attacks.pgd(logits_fn, x, y, key, eps=eps, step_size=step_size,
                                num_steps=n_steps)
        elif config.train_attack == "fgsm":
            x_adv = attacks.fgsm(logits_fn, x, y, eps=eps)
        else:
            x_adv = x
        # Danskin: the gradient of the inner max is the loss gradient at the maximiser.
        x_adv = jax.lax.stop_gradient(x_adv)

        def loss_fn(params):
            v = dict(variables, params=params)
            if state.batch_stats:
                logits, upd = model.apply(v, x_adv, train=True, mutable=["batch_stats"])
            else:
                logits, upd = model.apply(v, x_adv, train=True), {}
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, upd)

        (loss, (adv_logits, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        nat_logits = logits_fn(x)
        metrics = dict(loss=loss, adv_acc=jnp.mean(jnp.argmax(adv_logits, -1) == y),
                       nat_acc=jnp.mean(jnp.argmax(nat_logits, -1) == y), eps=eps)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=upd.get("batch_stats", state.batch_stats))
        return new_state, metrics

    return step_fn


def _checkpoint_manager(workdir: str):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _restore(manager, state: TrainState, step: Optional[int] = None) -> TrainState:
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _load_split(config: TrainConfig, split: str):
    images, labels = data.load(config.dataset, split, config.data_dir)
    return images.astype(np.float32) / 255.0, labels


def _write_config(workdir: str, config: TrainConfig) -> bool:
    """Writes config.json, or checks a rerun against it. Returns True if it existed."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = TrainConfig.from_json(json.load(f)).to_json()
        new = config.to_json()
        diff = [k for k in new if old.get(k) != new[k] and k not in _RESUMABLE_CHANGES]
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


def evaluate_model(logits_fn, x, y, config: TrainConfig, key=None) -> list[dict]:
    """Natural, FGSM and PGD-k rows (paper Table 1 layout) at the training eps."""
    key = jax.random.PRNGKey(config.seed + 1) if key is None else key
    eps, ss = config.eps, config.eval_attack_step_size
    specs = [dict(attack="natural", steps=0, step_size=0.0, fn=None),
             dict(attack="fgsm", steps=1, step_size=eps,
                  fn=lambda x, y, k: attacks.fgsm(logits_fn, x, y, eps=eps))]
    for k in config.eval_attack_steps:
        specs.append(dict(attack="pgd", steps=int(k), step_size=ss,
                          fn=functools.partial(attacks.pgd, logits_fn, eps=eps, step_size=ss,
                                               num_steps=int(k))))
    rows = []
    for i, s in enumerate(specs):
        res = evaluate.robust_accuracy(logits_fn, x, y, s["fn"], eps=eps, norm="linf",
                                       batch_size=config.eval_batch_size,
                                       key=jax.random.fold_in(key, i))
        rows.append(dict(attack=s["attack"], norm="linf", eps=0.0 if s["fn"] is None else eps,
                         steps=s["steps"], step_size=s["step_size"], restarts=1,
                         loss="xent" if s["fn"] is not None else None, source="A",
                         accuracy=res.accuracy))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows of results.json as a markdown table (Method, Steps, Restarts, Source, Accuracy)."""
    lines = ["| Method | eps | Steps | Step size | Restarts | Source | Accuracy |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['eps']:g} | {r['steps']} | {r['step_size']:g} | "
                     f"{r['restarts']} | {r['source']} | {100 * r['accuracy']:.2f}% |")
    return "\n".join(lines)


def train_and_evaluate(config: TrainConfig, workdir: str, *,
                       stop_after: Optional[int] = None) -> Optional[dict]:
    """Trains (or resumes) and evaluates; the library entry point of the experiments.

    Writes ``workdir/config.json``, appends to ``workdir/metrics.jsonl``, keeps
    orbax checkpoints in ``workdir/checkpoints`` and writes ``workdir/results.json``.
    Returns the results dict. ``stop_after=N`` stops at step N with a
    checkpoint and no evaluation (returns None), as a preempted or time-boxed
    job would; the same call without it then resumes.
    """
    config.validate()
    os.makedirs(workdir, exist_ok=True)
    xtr, ytr = _load_split(config, "train")
    xte, yte = _load_split(config, "test")
    if config.batch_size > len(xtr):
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(xtr)} training "
                         "examples")
    _write_config(workdir, config)

    model = build_model(config)
    tx = make_optimizer(config)
    state = create_state(config, model, tx, jnp.zeros((1,) + xtr.shape[1:], jnp.float32))
    manager = _checkpoint_manager(workdir)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if manager.latest_step() is not None:
        state = _restore(manager, state)
        log.info("resumed from step %d", int(state.step))
        _truncate_metrics(metrics_path, int(state.step))
    step_fn = jax.jit(make_train_step(config, model, tx), donate_argnums=0)
    images, labels = jax.device_put(xtr), jax.device_put(ytr)

    start = int(state.step)
    pending, t_last, s_last = [], time.time(), start
    end = config.steps if stop_after is None else min(stop_after, config.steps)
    with open(metrics_path, "a") as mf:
        for s in range(start, end):
            state, m = step_fn(state, images, labels)
            pending.append(m)
            done = s + 1
            if done % config.log_every == 0 or done == config.steps:
                avg = {k: float(v) for k, v in jax.tree_util.tree_map(
                    lambda *a: jnp.mean(jnp.stack(a)), *pending).items()}
                pending = []
                now = time.time()
                ex_s = (done - s_last) * config.batch_size / max(now - t_last, 1e-9)
                eta = (config.steps - done) * config.batch_size / max(ex_s, 1e-9)
                rec = dict(step=done, **avg, examples_per_s=ex_s, eta_s=eta, time=now)
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                log.info("step %d/%d  loss %.4f  nat_acc %.3f  adv_acc %.3f  eps %.3f  "
                         "%.0f ex/s  ETA %s", done, config.steps, avg["loss"], avg["nat_acc"],
                         avg["adv_acc"], avg["eps"], ex_s, _fmt_time(eta))
                t_last, s_last = now, done
            if done % config.checkpoint_every == 0 or done in (config.steps, end):
                import orbax.checkpoint as ocp
                manager.save(done, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    if end < config.steps:
        log.info("stopped at step %d of %d (stop_after)", end, config.steps)
        return None

    n = len(xte) if config.eval_examples == -1 else min(config.eval_examples, len(xte))
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    logits_fn = jax.jit(lambda z: model.apply(variables, z, train=False))
    rows = evaluate_model(logits_fn, xte[:n], yte[:n], config)
    results = dict(dataset=config.dataset, split="test", n=int(n),
                   model=dict(arch="MnistCNN", width=config.width,
                              params=models.param_count(state.params)),
                   training=dict(config.to_json(), final_step=int(state.step)), rows=rows)
    with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=1)
    os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
    print(markdown_table(rows))
    return results


def load_model(workdir: str):
    """``logits_fn(x)`` (x NHWC in [0, 1] -> logits, eval mode) of the last checkpoint in ``workdir``.

    The handle that research code composes attacks with (paper Section 4 models).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; is {workdir!r} a robustjax workdir?")
    with open(path) as f:
        config = TrainConfig.from_json(json.load(f))
    model = build_model(config)
    tx = make_optimizer(config)
    shape = (1, 28, 28, 1)
    state = create_state(config, model, tx, jnp.zeros(shape, jnp.float32))
    manager = _checkpoint_manager(workdir)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint to load")
    state = _restore(manager, state)
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return jax.jit(lambda x: model.apply(variables, x, train=False))


def _truncate_metrics(path: str, step: int) -> None:
    """Drops records logged after the checkpoint a run resumes from (they are redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
