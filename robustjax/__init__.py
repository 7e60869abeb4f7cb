"""robustjax: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks"
(ICLR 2018) in JAX.

Modules:
  attacks  -- FGSM, FGSM-RS (Fast AT), PGD (L-inf / L2 / L1, restarts, targeted, CW / CW+
              losses): the inner maximisation of the paper's saddle-point problem (Eq. 2.1).
  geometry -- the norm geometries (L-inf, L2, L1): start, ascent, projection, distance.
  l1       -- the L1 threat model's geometry: the exact projection onto the L1 ball and
              the box, a uniform start, sparse ascent (Croce & Hein, ICML 2021).
  trades   -- the TRADES objective and its KL inner maximisation (Zhang et al., ICML 2019).
  evaluate -- robust accuracy over a dataset with validated adversarial examples.
  apgd     -- Auto-PGD, the DLR loss and APGD-T (Croce & Hein, ICML 2020).
  apgd_l1  -- one l1-APGD run and its large-eps schedule (Croce & Hein, ICML 2021).
  fab      -- FAB / FAB-T, the minimum-norm fast adaptive boundary attack.
  square   -- the gradient-free Square attack (Andriushchenko et al., 2020).
  autoattack -- the AutoAttack ensemble (standard, plus, rand, custom versions).
  certify  -- sound IBP, CROWN-IBP, CROWN and alpha-CROWN bounds of any logits_fn over an
              eps-ball, in memory-sized chunks; the certified accuracy and the
              certified-training losses (Gowal et al. 2018, Zhang et al. 2018 and 2020,
              Xu et al. 2021).
  bound_graph -- a function's jaxpr as a flat graph of primitives, and their interval rules
              (sound or refused: named activations checked against the library's own).
  interval -- the sound interval (IBP) rule of each primitive.
  crown    -- backward linear bound propagation (CROWN, CROWN-IBP, alpha-CROWN) with the
              batch on axis 0.
  bound_memory -- per-example memory of the bounds, and chunks of examples within a budget.
  bracket  -- certified (lower) and attacked (upper) accuracy per example, and the check
              that no certified example is broken.
  landscape -- PGD from many random starts: the loss landscape of Section 3 (Figures 1-2).
  sweeps   -- accuracy against eps with eps traced, and the gradient-masking checks.
  suite    -- attack suites: the paper's Tables 1 and 2 as data, with the
              per-example worst case over all rows (Section 5).
  models   -- the paper's MNIST CNN family and CIFAR-10 wide ResNet, and Gowal et al.'s
              verifiable-training CNNs (Flax Linen).
  layers   -- convolution and pooling whose input gradients are fast inside lax.fori_loop.
  data     -- the official raw dataset files, read with NumPy.
  augment  -- on-device pad-crop and flip augmentation (Section 4, CIFAR-10).
  config   -- TrainConfig: every field of a training run, defined once.
  workdir  -- the run directory: config.json, lock, metrics, checkpoints (damaged
              ones moved aside), load_run / load_model.
  mesh     -- one "data" axis over every device of every process: batches placed per
              process, results gathered, per-example keys; jax.distributed start-up.
  state    -- model, optimizer and TrainState construction; model_logits_fn.
  step     -- the adversarial batch, the objectives (Madry, TRADES, IBP, CROWN-IBP), the
              jitted training step.
  loop     -- train_and_evaluate: progress, preemption, divergence, end-of-run evaluation.
  train    -- the names of state, step, loop and workdir in one import.
  validation -- the held-out split, periodic robust validation, the best checkpoint
              (Rice et al. 2020) and catastrophic-overfitting detection (Wong et al. 2020).
  rowstore -- finished rows of an evaluation on disk, so tables resume.
  fastpath -- any model's convolutions and max-pools rewritten for fast input gradients
              (applied by the attacks on the CPU; ROBUSTJAX_FAST_GRAD=0 turns it off).
  zoo      -- published robust models in Flax (RobustBench's and DeepMind's WideResNets, the
              CIFAR ResNets), PyTorch and Haiku checkpoint converters, the model registry.
  xla_defaults -- XLA flags robustjax adds when imported before JAX starts a backend
              (ROBUSTJAX_XLA_DEFAULTS=0 turns them off; the user's XLA_FLAGS win).
"""

# Before anything can start a JAX backend: XLA reads XLA_FLAGS only once.
from robustjax import xla_defaults as _xla_defaults  # isort: skip

_xla_defaults.apply()

from robustjax import (  # noqa: E402
    apgd, apgd_l1, attacks, augment, autoattack, bound_graph, bound_memory, bracket, certify,
    config, crown, data, interval,
    evaluate, fab, fastpath, geometry, l1,
    landscape, layers, loop, mesh, models, rowstore, square, state, step, suite, sweeps, trades,
    train, validation, workdir, xla_defaults, zoo)
from robustjax.attacks import fgsm, fgsm_rs, pgd  # noqa: E402
from robustjax.evaluate import RobustAccuracy, robust_accuracy  # noqa: E402
from robustjax.models import CifarResNet, MnistCNN  # noqa: E402
from robustjax.config import TrainConfig  # noqa: E402
from robustjax.loop import train_and_evaluate  # noqa: E402
from robustjax.workdir import load_model  # noqa: E402

__all__ = ["apgd", "apgd_l1", "bound_graph", "bound_memory", "bracket", "certify", "crown",
           "interval", "geometry", "l1", "attacks", "augment", "autoattack", "config",
           "data", "evaluate", "fab",
           "fastpath", "landscape", "layers", "loop", "mesh", "models", "rowstore", "square", "state",
           "step", "suite", "sweeps", "trades", "train", "validation", "workdir", "xla_defaults", "zoo",
           "fgsm", "fgsm_rs", "pgd", "robust_accuracy", "RobustAccuracy", "MnistCNN", "CifarResNet",
           "TrainConfig", "load_model", "train_and_evaluate"]
__version__ = "0.1.0"
