r"""robustjax's AutoAttack against the official one (pyautoattack 0.2.0), same model, same digits.

The official code is fra31/auto-attack packaged for PyPI as ``pyautoattack``
(the ``bench`` extra installs it). Both evaluate one trained ``MnistCNN``
workdir: robustjax through :func:`robustjax.evaluation.autoattack.autoattack`, the
official code on the same weights copied into PyTorch (the logits are
checked to agree). Same test digits, same batch size, same thread count, in
one process, one after the other. Printed and written to ``--json_out``:

* robust accuracy after each attack of the ensemble and at the end, for both;
* per-example disagreement: examples one implementation leaves robust and
  the other breaks (the attacks are randomised, so a few are expected);
* wall time of each attack and of the whole ensemble, and the ratio
  (pyautoattack time / robustjax time; > 1 means robustjax is faster).
  robustjax's times include XLA compilation.

Both sets of adversarial examples are validated with robustjax's checks
(eps-ball, bounds, finite) before they count.

  pip install torch==2.13.0 && pip install -e ".[bench]"     # CPU machine
  python -m benchmarks.autoattack_compare --workdir=WORKDIR \
      --data_dir=../shared/data/mnist-10k --examples=1000

Figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import logging
import os
import time

from absl import app, flags

from benchmarks import bench_flags
from benchmarks.aa_report import Capture, bits, peer_result, report
from benchmarks.torch_port import configure_xla, torch_mnist_cnn

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of an MnistCNN model.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset files (default: the workdir's).")
_EXAMPLES = flags.DEFINE_integer("examples", 1000, "First N test examples.")
_EPS = flags.DEFINE_float("eps", None, "Radius (default: the training eps).")
_NORM = flags.DEFINE_enum("norm", "linf", ["linf", "l2", "l1"], "Threat model.")
_VERSION = flags.DEFINE_enum("version", "standard", ["standard", "plus"], "AutoAttack version.")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Attack batch size, both implementations.")
_THREADS = bench_flags.threads()
_XLA_PRESET = bench_flags.xla_preset()
_SEED = flags.DEFINE_integer("seed", 0, "Seed of both implementations.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 100, "APGD and FAB iterations, both (AutoAttack: "
                                  "100).", lower_bound=1)
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 5000, "Square's queries, both (AutoAttack: "
                                    "5000).", lower_bound=1)
_SKIP = flags.DEFINE_list("skip", [], "Implementations to skip: robustjax, pyautoattack.")
_JSON_OUT = bench_flags.json_out()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _EXAMPLES.value < 1:
        raise app.UsageError(f"--examples must be >= 1, got {_EXAMPLES.value}")
    for s in _SKIP.value:
        if s not in ("robustjax", "pyautoattack"):
            raise app.UsageError(f"--skip takes robustjax and/or pyautoattack, got {s!r}")
    threads = _THREADS.value or os.cpu_count()
    added_flags = configure_xla(_XLA_PRESET.value, _THREADS.value)

    import jax
    import numpy as np

    from experiments.log_setup import setup_logging
    from robustjax.evaluation import autoattack
    from robustjax.data import datasets as data
    from robustjax import training as train

    try:
        import torch
        from pyautoattack import AutoAttack
        missing = None
    except ImportError as e:  # the peer is optional: robustjax runs alone
        torch = AutoAttack = None
        missing = e.name
    skip = set(_SKIP.value) | ({"pyautoattack"} if missing else set())
    setup_logging()
    run = train.load_run(_WORKDIR.value)
    if run.config.data.dataset not in ("mnist", "fashion_mnist"):
        raise app.UsageError(
            f"--workdir must hold an MnistCNN model, got {run.config.data.dataset}")
    eps = run.config.threat.eps if _EPS.value is None else _EPS.value
    x, y = data.load(run.config.data.dataset, "test", _DATA_DIR.value or run.config.data.data_dir)
    n = min(_EXAMPLES.value, len(x))
    x, y = x[:n].astype(np.float32) / 255.0, y[:n].astype(np.int64)
    diff, tdev = None, "cpu"
    if "pyautoattack" not in skip:
        torch.set_num_threads(threads)
        tdev = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
        net = torch_mnist_cnn({"params": run.variables["params"]}).to(tdev)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(tdev)
        with torch.no_grad():
            diff = float(np.abs(np.asarray(run.logits_fn(x[:100]))
                                - net(xt[:100]).cpu().numpy()).max())
        if diff > 1e-3:
            raise SystemExit(f"the PyTorch port disagrees with the model (max logit difference "
                             f"{diff}); the comparison would not be like for like")
    print(f"# AutoAttack {_VERSION.value}, {_NORM.value} eps {eps:g}, {n} test digits, "
          f"{run.config.data.dataset} MnistCNN({run.config.model.width}) from {_WORKDIR.value}")
    print(f"# JAX {jax.__version__} ({jax.default_backend()}, XLA flags added: "
          f"{added_flags or 'none'}); PyTorch {torch.__version__ if torch else 'not installed'} "
          f"({tdev}); threads {threads}; batch {_BATCH.value}; max logit difference {diff}"
          + (f"; the peer is skipped: {missing} is not installed" if missing else ""))
    out = dict(examples=n, eps=eps, norm=_NORM.value, version=_VERSION.value,
               num_steps=_NUM_STEPS.value, num_queries=_NUM_QUERIES.value,
               threads=threads, batch_size=_BATCH.value, jax=jax.__version__,
               torch=torch.__version__ if torch else None, xla_flags=added_flags,
               workdir=_WORKDIR.value, device=jax.devices()[0].device_kind, torch_device=tdev,
               peer_missing=missing)

    if "robustjax" not in skip:
        t0 = time.time()
        res = autoattack.autoattack(run.logits_fn, x, y, jax.random.PRNGKey(_SEED.value),
                                    eps=eps, norm=_NORM.value, version=_VERSION.value,
                                    batch_size=_BATCH.value, num_steps=_NUM_STEPS.value,
                                    num_queries=_NUM_QUERIES.value)
        out["robustjax"] = dict(seconds=time.time() - t0, clean=res.clean_accuracy,
                                robust=res.robust_accuracy, after=res.accuracy_after,
                                attack_seconds=res.seconds, correct=bits(res.correct))

    if "pyautoattack" not in skip:
        cap = Capture()
        aa_log = logging.getLogger("auto-attack")
        aa_log.setLevel(logging.DEBUG)
        aa_log.addHandler(cap)
        adversary = AutoAttack(net, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[_NORM.value],
                               eps=eps,
                               version=_VERSION.value, device=tdev, seed=_SEED.value)
        for a in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
            a.n_iter = _NUM_STEPS.value
            if hasattr(a, "n_iter_orig"):  # l1-APGD's use_largereps schedule reads this one
                a.n_iter_orig = _NUM_STEPS.value
        adversary.square.n_queries = _NUM_QUERIES.value
        t0 = time.time()
        x_adv, _ = adversary.run_standard_evaluation(xt, torch.from_numpy(y).to(tdev),
                                                     batch_size=_BATCH.value)
        seconds = time.time() - t0
        x_adv = np.ascontiguousarray(x_adv.cpu().numpy().transpose(0, 2, 3, 1))
        # The official L1 projection does not clip its result to the box: a few values
        # come out 1 ulp above 1. They are clipped (which only shrinks the perturbation)
        # and counted, then checked like robustjax's.
        off_box = np.maximum(x_adv.reshape(n, -1).max(1) - 1.0, -x_adv.reshape(n, -1).min(1))
        out["pyautoattack_outside_box"] = dict(examples=int(np.sum(off_box > 0)),
                                               largest=float(max(off_box.max(), 0.0)))
        x_adv = np.clip(x_adv, 0.0, 1.0)
        # The official examples must pass robustjax's checks too before they count.
        out["pyautoattack"] = peer_result(run.logits_fn, x, y, x_adv, cap, seconds, eps=eps,
                                          norm=_NORM.value)

    report(out)
    bench_flags.write_json(_JSON_OUT.value, out)


if __name__ == "__main__":
    app.run(main)
