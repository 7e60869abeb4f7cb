"""The configuration of a training run: :class:`TrainConfig`, its validation and JSON form.

Every field is defined once, here, with its default and a help string kept
beside it (``dataclasses.field`` metadata). The command-line flags of the
experiments are generated from these fields (``experiments.common``), and the
run directory records the configuration as ``config.json``
(:mod:`robustjax.training.workdir`).

Defaults are Madry et al.'s MNIST recipe (ICLR 2018, Section 4): MnistCNN(16),
PGD-40 with step 0.01 at eps 0.3 and a random start, Adam 1e-4, batch 50, 100k
steps. The CIFAR-10 entry points change the defaults to its recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from robustjax.data import datasets as data

__all__ = ["TrainConfig", "TRAIN_ATTACKS", "CERTIFIED_OBJECTIVES", "ARCHS", "TRAIN_NORMS", "OBJECTIVES", "OPTIMIZERS",
           "LR_SCHEDULES",
           "BN_ATTACK_MODES", "COMPUTE_DTYPES", "RESUMABLE_CHANGES", "field_help"]

TRAIN_ATTACKS = ("none", "fgsm", "fgsm_rs", "pgd")
TRAIN_NORMS = ("linf", "l2", "l1")
OBJECTIVES = ("madry", "trades", "ibp", "crown_ibp")
CERTIFIED_OBJECTIVES = ("ibp", "crown_ibp")
ARCHS = ("madry", "dm_small", "dm_medium", "dm_large")
OPTIMIZERS = ("adam", "momentum")
LR_SCHEDULES = ("constant", "cosine", "piecewise")
BN_ATTACK_MODES = ("eval", "train", "madry")
COMPUTE_DTYPES = ("float32", "bfloat16")

# Fields a rerun may change without starting a different experiment.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "checkpoint_every", "steps_per_call",
                               "eval_examples",
                               "eval_batch_size", "eval_attack_steps", "eval_attack_step_size",
                               "data_dir"})


def _field(default, help: str, *, choices=None, minimum=None):
    """A config field with its help string, and the range a flag validator checks."""
    meta = dict(help=help, choices=choices, minimum=minimum)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in ``workdir/config.json``)."""

    dataset: str = _field("mnist", "Dataset.", choices=data.DATASETS)
    data_dir: Optional[str] = _field(
        None, "Directory with the dataset's files (MNIST: the official IDX .gz files); "
        "empty: TensorFlow Datasets.")
    width: int = _field(16, "Network width: MnistCNN(w) (16: Madry's network) or "
                        "CifarResNet(w) (10: WRN-34-10).", minimum=1)
    arch: str = _field(
        "madry", "Architecture: 'madry' (the paper's: MnistCNN(width) for digits, "
        "CifarResNet(width) for CIFAR-10) or Gowal et al. 2018's verifiable-training CNNs "
        "'dm_small', 'dm_medium', 'dm_large' (strided convolutions, no pooling; width unused).",
        choices=ARCHS)
    train_attack: str = _field(
        "pgd", "Adversary used for training: 'pgd' (the paper), 'fgsm', 'fgsm_rs' (Fast AT, "
        "Wong et al. 2020: FGSM of step 1.25 eps from a uniform random start) or 'none' "
        "(natural training).", choices=TRAIN_ATTACKS)
    objective: str = _field(
        "madry", "Training loss: 'madry' (cross-entropy at the adversarial point, the paper's "
        "Eq. 2.1) or 'trades' (Zhang et al. 2019: clean cross-entropy + trades_beta * "
        "KL(p(x) || p(x')), x' from PGD on the KL; needs train_attack 'pgd'), or certified "
        "training (L-inf, no batch norm; train_attack unused): 'ibp' (Gowal et al. 2018: "
        "kappa * CE(clean) + (1 - kappa) * CE(worst-case logits from interval bounds)) or "
        "'crown_ibp' (Zhang et al. 2020: the worst case from beta * CROWN-IBP + (1 - beta) * "
        "IBP margin bounds). kappa and beta ramp with eps; adv_acc in the progress lines is "
        "then the batch's certified accuracy.",
        choices=OBJECTIVES)
    kappa_start: float = _field(1.0, "Certified objectives: weight kappa of the clean loss at "
                                "the start of the eps ramp (Gowal et al.: 1).", minimum=0.0)
    kappa_end: float = _field(0.5, "Certified objectives: kappa after the ramp (Gowal et al.: "
                              "0.5; CROWN-IBP: 0 to 0.5).", minimum=0.0)
    crown_beta_start: float = _field(1.0, "crown_ibp: beta (weight of the CROWN-IBP bound) at "
                                     "the start of the eps ramp (Zhang et al.: 1).",
                                     minimum=0.0)
    crown_beta_end: float = _field(0.0, "crown_ibp: beta after the ramp (Zhang et al.: 0).",
                                   minimum=0.0)
    trades_beta: float = _field(6.0, "TRADES: weight beta of the KL term (the paper: 6).",
                                minimum=0.0)
    eps: float = _field(0.3, "Radius of the train_norm ball, for training and evaluation.",
                        minimum=0.0)
    train_norm: str = _field(
        "linf", "Threat model of training and of the run's evaluations: 'linf' (the paper), "
        "'l2' or 'l1' (the exact projection onto the L1 ball and the box; set "
        "attack_step_size to an L1 step length, e.g. 2.5 * eps / attack_steps). 'l2' and "
        "'l1' train with PGD (or TRADES' PGD); FGSM and Fast AT are L-inf only.",
        choices=TRAIN_NORMS)
    attack_steps: int = _field(40, "PGD steps during training.", minimum=1)
    attack_step_size: float = _field(0.01, "PGD step size during training.", minimum=0.0)
    train_eps: float = _field(
        -1.0, "Training radius if different from eps (-1: eps). Certified training trains at a "
        "larger radius than it certifies (Gowal et al.: 0.4 for 0.3 on MNIST).")
    eps_ramp_start: int = _field(
        0, "Steps at eps 0 (natural training) before the eps ramp starts (Gowal et al.'s "
        "warm-up).", minimum=0)
    eps_ramp_steps: int = _field(
        0, "Ramp the training eps linearly from 0 over this many steps (0: off, the paper's "
        "recipe; small models on little data can stall at chance without it).", minimum=0)
    augment_pad: int = _field(
        0, "Training augmentation: random crop after zero padding by this many pixels "
        "(0: off, the paper's MNIST recipe; its CIFAR-10 recipe: 4).", minimum=0)
    augment_flip: bool = _field(False, "Training augmentation: random horizontal flips "
                                "(CIFAR-10; not for digits).")
    optimizer: str = _field("adam", "'adam' (the paper's MNIST optimizer) or 'momentum' SGD "
                            "(its CIFAR-10 one).", choices=OPTIMIZERS)
    momentum: float = _field(0.9, "Momentum of --optimizer=momentum.", minimum=0.0)
    lr: float = _field(1e-4, "Learning rate.", minimum=0.0)
    lr_schedule: str = _field(
        "constant", "Learning-rate schedule: 'constant' (the paper's Adam), 'cosine' (decay "
        "to 0 over --steps) or 'piecewise' (times 0.1 at each --lr_boundaries; CIFAR-10: "
        "40k and 60k).", choices=LR_SCHEDULES)
    lr_boundaries: tuple = _field((), "Steps at which 'piecewise' multiplies the lr by 0.1.")
    weight_decay: float = _field(
        0.0, "L2 penalty on convolution and dense kernels only, added to the gradient as "
        "Madry's cifar10_challenge does (CIFAR-10: 2e-4).", minimum=0.0)
    bn_attack_mode: str = _field(
        "eval", "Batch norm during the training attack: running averages ('eval'), the "
        "batch's statistics without updating them ('train'), or train mode updating them on "
        "every attack pass ('madry', Madry's TF code; PGD training only).",
        choices=BN_ATTACK_MODES)
    ema_decay: float = _field(
        0.0, "Exponential moving average of the parameters and batch-norm statistics, "
        "avg <- decay * avg + (1 - decay) * new after every step (for example 0.995; 0: off). "
        "load_model returns the averaged weights when present.", minimum=0.0)
    eval_every: int = _field(
        0, "Steps between evaluations on the validation split (0: off): clean, FGSM and "
        "APGD-CE accuracy of the raw and averaged weights, to eval.jsonl; the checkpoint with "
        "the best robust validation accuracy is kept in best_checkpoint/ (Rice et al. 2020).",
        minimum=0)
    val_examples: int = _field(
        1000, "Validation split: the last N training examples, held out of training when "
        "eval_every > 0 (never the test set).", minimum=1)
    val_attack_steps: int = _field(
        20, "APGD-CE iterations of the periodic validation (fixed key).", minimum=1)
    compute_dtype: str = _field(
        "float32", "Forward/backward precision (parameters, optimizer state and the attack's "
        "projection stay float32).", choices=COMPUTE_DTYPES)
    batch_size: int = _field(50, "Batch size.", minimum=1)
    steps: int = _field(100_000, "Training steps.", minimum=1)
    seed: int = _field(0, "Seed (initialisation, data order, attack starts).")
    log_every: int = _field(100, "Steps between progress lines.", minimum=1)
    steps_per_call: int = _field(
        1, "Training steps per jitted call (a lax.scan over steps, metrics kept on the "
        "device): fewer Python dispatches for small steps on accelerators. The results do "
        "not depend on it; calls stop at log, checkpoint and end steps.", minimum=1)
    checkpoint_every: int = _field(1000, "Steps between checkpoints.", minimum=1)
    eval_examples: int = _field(-1, "Test examples to evaluate (-1: all).", minimum=-1)
    eval_batch_size: int = _field(
        500, "Evaluation batch size (also of the periodic validation, whose batch i "
        "attacks with a key fixed by i).", minimum=1)
    eval_attack_steps: tuple = _field((40, 100), "PGD steps of the evaluation rows.")
    eval_attack_step_size: float = _field(
        0.01, "PGD step size of the evaluation rows (the paper: 0.01 at eps 0.3); with "
        "train_norm 'l2' or 'l1' the rows use 2.5 * eps / steps (Madry et al.'s rule).",
        minimum=0.0)

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {tuple(choices)}, "
                                 f"got {getattr(self, f.name)!r}")
        b = list(self.lr_boundaries)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b) or (
                b != sorted(set(b))):
            raise ValueError(f"lr_boundaries must be increasing positive step counts, "
                             f"got {self.lr_boundaries!r}")
        if self.lr_schedule == "piecewise" and not b:
            raise ValueError("lr_schedule 'piecewise' needs lr_boundaries")
        for name in ("weight_decay", "momentum"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        positive = ("width", "attack_steps", "batch_size", "steps", "log_every",
                    "checkpoint_every", "steps_per_call", "eval_batch_size", "val_examples",
                    "val_attack_steps")
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
        if isinstance(self.augment_pad, bool) or not isinstance(self.augment_pad, int) or (
                self.augment_pad < 0):
            raise ValueError(f"augment_pad must be an integer >= 0, got {self.augment_pad!r}")
        if not isinstance(self.augment_flip, bool):
            raise ValueError(f"augment_flip must be a bool, got {self.augment_flip!r}")
        if self.bn_attack_mode == "madry" and (self.train_attack != "pgd" or
                                               self.objective != "madry"):
            raise ValueError("bn_attack_mode 'madry' is defined for train_attack 'pgd' with "
                             "objective 'madry' only")
        if self.train_norm != "linf" and self.train_attack in ("fgsm", "fgsm_rs"):
            raise ValueError(f"train_attack {self.train_attack!r} is an L-inf attack; "
                             f"train_norm {self.train_norm!r} needs train_attack 'pgd'")
        if self.objective == "trades" and self.train_attack != "pgd":
            raise ValueError(f"objective 'trades' maximises its KL term by PGD: it needs "
                             f"train_attack 'pgd', got {self.train_attack!r}")
        for name in ("trades_beta",):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.ema_decay, (int, float)) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay!r}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or (
                self.eval_every < 0):
            raise ValueError(f"eval_every must be an integer >= 0 (0: off), "
                             f"got {self.eval_every!r}")
        for name in ("kappa_start", "kappa_end", "crown_beta_start", "crown_beta_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        if not isinstance(self.train_eps, (int, float)) or not np.isfinite(self.train_eps) or (
                self.train_eps < 0 and self.train_eps != -1):
            raise ValueError(f"train_eps must be a finite number >= 0, or -1 (eps), "
                             f"got {self.train_eps!r}")
        if isinstance(self.eps_ramp_start, bool) or not isinstance(self.eps_ramp_start, int) or (
                self.eps_ramp_start < 0):
            raise ValueError(f"eps_ramp_start must be an integer >= 0, "
                             f"got {self.eps_ramp_start!r}")
        if self.objective in CERTIFIED_OBJECTIVES and self.train_norm != "linf":
            raise ValueError(f"objective {self.objective!r} certifies the L-inf ball only; "
                             f"got train_norm {self.train_norm!r}")
        if self.objective in CERTIFIED_OBJECTIVES and self.compute_dtype != "float32":
            raise ValueError(f"objective {self.objective!r} bounds the network in float32: "
                             f"compute_dtype must be 'float32', got {self.compute_dtype!r}")
        if self.objective in CERTIFIED_OBJECTIVES and self.dataset == "cifar10" and (
                self.arch == "madry"):
            raise ValueError(f"objective {self.objective!r} needs a network without batch "
                             f"norm: set arch to 'dm_small', 'dm_medium' or 'dm_large'")
        if self.eps_ramp_steps < 0:
            raise ValueError(f"eps_ramp_steps must be >= 0, got {self.eps_ramp_steps}")
        if self.eval_examples == 0 or self.eval_examples < -1:
            raise ValueError(f"eval_examples must be -1 (all) or positive, "
                             f"got {self.eval_examples}")
        if any(int(s) < 0 for s in self.eval_attack_steps):
            raise ValueError(f"eval_attack_steps must be >= 0, got {self.eval_attack_steps}")

    def unused_fields(self) -> frozenset:
        """Fields that this run's objective and training attack never read.

        Certified objectives bound the whole ball (no training attack, no TRADES
        beta); only they read kappa, and only CROWN-IBP reads beta; natural
        training (train_attack 'none') takes no attack steps.
        """
        unused = set()
        if self.objective in CERTIFIED_OBJECTIVES:
            unused |= {"train_attack", "attack_steps", "attack_step_size", "bn_attack_mode",
                       "trades_beta"}
            if self.objective != "crown_ibp":
                unused |= {"crown_beta_start", "crown_beta_end"}
        else:
            unused |= {"kappa_start", "kappa_end", "crown_beta_start", "crown_beta_end"}
            if self.objective != "trades":
                unused.add("trades_beta")
            if self.train_attack == "none":
                unused |= {"attack_steps", "attack_step_size", "bn_attack_mode"}
        return frozenset(unused)

    def to_json(self) -> dict:
        """The fields this run reads (:meth:`unused_fields` left out; ``from_json`` fills
        them with their defaults)."""
        d = dataclasses.asdict(self)
        d["eval_attack_steps"] = list(self.eval_attack_steps)
        d["lr_boundaries"] = list(self.lr_boundaries)
        for name in self.unused_fields():
            d.pop(name)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["eval_attack_steps"] = tuple(d.get("eval_attack_steps", (40, 100)))
        d["lr_boundaries"] = tuple(d.get("lr_boundaries", ()))
        return cls(**d)


def field_help(name: str) -> str:
    """The help string of a :class:`TrainConfig` field."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}[name]
