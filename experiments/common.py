"""Flags shared by the MNIST entry points, and the flags -> TrainConfig step."""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from robustjax.train import TrainConfig

FLAGS = flags.FLAGS
_D = TrainConfig()

flags.DEFINE_string("workdir", None, "Output directory (config, metrics, checkpoints, results). "
                    "Rerunning with the same workdir resumes.")
flags.DEFINE_string("data_dir", None, "Directory with the official IDX .gz files.")
flags.DEFINE_enum("dataset", _D.dataset, ["mnist", "fashion_mnist"], "Dataset.")
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
flags.DEFINE_float("lr", _D.lr, "Adam learning rate.")
flags.DEFINE_enum("lr_schedule", _D.lr_schedule, ["constant", "cosine"],
                  "Learning-rate schedule ('constant': the paper's).")
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
              lr=FLAGS.lr, lr_schedule=FLAGS.lr_schedule, batch_size=FLAGS.batch_size, steps=FLAGS.steps, seed=FLAGS.seed,
              log_every=FLAGS.log_every, checkpoint_every=FLAGS.checkpoint_every,
              eval_examples=FLAGS.eval_examples, eval_batch_size=FLAGS.eval_batch_size,
              eval_attack_steps=tuple(int(s) for s in FLAGS.eval_attack_steps),
              eval_attack_step_size=FLAGS.eval_attack_step_size)
    kw.update(overrides)
    config = TrainConfig(**kw)
    config.validate()
    return config


def setup_logging() -> None:
    """Progress lines from robustjax at INFO; library chatter (orbax) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    log = logging.getLogger("robustjax")
    log.setLevel(logging.INFO)
    if not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.propagate = False


def start(argv) -> str:
    """Common start of an entry point: no stray arguments, logging, --workdir; returns it."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    return FLAGS.workdir
