"""The sections of a training run's configuration, field by field (see
:mod:`robustjax.training.config`): each field's default, help string and range, and
:func:`check_field`, which enforces them.

Defaults are Madry et al.'s MNIST recipe (ICLR 2018, Section 4).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from robustjax.data import datasets as data

__all__ = ["DataConfig", "ModelConfig", "ThreatConfig", "LossConfig", "OptimConfig",
           "EvalConfig", "RunConfig", "check_field", "TRAIN_ATTACKS", "CERTIFIED_OBJECTIVES",
           "ARCHS", "TRAIN_NORMS", "OBJECTIVES", "NOISE_OBJECTIVES", "OPTIMIZERS", "LR_SCHEDULES",
           "BN_ATTACK_MODES", "COMPUTE_DTYPES"]

TRAIN_ATTACKS = ("none", "fgsm", "fgsm_rs", "pgd")
TRAIN_NORMS = ("linf", "l2", "l1")
OBJECTIVES = ("madry", "trades", "ibp", "crown_ibp", "gaussian", "smoothadv")
NOISE_OBJECTIVES = ("gaussian", "smoothadv")
CERTIFIED_OBJECTIVES = ("ibp", "crown_ibp")
ARCHS = ("madry", "dm_small", "dm_medium", "dm_large")
OPTIMIZERS = ("adam", "momentum")
LR_SCHEDULES = ("constant", "cosine", "piecewise")
BN_ATTACK_MODES = ("eval", "train", "madry")
COMPUTE_DTYPES = ("float32", "bfloat16")


def _field(default, help: str, *, choices=None, minimum=None, maximum=None, below=None,
           positive=False):
    """A config field with its help string and the range :func:`check_field` enforces
    (``minimum``/``maximum`` inclusive, ``below`` exclusive, ``positive``: > 0)."""
    meta = dict(help=help, choices=choices, minimum=minimum, maximum=maximum, below=below,
                positive=positive)
    return dataclasses.field(default=default, metadata=meta)


def check_field(f: dataclasses.Field, value) -> None:
    """Raises ValueError naming field ``f`` when ``value`` is outside its type or range."""
    meta, kind = f.metadata, f.type
    if meta.get("choices"):
        if value not in meta["choices"]:
            raise ValueError(f"{f.name} must be one of {tuple(meta['choices'])}, got {value!r}")
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{f.name} must be a bool, got {value!r}")
        return
    if kind in ("int", "float"):
        ok_type = (isinstance(value, (int, float)) if kind == "float" else
                   isinstance(value, int)) and not isinstance(value, bool)
        what = "an integer" if kind == "int" else "a finite number"
        if not ok_type or not np.isfinite(value):
            raise ValueError(f"{f.name} must be {what}, got {value!r}")
        lo, hi, below = meta.get("minimum"), meta.get("maximum"), meta.get("below")
        if meta.get("positive") and not value > 0:
            raise ValueError(f"{f.name} must be {what} > 0, got {value!r}")
        if hi is not None and not lo <= value <= hi:
            raise ValueError(f"{f.name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        if below is not None and not lo <= value < below:
            raise ValueError(f"{f.name} must be a number in [{lo:g}, {below:g}), got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"{f.name} must be {what} >= {lo:g}, got {value!r}")


class _Section:
    """What every section shares: its fields checked one by one."""

    def validate(self) -> None:
        """Raises ValueError naming the first field outside its type or range."""
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset and the training augmentation."""

    dataset: str = _field("mnist", "Dataset.", choices=data.DATASETS)
    data_dir: Optional[str] = _field(
        None, "Directory with the dataset's files (MNIST: the official IDX .gz files); "
        "empty: TensorFlow Datasets.")
    augment_pad: int = _field(
        0, "Training augmentation: random crop after zero padding by this many pixels "
        "(0: off, the paper's MNIST recipe; its CIFAR-10 recipe: 4).", minimum=0)
    augment_flip: bool = _field(False, "Training augmentation: random horizontal flips "
                                "(CIFAR-10; not for digits).")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The network and the precision it computes in."""

    arch: str = _field(
        "madry", "Architecture: 'madry' (the paper's: MnistCNN(width) for digits, "
        "CifarResNet(width) for CIFAR-10) or Gowal et al. 2018's verifiable-training CNNs "
        "'dm_small', 'dm_medium', 'dm_large' (strided convolutions, no pooling; width unused).",
        choices=ARCHS)
    width: int = _field(16, "Network width: MnistCNN(w) (16: Madry's network) or "
                        "CifarResNet(w) (10: WRN-34-10).", minimum=1)
    compute_dtype: str = _field(
        "float32", "Forward/backward precision (parameters, optimizer state and the attack's "
        "projection stay float32).", choices=COMPUTE_DTYPES)


@dataclasses.dataclass(frozen=True)
class ThreatConfig(_Section):
    """The threat model (the eps-ball) and the training attack, the inner maximisation."""

    eps: float = _field(0.3, "Radius of the train_norm ball, for training and evaluation.",
                        minimum=0.0)
    train_norm: str = _field(
        "linf", "Threat model of training and of the run's evaluations: 'linf' (the paper), "
        "'l2' or 'l1' (the exact projection onto the L1 ball and the box; set "
        "attack_step_size to an L1 step length, e.g. 2.5 * eps / attack_steps). 'l2' and "
        "'l1' train with PGD (or TRADES' PGD); FGSM and Fast AT are L-inf only.",
        choices=TRAIN_NORMS)
    train_eps: float = _field(
        -1.0, "Training radius if different from eps (-1: eps). Certified training trains at a "
        "larger radius than it certifies (Gowal et al.: 0.4 for 0.3 on MNIST).")
    eps_ramp_start: int = _field(
        0, "Steps at eps 0 (natural training) before the eps ramp starts (Gowal et al.'s "
        "warm-up).", minimum=0)
    eps_ramp_steps: int = _field(
        0, "Ramp the training eps linearly from 0 over this many steps (0: off, the paper's "
        "recipe; small models on little data can stall at chance without it).", minimum=0)
    train_attack: str = _field(
        "pgd", "Adversary used for training: 'pgd' (the paper), 'fgsm', 'fgsm_rs' (Fast AT, "
        "Wong et al. 2020: FGSM of step 1.25 eps from a uniform random start) or 'none' "
        "(natural training).", choices=TRAIN_ATTACKS)
    attack_steps: int = _field(40, "PGD steps during training.", minimum=1)
    attack_step_size: float = _field(0.01, "PGD step size during training.", minimum=0.0,
                                     positive=True)
    bn_attack_mode: str = _field(
        "eval", "Batch norm during the training attack: running averages ('eval'), the "
        "batch's statistics without updating them ('train'), or train mode updating them on "
        "every attack pass ('madry', Madry's TF code; PGD training only).",
        choices=BN_ATTACK_MODES)


@dataclasses.dataclass(frozen=True)
class LossConfig(_Section):
    """The training objective: Madry, TRADES or a certified loss, and its weights."""

    objective: str = _field(
        "madry", "Training loss: 'madry' (cross-entropy at the adversarial point, the paper's "
        "Eq. 2.1) or 'trades' (Zhang et al. 2019: clean cross-entropy + trades_beta * "
        "KL(p(x) || p(x')), x' from PGD on the KL; needs train_attack 'pgd'), or certified "
        "training (L-inf, no batch norm; train_attack unused): 'ibp' (Gowal et al. 2018: "
        "kappa * CE(clean) + (1 - kappa) * CE(worst-case logits from interval bounds)) or "
        "'crown_ibp' (Zhang et al. 2020: the worst case from beta * CROWN-IBP + (1 - beta) * "
        "IBP margin bounds). kappa and beta ramp with eps; adv_acc in the progress lines is "
        "then the batch's certified accuracy. For randomized smoothing: 'gaussian' (Cohen et "
        "al. 2019: cross-entropy at x + N(0, noise_sigma^2 I); no attack) or 'smoothadv' "
        "(Salman et al. 2019: L2 PGD of attack_steps on the soft smoothed classifier with "
        "smoothadv_samples noise draws, then cross-entropy at each noisy adversarial copy; "
        "train_norm 'l2'); adv_acc is then the accuracy under that noise.",
        choices=OBJECTIVES)
    trades_beta: float = _field(6.0, "TRADES: weight beta of the KL term (the paper: 6).",
                                minimum=0.0)
    kappa_start: float = _field(1.0, "Certified objectives: weight kappa of the clean loss at "
                                "the start of the eps ramp (Gowal et al.: 1).", minimum=0.0,
                                maximum=1.0)
    kappa_end: float = _field(0.5, "Certified objectives: kappa after the ramp (Gowal et al.: "
                              "0.5; CROWN-IBP: 0 to 0.5).", minimum=0.0, maximum=1.0)
    crown_beta_start: float = _field(1.0, "crown_ibp: beta (weight of the CROWN-IBP bound) at "
                                     "the start of the eps ramp (Zhang et al.: 1).",
                                     minimum=0.0, maximum=1.0)
    noise_sigma: float = _field(0.25, "gaussian / smoothadv: the noise's standard deviation "
                                "sigma (Cohen et al.: 0.12, 0.25, 0.5, 1.0).", minimum=0.0,
                                positive=True)
    smoothadv_samples: int = _field(1, "smoothadv: noise draws m per example in the attack "
                                    "and the loss (Salman et al.: 1, 2, 4, 8).", minimum=1)
    crown_beta_end: float = _field(0.0, "crown_ibp: beta after the ramp (Zhang et al.: 0).",
                                   minimum=0.0, maximum=1.0)


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Section):
    """The outer minimisation: optimiser, learning rate, weight decay, averaging."""

    optimizer: str = _field("adam", "'adam' (the paper's MNIST optimizer) or 'momentum' SGD "
                            "(its CIFAR-10 one).", choices=OPTIMIZERS)
    lr: float = _field(1e-4, "Learning rate.", minimum=0.0, positive=True)
    lr_schedule: str = _field(
        "constant", "Learning-rate schedule: 'constant' (the paper's Adam), 'cosine' (decay "
        "to 0 over --steps) or 'piecewise' (times 0.1 at each --lr_boundaries; CIFAR-10: "
        "40k and 60k).", choices=LR_SCHEDULES)
    lr_boundaries: tuple = _field((), "Steps at which 'piecewise' multiplies the lr by 0.1.")
    momentum: float = _field(0.9, "Momentum of --optimizer=momentum.", minimum=0.0)
    weight_decay: float = _field(
        0.0, "L2 penalty on convolution and dense kernels only, added to the gradient as "
        "Madry's cifar10_challenge does (CIFAR-10: 2e-4).", minimum=0.0)
    ema_decay: float = _field(
        0.0, "Exponential moving average of the parameters and batch-norm statistics, "
        "avg <- decay * avg + (1 - decay) * new after every step (for example 0.995; 0: off). "
        "load_model returns the averaged weights when present.", minimum=0.0, below=1.0)


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Periodic validation during training and the end-of-run evaluation."""

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
    eval_examples: int = _field(-1, "Test examples to evaluate (-1: all).", minimum=-1)
    eval_batch_size: int = _field(
        500, "Evaluation batch size (also of the periodic validation, whose batch i "
        "attacks with a key fixed by i).", minimum=1)
    eval_attack_steps: tuple = _field((40, 100), "PGD steps of the evaluation rows.")
    eval_attack_step_size: float = _field(
        0.01, "PGD step size of the evaluation rows (the paper: 0.01 at eps 0.3); with "
        "train_norm 'l2' or 'l1' the rows use 2.5 * eps / steps (Madry et al.'s rule).",
        minimum=0.0, positive=True)


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """The run itself: batch size, length, seed, logging, checkpoints."""

    batch_size: int = _field(50, "Batch size.", minimum=1)
    steps: int = _field(100_000, "Training steps.", minimum=1)
    seed: int = _field(0, "Seed (initialisation, data order, attack starts).")
    log_every: int = _field(100, "Steps between progress lines.", minimum=1)
    steps_per_call: int = _field(
        1, "Training steps per jitted call (a lax.scan over steps, metrics kept on the "
        "device): fewer Python dispatches for small steps on accelerators. The results do "
        "not depend on it; calls stop at log, checkpoint and end steps.", minimum=1)
    checkpoint_every: int = _field(1000, "Steps between checkpoints.", minimum=1)
