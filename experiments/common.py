"""Flags shared by the MNIST entry points, and the flags -> TrainConfig step."""

from __future__ import annotations

from absl import app, flags

from experiments.log_setup import setup_logging
from robustjax.data import DATASETS
from robustjax.train import TrainConfig

FLAGS = flags.FLAGS
_D = TrainConfig()

flags.DEFINE_string("workdir", None, "Output directory (config, metrics, checkpoints, results). "
                    "Rerunning with the same workdir resumes.")
flags.DEFINE_string("data_dir", None, "Directory with the official IDX .gz files.")
flags.DEFINE_enum("dataset", _D.dataset, list(DATASETS), "Dataset.")
flags.DEFINE_integer("width", _D.width, "MnistCNN width (16: Madry's network).")
flags.DEFINE_enum("train_attack", _D.train_attack, ["none", "fgsm", "pgd"],
                  "Adversary used for training ('none': natural training).")
flags.DEFINE_float("eps", _D.eps, "L-inf radius for training and evaluation.")
flags.DEFINE_integer("attack_steps", _D.attack_steps, "PGD steps during training.")
flags.DEFINE_float("attack_step_size", _D.attack_step_size, "PGD step size during training.")
flags.DEFINE_float("eval_attack_step_size", _D.eval_attack_step_size,
                   "PGD step size of the evaluation rows (the paper: 0.01 at eps 0.3).")
flags.DEFINE_integer("eps_ramp_steps", _D.eps_ramp_steps,
                     "Ramp the training eps linearly from 0 over this many steps (0: off).")
flags.DEFINE_integer("augment_pad", _D.augment_pad,
                     "Training augmentation: random crop after zero padding by this many "
                     "pixels (0: off, the paper's MNIST recipe).")
flags.DEFINE_bool("augment_flip", _D.augment_flip,
                  "Training augmentation: random horizontal flips (not for digits).")
flags.DEFINE_enum("optimizer", _D.optimizer, ["adam", "momentum"],
                  "'adam' (the paper's MNIST optimizer) or 'momentum' SGD (its CIFAR-10 one).")
flags.DEFINE_float("momentum", _D.momentum, "Momentum of --optimizer=momentum.")
flags.DEFINE_float("lr", _D.lr, "Learning rate.")
flags.DEFINE_enum("lr_schedule", _D.lr_schedule, ["constant", "cosine", "piecewise"],
                  "Learning-rate schedule ('piecewise': times 0.1 at each --lr_boundaries).")
flags.DEFINE_list("lr_boundaries", [], "Steps at which 'piecewise' multiplies the lr by 0.1.")
flags.DEFINE_float("weight_decay", _D.weight_decay,
                   "L2 penalty on convolution and dense kernels (CIFAR-10: 2e-4).")
flags.DEFINE_enum("bn_attack_mode", _D.bn_attack_mode, ["eval", "train", "madry"],
                  "Batch norm during the training attack: running averages ('eval'), the "
                  "batch's statistics without updating them ('train'), or train mode "
                  "updating them on every attack pass ('madry', Madry's TF code).")
flags.DEFINE_enum("compute_dtype", _D.compute_dtype, ["float32", "bfloat16"],
                  "Forward/backward precision (parameters and attack projection stay float32).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.")
flags.DEFINE_integer("steps", _D.steps, "Training steps.")
flags.DEFINE_integer("seed", _D.seed, "Seed (initialisation, data order, attack starts).")
flags.DEFINE_integer("log_every", _D.log_every, "Steps between progress lines.")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Steps between checkpoints.")
flags.DEFINE_integer("eval_examples", _D.eval_examples, "Test examples to evaluate (-1: all).")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Evaluation batch size.")
flags.DEFINE_list("eval_attack_steps", [str(s) for s in _D.eval_attack_steps],
                  "PGD steps of the evaluation rows.")


def config_from_flags(**overrides) -> TrainConfig:
    """TrainConfig from the command line (plus overrides), validated."""
    kw = dict(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, width=FLAGS.width,
              train_attack=FLAGS.train_attack, eps=FLAGS.eps, attack_steps=FLAGS.attack_steps,
              attack_step_size=FLAGS.attack_step_size, eps_ramp_steps=FLAGS.eps_ramp_steps,
              augment_pad=FLAGS.augment_pad, augment_flip=FLAGS.augment_flip,
              optimizer=FLAGS.optimizer, momentum=FLAGS.momentum,
              lr_boundaries=tuple(int(b) for b in FLAGS.lr_boundaries),
              weight_decay=FLAGS.weight_decay, bn_attack_mode=FLAGS.bn_attack_mode,
              compute_dtype=FLAGS.compute_dtype,
              lr=FLAGS.lr, lr_schedule=FLAGS.lr_schedule, batch_size=FLAGS.batch_size,
              steps=FLAGS.steps, seed=FLAGS.seed,
              log_every=FLAGS.log_every, checkpoint_every=FLAGS.checkpoint_every,
              eval_examples=FLAGS.eval_examples, eval_batch_size=FLAGS.eval_batch_size,
              eval_attack_steps=tuple(int(s) for s in FLAGS.eval_attack_steps),
              eval_attack_step_size=FLAGS.eval_attack_step_size)
    kw.update(overrides)
    config = TrainConfig(**kw)
    config.validate()
    return config


def set_defaults(**defaults) -> None:
    """Changes flag defaults for one entry point (e.g. the CIFAR-10 recipe)."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)


def start(argv, datasets=DATASETS) -> str:
    """Common start of an entry point: no stray arguments, logging, --workdir; returns it."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.dataset not in datasets:
        raise app.UsageError(f"--dataset must be one of {datasets} here, got {FLAGS.dataset!r}")
    if FLAGS.distributed:
        import jax

        jax.distributed.initialize()
    setup_logging()
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    return FLAGS.workdir
