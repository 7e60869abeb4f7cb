"""The configuration of a training run: :class:`TrainConfig` in sections, checked, as JSON.

A run's settings come in seven sections, each a frozen dataclass read by the module that
owns the concern (in the style of DeepMind's and big_vision's experiment configs):

==============  ===========================================  ============================
section         what                                         read by
==============  ===========================================  ============================
``data``        dataset, files, augmentation                 loop, step (augment)
``model``       architecture, width, compute precision       state, workdir
``threat``      eps-ball, norm, the training attack          step, loop (evaluation rows)
``loss``        Madry / TRADES / IBP / CROWN-IBP weights     step
``optim``       optimiser, learning rate, decay, EMA         state
``evaluation``  periodic validation, end-of-run evaluation   validation, loop
``run``         batch, steps, seed, logging, checkpoints     loop, step
==============  ===========================================  ============================

Every field is defined once, here, with its default and help string beside it
(``dataclasses.field`` metadata). Field names are unique across sections, so each is
also a flat name: the experiments' command-line flags (``--steps``, ``--eps``...,
``experiments.common``) are generated from them, ``TrainConfig(steps=10, eps=0.1)``
builds a config from them, and ``config.json`` files of the flat format (robustjax 0.1)
still load. The run directory records the configuration as ``config.json`` in sections
(:mod:`robustjax.training.workdir`).

Defaults are Madry et al.'s MNIST recipe (ICLR 2018, Section 4): MnistCNN(16),
PGD-40 with step 0.01 at eps 0.3 and a random start, Adam 1e-4, batch 50, 100k
steps. The CIFAR-10 entry points change the defaults to its recipe.
"""

from __future__ import annotations

import dataclasses
import warnings

from robustjax.training.sections import (  # noqa: F401  (their names, importable from here)
    ARCHS, BN_ATTACK_MODES, CERTIFIED_OBJECTIVES, COMPUTE_DTYPES, LR_SCHEDULES,
    NOISE_OBJECTIVES, OBJECTIVES,
    OPTIMIZERS, TRAIN_ATTACKS, TRAIN_NORMS, DataConfig, EvalConfig, LossConfig, ModelConfig,
    OptimConfig, RunConfig, ThreatConfig, check_field)

__all__ = ["TrainConfig", "DataConfig", "ModelConfig", "ThreatConfig", "LossConfig",
           "OptimConfig", "EvalConfig", "RunConfig", "SECTIONS", "TRAIN_ATTACKS",
           "CERTIFIED_OBJECTIVES", "NOISE_OBJECTIVES", "ARCHS", "TRAIN_NORMS", "OBJECTIVES",
           "OPTIMIZERS", "LR_SCHEDULES", "BN_ATTACK_MODES", "COMPUTE_DTYPES", "RESUMABLE_CHANGES",
           "field_help", "check_field"]

# Fields a rerun may change without starting a different experiment.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "checkpoint_every", "steps_per_call",
                               "eval_examples",
                               "eval_batch_size", "eval_attack_steps", "eval_attack_step_size",
                               "data_dir"})


SECTIONS = {"data": DataConfig, "model": ModelConfig, "threat": ThreatConfig,
            "loss": LossConfig, "optim": OptimConfig, "evaluation": EvalConfig,
            "run": RunConfig}
"""Section name -> its dataclass, in the order of ``config.json``."""
_SECTION_OF = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
_deprecated_reads: set = set()


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything that defines a training run (recorded in ``workdir/config.json``); the
    defaults are Madry et al.'s MNIST recipe (ICLR 2018, Section 4).

    ``TrainConfig(steps=10, eps=0.1)`` takes fields by their (unique) names,
    ``TrainConfig(run=RunConfig(steps=10))`` takes whole sections, and both mix
    (``dataclasses.replace(config, steps=20)`` works too). Read a field through its
    section: ``config.run.steps``, ``config.threat.eps``.
    """

    data: DataConfig
    model: ModelConfig
    threat: ThreatConfig
    loss: LossConfig
    optim: OptimConfig
    evaluation: EvalConfig
    run: RunConfig

    def __init__(self, data=None, model=None, threat=None, loss=None, optim=None,
                 evaluation=None, run=None, **fields):
        given = dict(data=data, model=model, threat=threat, loss=loss, optim=optim,
                     evaluation=evaluation, run=run)
        unknown = sorted(set(fields) - set(_SECTION_OF))
        if unknown:
            raise TypeError(f"TrainConfig has no field {unknown[0]!r} (fields: "
                            f"{', '.join(sorted(_SECTION_OF))})")
        for name, cls in SECTIONS.items():
            section = given[name] if given[name] is not None else cls()
            if not isinstance(section, cls):
                raise TypeError(f"TrainConfig section {name!r} must be a {cls.__name__}, "
                                f"got {type(section).__name__}")
            mine = {k: v for k, v in fields.items() if _SECTION_OF[k] == name}
            object.__setattr__(self, name, dataclasses.replace(section, **mine))

    def __getattr__(self, name):
        # Flat reads (config.steps) of robustjax 0.1: warned once, then answered.
        section = _SECTION_OF.get(name)
        if section is None:
            raise AttributeError(f"TrainConfig has no attribute {name!r}")
        if name not in _deprecated_reads:
            _deprecated_reads.add(name)
            warnings.warn(f"TrainConfig.{name} is read through its section: "
                          f"config.{section}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(getattr(self, section), name)

    @staticmethod
    def fields() -> list:
        """Every field as ``(section name, dataclasses.Field)``, in section order."""
        return [(name, f) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]

    def flat(self) -> dict:
        """``{field name: value}`` over every section."""
        return {f.name: getattr(getattr(self, s), f.name) for s, f in self.fields()}

    def validate(self) -> None:
        """Raises ValueError naming the first bad field, or the two that conflict."""
        for name in SECTIONS:
            getattr(self, name).validate()
        _check_lists(self)
        _check_combinations(self)

    def unused_fields(self) -> frozenset:
        """Fields that this run's objective and training attack never read.

        Certified objectives bound the whole ball (no training attack, no TRADES
        beta); only they read kappa, and only CROWN-IBP reads beta; natural
        training (train_attack 'none') takes no attack steps. The noise objectives read
        noise_sigma (and SmoothAdv its sample count and attack steps); the 'gaussian' one
        takes no attack.
        """
        unused = set()
        objective, attack = self.loss.objective, self.threat.train_attack
        if objective not in NOISE_OBJECTIVES:
            unused |= {"noise_sigma", "smoothadv_samples"}
        elif objective == "gaussian":
            unused |= {"smoothadv_samples", "train_attack", "attack_steps", "attack_step_size",
                       "bn_attack_mode"}
        else:
            unused.add("train_attack")
        if objective in CERTIFIED_OBJECTIVES:
            unused |= {"train_attack", "attack_steps", "attack_step_size", "bn_attack_mode",
                       "trades_beta"}
            if objective != "crown_ibp":
                unused |= {"crown_beta_start", "crown_beta_end"}
        else:
            unused |= {"kappa_start", "kappa_end", "crown_beta_start", "crown_beta_end"}
            if objective != "trades":
                unused.add("trades_beta")
            if attack == "none" and objective != "smoothadv":
                unused |= {"attack_steps", "attack_step_size", "bn_attack_mode"}
        return frozenset(unused)

    def to_flat_json(self) -> dict:
        """The fields this run reads, flat (:meth:`unused_fields` left out; lists for tuples)."""
        unused = self.unused_fields()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.flat().items()
                if k not in unused}

    def to_json(self) -> dict:
        """``{section: {field: value}}`` of the fields this run reads (``from_json`` fills the
        others with their defaults)."""
        out = {name: {} for name in SECTIONS}
        for k, v in self.to_flat_json().items():
            out[_SECTION_OF[k]][k] = v
        return out

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        """A config from :meth:`to_json`'s sections, or from the flat form of robustjax 0.1."""
        d = dict(d)
        if set(d) <= set(SECTIONS) and all(isinstance(v, dict) for v in d.values()):
            d = {k: v for section in d.values() for k, v in section.items()}
        for name in ("eval_attack_steps", "lr_boundaries"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


def _check_lists(config: TrainConfig) -> None:
    b = list(config.optim.lr_boundaries)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b) or (
            b != sorted(set(b))):
        raise ValueError(f"lr_boundaries must be increasing positive step counts, "
                         f"got {config.optim.lr_boundaries!r}")
    if config.optim.lr_schedule == "piecewise" and not b:
        raise ValueError("lr_schedule 'piecewise' needs lr_boundaries")
    steps = config.evaluation.eval_attack_steps
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
        raise ValueError(f"eval_attack_steps must be integers >= 0, got {steps}")
    if config.evaluation.eval_examples == 0:
        raise ValueError("eval_examples must be -1 (all) or positive, got 0")
    train_eps = config.threat.train_eps
    if train_eps < 0 and train_eps != -1:
        raise ValueError(f"train_eps must be a finite number >= 0, or -1 (eps), "
                         f"got {train_eps!r}")


def _check_combinations(config: TrainConfig) -> None:
    """The checks that span fields: an attack and objective that cannot go together..."""
    threat, objective = config.threat, config.loss.objective
    if threat.bn_attack_mode == "madry" and (threat.train_attack != "pgd" or
                                             objective != "madry"):
        raise ValueError("bn_attack_mode 'madry' is defined for train_attack 'pgd' with "
                         "objective 'madry' only")
    if threat.train_norm != "linf" and threat.train_attack in ("fgsm", "fgsm_rs"):
        raise ValueError(f"train_attack {threat.train_attack!r} is an L-inf attack; "
                         f"train_norm {threat.train_norm!r} needs train_attack 'pgd'")
    if objective == "trades" and threat.train_attack != "pgd":
        raise ValueError(f"objective 'trades' maximises its KL term by PGD: it needs "
                         f"train_attack 'pgd', got {threat.train_attack!r}")
    if objective == "smoothadv" and threat.train_norm != "l2":
        raise ValueError(f"objective 'smoothadv' attacks the smoothed classifier in L2: "
                         f"train_norm must be 'l2', got {threat.train_norm!r}")
    if objective in CERTIFIED_OBJECTIVES and threat.train_norm != "linf":
        raise ValueError(f"objective {objective!r} certifies the L-inf ball only; "
                         f"got train_norm {threat.train_norm!r}")
    if objective in CERTIFIED_OBJECTIVES and config.model.compute_dtype != "float32":
        raise ValueError(f"objective {objective!r} bounds the network in float32: "
                         f"compute_dtype must be 'float32', got {config.model.compute_dtype!r}")
    if objective in CERTIFIED_OBJECTIVES and config.data.dataset == "cifar10" and (
            config.model.arch == "madry"):
        raise ValueError(f"objective {objective!r} needs a network without batch "
                         f"norm: set arch to 'dm_small', 'dm_medium' or 'dm_large'")


def field_help(name: str) -> str:
    """The help string of a :class:`TrainConfig` field (by its flat name)."""
    return {f.name: f.metadata["help"] for _, f in TrainConfig.fields()}[name]
