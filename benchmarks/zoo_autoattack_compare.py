r"""AutoAttack on a converted WRN-28-10: robustjax (through robustjax.zoo) against pyautoattack.

The network is RobustBench's own ``WideResNet`` (robustbench 1.1.1's
``model_zoo/architectures/wide_resnet.py``, the TRADES WRN-28-10), in PyTorch. No
published checkpoint can be downloaded here, so its weights are made to mean something
on generated CIFAR-shaped images (10 colour prototypes plus noise, as the tests use):
He-random convolutions and random batch-norm statistics, then the final linear layer
fitted to the penultimate features of ``--train`` images by ridge regression. The
state_dict is saved as a ``.pt`` file, loaded with ``robustjax.zoo.load("wrn-28-10",
checkpoint=...)`` (the logits are checked to agree), and both implementations run
AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on the same ``--examples`` test
images, same eps, steps, queries, batch size and threads, one after the other in one
process. Printed (and written to ``--json_out``): accuracy after each attack for both,
the per-example disagreement and the wall time of each attack with the ratio
(pyautoattack / robustjax; robustjax's times include XLA compilation).

  pip install torch==2.13.0 && pip install -e ".[peers]"     # CPU machine
  python -m benchmarks.zoo_autoattack_compare --examples=32 --num_steps=5 --num_queries=50

Figures in benchmarks/RESULTS.md ("Published models").
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time

from absl import app, flags

from benchmarks import bench_flags
from benchmarks.aa_report import Capture, bits, peer_result, report

_EXAMPLES = flags.DEFINE_integer("examples", 32, "Generated test images.", lower_bound=1)
_TRAIN = flags.DEFINE_integer("train", 400, "Generated images the linear head is fitted on.",
                              lower_bound=10)
_EPS = flags.DEFINE_float("eps", 8 / 255, "L-inf radius.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 5, "APGD and FAB iterations.", lower_bound=1)
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 50, "Square's queries.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Attack batch size, both.", lower_bound=1)
_THREADS = bench_flags.threads()
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights, the data and both attacks.")
_DEPTH = flags.DEFINE_integer("depth", 28, "WRN depth.")
_WIDTH = flags.DEFINE_integer("width", 10, "WRN width.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/zoo_compare", "Where the .pt file goes.")
_JSON_OUT = bench_flags.json_out()


def _generated(n, seed):
    """CIFAR-shaped images in [0, 1]: 10 fixed colour prototypes, 30% noise."""
    import numpy as np

    protos = np.random.default_rng(4321).random((10, 32, 32, 3)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.clip(protos[y] * 0.7 + rng.random((n, 32, 32, 3)) * 0.3, 0, 1)
    return np.round(x * 255).astype(np.float32) / 255, y.astype(np.int64)


def _robustbench_wrn():
    spec = importlib.util.find_spec("robustbench")  # the file only, not the package
    if spec is None:
        raise SystemExit("robustbench is not installed: pip install -e '.[peers]'")
    path = os.path.join(list(spec.submodule_search_locations)[0],
                        "model_zoo", "architectures", "wide_resnet.py")
    s = importlib.util.spec_from_file_location("_rb_wide_resnet", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.WideResNet


def _torch_model(torch, np, x_train, y_train):
    """RobustBench's WRN with random features and a ridge-fitted head; its train accuracy."""
    torch.manual_seed(_SEED.value)
    net = _robustbench_wrn()(depth=_DEPTH.value, widen_factor=_WIDTH.value).eval()
    g = torch.Generator().manual_seed(_SEED.value)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        feats = []
        hook = net.fc.register_forward_hook(
            lambda m, inp, out: feats.append(inp[0].detach().numpy()))
        for i in range(0, len(x_train), 50):
            net(torch.from_numpy(x_train[i:i + 50].transpose(0, 3, 1, 2)))
        hook.remove()
        f = np.concatenate(feats).astype(np.float64)
        mu, sd = f.mean(0), f.std(0) + 1e-6
        z = np.concatenate([(f - mu) / sd, np.ones((len(f), 1))], 1)
        target = 10.0 * (np.eye(10)[y_train] - 0.1)
        w = np.linalg.solve(z.T @ z + 1.0 * np.eye(z.shape[1]), z.T @ target)  # [F+1, 10]
        weight = (w[:-1] / sd[:, None]).T
        bias = w[-1] - (mu / sd) @ w[:-1]
        net.fc.weight.copy_(torch.from_numpy(weight).float())
        net.fc.bias.copy_(torch.from_numpy(bias).float())
        train_acc = float((((z @ w).argmax(1)) == y_train).mean())
    return net, train_acc


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    threads = _THREADS.value or os.cpu_count()
    import jax
    import numpy as np
    import torch
    from pyautoattack import AutoAttack

    from experiments.log_setup import setup_logging
    from robustjax import zoo
    from robustjax.evaluation import autoattack

    setup_logging()
    torch.set_num_threads(threads)
    arch = f"wrn-{_DEPTH.value}-{_WIDTH.value}"
    x_train, y_train = _generated(_TRAIN.value, _SEED.value + 1)
    x, y = _generated(_EXAMPLES.value, _SEED.value + 2)
    t0 = time.time()
    net, train_acc = _torch_model(torch, np, x_train, y_train)
    fit_s = time.time() - t0
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    ckpt = os.path.join(_OUT_DIR.value, f"{arch}.pt")
    torch.save(net.state_dict(), ckpt)
    t0 = time.time()
    logits_fn = zoo.load(arch, checkpoint=ckpt)
    load_s = time.time() - t0
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        ref = net(xt).numpy()
    got = np.asarray(logits_fn(x))
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    if rel > 1e-4:
        raise SystemExit(f"the converted model disagrees with PyTorch ({rel:.2e} relative)")
    print(f"# AutoAttack standard, Linf eps {_EPS.value:.5f}, {len(x)} generated images, "
          f"RobustBench WideResNet-{_DEPTH.value}-{_WIDTH.value} (head fitted on {len(x_train)} "
          f"images: train accuracy {train_acc:.2%}; {fit_s:.0f} s) -> robustjax.zoo.load "
          f"({load_s:.1f} s); logits agree to {rel:.1e} relative")
    print(f"# JAX {jax.__version__} ({jax.default_backend()}), PyTorch {torch.__version__}; "
          f"threads {threads}; batch {_BATCH.value}; {_NUM_STEPS.value} steps, "
          f"{_NUM_QUERIES.value} queries")
    out = dict(examples=len(x), eps=_EPS.value, norm="linf", version="standard", arch=arch,
               num_steps=_NUM_STEPS.value, num_queries=_NUM_QUERIES.value, threads=threads,
               batch_size=_BATCH.value, jax=jax.__version__, torch=torch.__version__,
               device=jax.devices()[0].device_kind, logits_rel_diff=rel, train_acc=train_acc)

    t0 = time.time()
    res = autoattack.autoattack(logits_fn, x, y.astype(np.int32),
                                jax.random.PRNGKey(_SEED.value), eps=_EPS.value, norm="linf",
                                batch_size=_BATCH.value, num_steps=_NUM_STEPS.value,
                                num_queries=_NUM_QUERIES.value)
    out["robustjax"] = dict(seconds=time.time() - t0, clean=res.clean_accuracy,
                            robust=res.robust_accuracy, after=res.accuracy_after,
                            attack_seconds=res.seconds, correct=bits(res.correct))

    cap = Capture()
    aa_log = logging.getLogger("auto-attack")
    aa_log.setLevel(logging.DEBUG)
    aa_log.addHandler(cap)
    adversary = AutoAttack(net, norm="Linf", eps=_EPS.value, version="standard", device="cpu",
                           seed=_SEED.value)
    for a in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
        a.n_iter = _NUM_STEPS.value
    adversary.square.n_queries = _NUM_QUERIES.value
    t0 = time.time()
    x_adv, _ = adversary.run_standard_evaluation(xt, torch.from_numpy(y),
                                                 batch_size=_BATCH.value)
    seconds = time.time() - t0
    x_adv = np.ascontiguousarray(x_adv.numpy().transpose(0, 2, 3, 1))
    out["pyautoattack"] = peer_result(logits_fn, x, y, x_adv, cap, seconds, eps=_EPS.value,
                                      norm="linf")
    report(out)
    bench_flags.write_json(_JSON_OUT.value, out)


if __name__ == "__main__":
    app.run(main)
