r"""A defence evaluated as given and adaptively by robustjax, and as given by the official
AutoAttack on a PyTorch twin (which has no BPDA or EOT for a defence it cannot read).

One trained ``MnistCNN`` workdir behind one input defence (``--defence``, as in
``experiments.adaptive``: ``quantize:K`` or ``noise:SIGMA``). robustjax runs
:func:`robustjax.evaluation.adaptive_eval.adaptive_autoattack`: the inspection report,
AutoAttack on the defended model as given, then through BPDA (a shattered transform) or
EOT (a randomised one). The official code (pyautoattack 0.2.0, the ``peers`` extra) runs
the same attacks on the same weights behind the same transform written in PyTorch.
Every adversarial example of both is validated and counted on robustjax's defended
model as given (for the noise defence: one fresh draw per example).

  python -m benchmarks.adaptive_compare --workdir=WORKDIR --defence=quantize:3 \
      --data_dir=../shared/data/mnist-10k --examples=1000 --attacks=apgd-ce,square

Figures in benchmarks/RESULTS.md ("Adaptive evaluation").
"""

from __future__ import annotations

import logging
import time

from absl import app, flags

from benchmarks import bench_flags
from benchmarks.aa_report import Capture, peer_result
from benchmarks.torch_port import cpu_description, torch_mnist_cnn

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of an MnistCNN model.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset files (default: the workdir's).")
_DEFENCE = flags.DEFINE_string("defence", "quantize:3", "quantize:K or noise:SIGMA.")
_EXAMPLES = flags.DEFINE_integer("examples", 1000, "First N test examples.", lower_bound=1)
_ATTACKS = flags.DEFINE_list("attacks", ["apgd-ce", "square"], "The attacks, both sides.")
_STEPS = flags.DEFINE_integer("num_steps", 100, "APGD/FAB iterations.", lower_bound=1)
_QUERIES = flags.DEFINE_integer("num_queries", 5000, "Square's queries.", lower_bound=1)
_EOT = flags.DEFINE_integer("eot_samples", 20, "EOT draws (robustjax's adaptive run).",
                            lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 500, "Attack batch, both sides.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of both sides.")
_SKIP = flags.DEFINE_list("skip", [], "Sides to skip: robustjax, pyautoattack.")
_JSON_OUT = bench_flags.json_out()


def _twin(net, defence: str):
    """The defence in PyTorch in front of the PyTorch twin of the model."""
    import torch

    name, _, arg = defence.partition(":")

    class Defended(torch.nn.Module):
        def forward(self, z):
            if name == "quantize":
                k = float(int(arg) - 1)
                z = torch.round(z * k) / k
            else:
                z = (z + float(arg) * torch.randn_like(z)).clamp(0, 1)
            return net(z)

    return Defended().eval()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _DEFENCE.value.partition(":")[0] not in ("quantize", "noise"):
        raise app.UsageError(f"--defence must be quantize:K or noise:SIGMA, got {_DEFENCE.value}")
    import jax
    import numpy as np

    from experiments.log_setup import setup_logging
    from robustjax import training as train
    from robustjax.attacks import adaptive
    from robustjax.data import datasets as data
    from robustjax.evaluation import adaptive_eval
    from robustjax.models import defences

    setup_logging()
    run = train.load_run(_WORKDIR.value)
    eps = run.config.threat.eps
    x, y = data.load(run.config.data.dataset, "test", _DATA_DIR.value or run.config.data.data_dir)
    n = min(_EXAMPLES.value, len(x))
    x, y = x[:n].astype(np.float32) / 255.0, y[:n].astype(np.int32)
    transform = defences.parse(_DEFENCE.value, run.logits_fn)
    defended = defences.defend(run.logits_fn, transform)
    given = (adaptive.eot(defended, 1, key=jax.random.PRNGKey(_SEED.value + 1))
             if transform.randomized else defended)
    out = dict(examples=n, eps=eps, defence=_DEFENCE.value, attacks=_ATTACKS.value,
               num_steps=_STEPS.value, num_queries=_QUERIES.value, eot_samples=_EOT.value,
               batch_size=_BATCH.value, seed=_SEED.value, jax=jax.__version__,
               workdir=_WORKDIR.value, cpu=cpu_description())
    print(f"# {_DEFENCE.value} in front of MnistCNN({run.config.model.width}) from "
          f"{_WORKDIR.value}; AutoAttack custom {','.join(_ATTACKS.value)}, L-inf eps {eps:g}, "
          f"{n} test digits; {out['cpu']}")
    if "robustjax" not in _SKIP.value:
        t0 = time.time()
        res = adaptive_eval.adaptive_autoattack(
            run.logits_fn, x, y, jax.random.PRNGKey(_SEED.value), transforms=[transform],
            eps=eps, version="custom", attacks=_ATTACKS.value, eot_samples=_EOT.value,
            batch_size=_BATCH.value, num_steps=_STEPS.value, num_queries=_QUERIES.value)
        out["robustjax"] = dict(res.to_json(), seconds=time.time() - t0)
        print(res.inspection.table())
        print(adaptive_eval.markdown(res.rows))
    if "pyautoattack" not in _SKIP.value:
        import torch
        from pyautoattack import AutoAttack

        torch.manual_seed(_SEED.value)
        net = torch_mnist_cnn({"params": run.variables["params"]})
        cap = Capture()
        aa_log = logging.getLogger("auto-attack")
        aa_log.setLevel(logging.DEBUG)
        aa_log.addHandler(cap)
        adversary = AutoAttack(_twin(net, _DEFENCE.value), norm="Linf", eps=eps,
                               version="custom", attacks=_ATTACKS.value,
                               seed=_SEED.value, device="cpu")
        adversary.apgd.n_iter = _STEPS.value
        adversary.square.n_queries = _QUERIES.value
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        t0 = time.time()
        x_adv, _ = adversary.run_standard_evaluation(xt, torch.from_numpy(y.astype(np.int64)),
                                                     batch_size=_BATCH.value)
        seconds = time.time() - t0
        x_adv = np.ascontiguousarray(x_adv.numpy().transpose(0, 2, 3, 1))
        out["pyautoattack"] = peer_result(given, x, y, x_adv, cap, seconds, eps=eps,
                                          norm="linf")
        print(f"pyautoattack as given: clean {out['pyautoattack']['clean']:.2%}, after "
              f"{out['pyautoattack']['after']}, robust {out['pyautoattack']['robust']:.2%} "
              f"(counted on robustjax's model as given), {seconds:.1f} s")
    bench_flags.write_json(_JSON_OUT.value, out)


if __name__ == "__main__":
    app.run(main)
