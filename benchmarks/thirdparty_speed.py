r"""Attacks on a model robustjax did not write: robustjax against PyTorch and the official APGD.

The model is a third-party MNIST CNN written with stock layers only
(``flax.linen.Conv`` / ``nn.max_pool`` / ``nn.Dense``; four 3x3 convolutions
of 32, 32, 64, 64 filters, VALID, two 2x2 max-pools, dense 200 and 10): what a
user brings. Its twin in PyTorch (``nn.Conv2d`` / ``nn.MaxPool2d``) holds the
same weights (the logits are checked to agree). The model is first trained
naturally for ``--train_steps`` steps on the digits, so that the official
APGD, which attacks only correctly classified points, attacks nearly all.

In one process, interleaved, on the same digits and threads:

* PGD-40 (L-inf, eps 0.3, step 0.01, random start): ``robustjax.attacks.first_order.pgd``
  against PyTorch written the usual way (``autograd.grad`` on the input);
* APGD-CE, 100 iterations, 1 restart: ``robustjax.attacks.apgd.apgd`` against the
  official ``APGDAttack`` of pyautoattack 0.2.0 (fra31/auto-attack) on the
  PyTorch twin;
* with ``--attacks=fab,square``: FAB-T (100 iterations, one target class)
  against the official ``FABAttack_PT``, and Square (``--square_queries``)
  against the official ``SquareAttack``.

robustjax runs with its defaults (no flag: the fast path of
:mod:`robustjax.models.fastpath` and the XLA settings of :mod:`robustjax.runtime.xla_defaults`).
``--fast_grad=false`` / ``--xla_preset=default`` turn each off to measure
what it brings. Also printed: the machine (``lscpu`` model name and ISA), the
measured fp32 peak (the best of large matmuls in JAX on the same cores), each
attack's GFLOP/s (XLA's cost analysis of one forward + input gradient) and,
with ``--per_layer``, each convolution's forward + input-gradient GFLOP/s
inside a ``fori_loop``, stock and rewritten.

  pip install torch==2.13.0 && pip install -e ".[test,bench]"
  python -m benchmarks.thirdparty_speed --data_dir=../shared/data/mnist-10k

Figures in benchmarks/RESULTS.md ("Any model, no flags").
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from benchmarks import bench_flags
from benchmarks.torch_port import configure_xla, cpu_description, torch_pgd

_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST IDX files (default: generated digits).")
_EXAMPLES = flags.DEFINE_integer("examples", 500, "Test digits attacked (one batch).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "Natural training steps (batch 100).")
_ATTACKS = flags.DEFINE_list("attacks", ["pgd", "apgd"], "Attacks to time: pgd, apgd, fab "
                             "(FAB-T, 1 target class), square (--square_queries).")
_SQUARE_QUERIES = flags.DEFINE_integer("square_queries", 1000, "Square attack queries.")
_REPEATS = bench_flags.repeats(3)
_THREADS = bench_flags.threads()
_XLA_PRESET = bench_flags.xla_preset()
_FAST_GRAD = flags.DEFINE_bool("fast_grad", True, "robustjax.models.fastpath on (its default).")
_PER_LAYER = flags.DEFINE_bool("per_layer", True, "Time each convolution alone too.")
_JSON_OUT = bench_flags.json_out()

EPS, PGD_STEP, PGD_STEPS, APGD_STEPS = 0.3, 0.01, 40, 100
CONVS = ((28, 1, 32), (26, 32, 32), (12, 32, 64), (10, 64, 64))  # (input size, cin, cout), 3x3


def _flax_model():
    import flax.linen as nn

    class ThirdPartyCNN(nn.Module):
        """Stock layers only, as a user writes them."""

        @nn.compact
        def __call__(self, x):
            for i, features in enumerate((32, 32, 64, 64)):
                x = nn.relu(nn.Conv(features, (3, 3), padding="VALID")(x))
                if i % 2:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(200)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    return ThirdPartyCNN()


def _torch_twin(params):
    """The same network in PyTorch (NCHW) with the Flax weights copied in, eval mode."""
    import numpy as np
    import torch
    from torch import nn

    layers = []
    for i, features in enumerate((32, 32, 64, 64)):
        layers += [nn.Conv2d(CONVS[i][1], features, 3), nn.ReLU()]
        if i % 2:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(4 * 4 * 64, 200), nn.ReLU(), nn.Linear(200, 10)]
    net = nn.Sequential(*layers)
    p = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in params["params"].items()}
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    dense = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, m in enumerate(convs):
            k = p[f"Conv_{i}"]
            kernel = np.ascontiguousarray(k["kernel"].transpose(3, 2, 0, 1))
            m.weight.copy_(torch.from_numpy(kernel))
            m.bias.copy_(torch.from_numpy(k["bias"].copy()))
        # Flax flattens (h, w, c), PyTorch (c, h, w): permute the first dense layer's rows.
        k0 = p["Dense_0"]["kernel"].reshape(4, 4, 64, 200).transpose(2, 0, 1, 3).reshape(-1, 200)
        dense[0].weight.copy_(torch.from_numpy(np.ascontiguousarray(k0.T)))
        dense[0].bias.copy_(torch.from_numpy(p["Dense_0"]["bias"].copy()))
        dense[1].weight.copy_(torch.from_numpy(np.ascontiguousarray(p["Dense_1"]["kernel"].T)))
        dense[1].bias.copy_(torch.from_numpy(p["Dense_1"]["bias"].copy()))
    return net.eval()


def _digits(n_train, n_test):
    import numpy as np

    from robustjax.data import datasets as data
    if _DATA_DIR.value:
        xtr, ytr = data.load("mnist", "train", _DATA_DIR.value)
        xte, yte = data.load("mnist", "test", _DATA_DIR.value)
        source = f"MNIST IDX files in {_DATA_DIR.value}"
    else:  # generated stand-in: class prototypes plus noise
        rng = np.random.default_rng(0)
        protos = (rng.random((10, 28, 28, 1)) > 0.7)
        ytr, yte = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
        xtr = np.clip(protos[ytr] * 0.8 + rng.random((n_train, 28, 28, 1)) * 0.3, 0, 1) * 255
        xte = np.clip(protos[yte] * 0.8 + rng.random((n_test, 28, 28, 1)) * 0.3, 0, 1) * 255
        source = "generated digits"
    f = lambda a: (np.asarray(a, np.float32) / 255.0).reshape(-1, 28, 28, 1)  # noqa: E731
    return (f(xtr[:n_train]), np.asarray(ytr[:n_train], np.int32), f(xte[:n_test]),
            np.asarray(yte[:n_test], np.int32), source)


def _train(model, params, x, y, steps):
    import jax
    import jax.numpy as jnp
    import optax

    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            lg = model.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(lg, yb).mean()
        g = jax.grad(loss)(params)
        upd, opt = tx.update(g, opt)
        return optax.apply_updates(params, upd), opt

    opt = tx.init(params)
    for i in range(steps):
        j = (i * 100) % (len(x) - 100)
        params, opt = step(params, opt, jnp.asarray(x[j:j + 100]), jnp.asarray(y[j:j + 100]))
    return params


def _measured_peak():
    """Best fp32 GFLOP/s of square matmuls, in JAX and in PyTorch, each timed for about a second.

    The machine's peak is taken as the better of the two libraries' best.
    """
    import jax
    import jax.numpy as jnp
    import torch

    def best_rate(make, mul, sync):
        best = 0.0
        for n in (1024, 2048, 4096):
            a = make(n)
            sync(mul(a))
            reps, t = 1, 0.0
            while t < 1.0:
                t0 = time.perf_counter()
                for _ in range(reps):
                    out = mul(a)
                sync(out)
                t = time.perf_counter() - t0
                reps *= 2
            best = max(best, (reps // 2) * 2 * n ** 3 / t / 1e9)
        return best

    f = jax.jit(lambda a: a @ a)
    rate_jax = best_rate(lambda n: jax.random.normal(jax.random.PRNGKey(n), (n, n), jnp.float32),
                         f, lambda o: o.block_until_ready())
    rate_torch = best_rate(lambda n: torch.randn(n, n), lambda a: a @ a, lambda o: None)
    return rate_jax, rate_torch


def _per_layer(batch, steps):
    """Forward + input gradient of each convolution, ``steps`` times in a fori_loop."""
    import jax
    from jax import lax

    from robustjax.models import layers

    rows = []
    for size, cin, cout in CONVS:
        x = jax.random.uniform(jax.random.PRNGKey(size), (batch, size, size, cin))
        w = jax.random.normal(jax.random.PRNGKey(cin), (3, 3, cin, cout)) * 0.05
        ho = size - 2
        flop = 2 * 2 * batch * ho * ho * 9 * cin * cout * steps
        row = dict(layer=f"conv {size}x{size}x{cin} -> {ho}x{ho}x{cout}", gflop=flop / 1e9)
        for name, conv in (("stock", lax.conv_general_dilated),
                           ("rewritten", layers.conv_general_dilated)):
            def body(_, z, conv=conv, w=w):
                out, vjp = jax.vjp(lambda v: conv(v, w, (1, 1), "VALID",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")), z)
                # The cotangent depends on the output, and the next input on the gradient,
                # so XLA can neither drop the forward nor hoist the gradient out of the loop.
                return z - 1e-6 * vjp(out)[0]
            f = jax.jit(lambda z, body=body: lax.fori_loop(0, steps, body, z))
            f(x).block_until_ready()
            ts = []
            for _ in range(2):
                t0 = time.perf_counter()
                f(x).block_until_ready()
                ts.append(time.perf_counter() - t0)
            row[f"{name}_ms"] = min(ts) * 1e3
            row[f"{name}_gflops"] = flop / min(ts) / 1e9
        rows.append(row)
    return rows


def _torch_pgd(net, x, y):
    return torch_pgd(net, x, y, eps=EPS, step=PGD_STEP, steps=PGD_STEPS)


def main(argv):
    del argv
    threads = _THREADS.value or os.cpu_count()
    if not _FAST_GRAD.value:
        os.environ["ROBUSTJAX_FAST_GRAD"] = "0"
    xla_flags = configure_xla(_XLA_PRESET.value, _THREADS.value)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from pyautoattack.autopgd_base import APGDAttack
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    from robustjax.attacks import apgd
    from robustjax.attacks import first_order as attacks
    from robustjax.attacks import fab
    from robustjax.attacks import square

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = _EXAMPLES.value
    xtr, ytr, xte, yte, source = _digits(8000, n)
    model = _flax_model()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    params = _train(model, params, xtr, ytr, _TRAIN_STEPS.value)
    net = _torch_twin(params)
    xt = torch.from_numpy(xte.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(yte.astype(np.int64))
    xj, yj = jnp.asarray(xte), jnp.asarray(yte)
    logits = np.asarray(model.apply(params, xj))
    diff = np.abs(logits - net(xt).detach().numpy()).max()
    if diff > 1e-3:
        raise SystemExit(f"the two models disagree (max logit difference {diff})")
    clean_acc = float(np.mean(logits.argmax(-1) == yte))

    def grad_flops(batch):
        f = jax.jit(jax.grad(lambda z: jnp.sum(attacks.xent_loss(model.apply(params, z),
                                                                 yj[:batch]))))
        cost = f.lower(xj[:batch]).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0))

    flop_per_step = grad_flops(n)
    peak_jax, peak_torch = _measured_peak()
    peak = max(peak_jax, peak_torch)

    @jax.jit
    def jax_pgd(params, x, y, key):
        return attacks.pgd(lambda z: model.apply(params, z), x, y, key, eps=EPS,
                           step_size=PGD_STEP, num_steps=PGD_STEPS)

    @jax.jit
    def jax_apgd(params, x, y, key):
        return apgd.apgd(lambda z: model.apply(params, z), x, y, key, eps=EPS, norm="linf",
                         loss="ce", num_steps=APGD_STEPS)

    @jax.jit
    def jax_fab(params, x, y, key):
        return fab.fab(lambda z: model.apply(params, z), x, y, key, eps=EPS, norm="linf",
                       num_steps=APGD_STEPS, num_targets=1)

    queries = _SQUARE_QUERIES.value

    @jax.jit
    def jax_square(params, x, y, key):
        return square.square(lambda z: model.apply(params, z), x, y, key, eps=EPS,
                             norm="linf", num_queries=queries)

    official = APGDAttack(net, n_iter=APGD_STEPS, norm="Linf", n_restarts=1, eps=EPS, seed=0,
                          loss="ce", device="cpu")
    official_fab = FABAttack_PT(net, norm="Linf", n_iter=APGD_STEPS, eps=EPS, seed=0,
                                targeted=True, n_target_classes=1, device="cpu")
    # AutoAttack's setting, as robustjax's default: the schedule is not rescaled to the queries.
    official_square = SquareAttack(net, norm="Linf", n_queries=queries, eps=EPS, seed=0,
                                   resc_schedule=False, device="cpu")
    runs = {
        "pgd": (lambda i: jax_pgd(params, xj, yj, jax.random.PRNGKey(i)),
                lambda i: _torch_pgd(net, xt, yt), "PyTorch PGD-40", PGD_STEPS),
        "apgd": (lambda i: jax_apgd(params, xj, yj, jax.random.PRNGKey(i)),
                 lambda i: official.perturb(xt, yt), "pyautoattack APGDAttack (CE)",
                 APGD_STEPS),
        "fab": (lambda i: jax_fab(params, xj, yj, jax.random.PRNGKey(i)),
                lambda i: official_fab.perturb(xt, yt), "pyautoattack FABAttack_PT (FAB-T)",
                None),
        "square": (lambda i: jax_square(params, xj, yj, jax.random.PRNGKey(i)),
                   lambda i: official_square.perturb(xt, yt), "pyautoattack SquareAttack",
                   None),
    }
    labels = {"pgd": "PGD-40", "apgd": "APGD-CE-100", "fab": "FAB-T-100 (1 target)",
              "square": f"Square-{queries}"}
    cpu = cpu_description()
    print(f"# Third-party stock-layer CNN (4 conv 3x3, 2 max-pools, 2 dense), {n} digits "
          f"({source}), clean accuracy {clean_acc:.1%}, eps {EPS}")
    print(f"# CPU: {cpu}; threads {threads}; JAX {jax.__version__} ({jax.default_backend()}); "
          f"PyTorch {torch.__version__}; XLA_FLAGS: {xla_flags or 'none'}; "
          f"fast_grad={_FAST_GRAD.value}; logits agree to {diff:.1e}")
    print(f"# measured fp32 peak: {peak:.0f} GFLOP/s (best square matmul: JAX {peak_jax:.0f}, "
          f"PyTorch {peak_torch:.0f}); one forward + input "
          f"gradient of the batch: {flop_per_step / 1e9:.2f} GFLOP (XLA cost analysis)")
    rows = []
    for name in _ATTACKS.value:
        run_jax, run_peer, peer, steps = runs[name]
        t0 = time.perf_counter()
        adv_j = run_jax(0).block_until_ready()
        compile_s = time.perf_counter() - t0
        adv_t = run_peer(0)
        tj, tt = [], []
        for i in range(_REPEATS.value):
            t0 = time.perf_counter()
            adv_j = run_jax(i + 1).block_until_ready()
            tj.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            adv_t = run_peer(i + 1)
            tt.append(time.perf_counter() - t0)
        mj, mt = statistics.median(tj), statistics.median(tt)
        print(f"# {labels[name]}: robustjax {mj:.2f} s, {peer} {mt:.2f} s", flush=True)
        acc_j = float(np.mean(np.asarray(model.apply(params, adv_j)).argmax(-1) == yte))
        acc_t = float(np.mean(net(adv_t).argmax(1).numpy() == yte))
        gflops = steps * flop_per_step / mj / 1e9 if steps else float("nan")
        rows.append(dict(attack=name, peer=peer, robustjax_s=mj, peer_s=mt, ratio=mt / mj,
                         robustjax_compile_s=compile_s, robustjax_spread=(min(tj), max(tj)),
                         peer_spread=(min(tt), max(tt)), robust_acc_robustjax=acc_j,
                         robust_acc_peer=acc_t, robustjax_gflops=gflops,
                         fraction_of_peak=gflops / peak))
    print("\n| attack | robustjax s | peer | peer s | ratio (peer / robustjax) | robust acc. "
          "robustjax / peer | robustjax GFLOP/s (of peak) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        label = labels[r["attack"]]
        print(f"| {label} | {r['robustjax_s']:.2f} ({r['robustjax_spread'][0]:.2f}-"
              f"{r['robustjax_spread'][1]:.2f}) | {r['peer']} | {r['peer_s']:.2f} "
              f"({r['peer_spread'][0]:.2f}-{r['peer_spread'][1]:.2f}) | {r['ratio']:.2f}x | "
              f"{r['robust_acc_robustjax']:.1%} / {r['robust_acc_peer']:.1%} | "
              + (f"{r['robustjax_gflops']:.0f} ({r['fraction_of_peak']:.0%}) |"
                 if r["robustjax_gflops"] == r["robustjax_gflops"] else "n/a |"))
    layer_rows = []
    if _PER_LAYER.value:
        layer_batch, layer_steps = min(n, 100), 10  # the stock layers are slow: keep it short
        layer_rows = _per_layer(layer_batch, layer_steps)
        print(f"\nPer convolution, forward + input gradient, batch {layer_batch}, {layer_steps} "
              f"steps in a fori_loop (peak {peak:.0f} GFLOP/s):\n")
        print("| layer | GFLOP | stock ms | stock GFLOP/s | rewritten ms | rewritten GFLOP/s "
              "(of peak) |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in layer_rows:
            print(f"| {r['layer']} | {r['gflop']:.1f} | {r['stock_ms']:.0f} | "
                  f"{r['stock_gflops']:.0f} | {r['rewritten_ms']:.0f} | "
                  f"{r['rewritten_gflops']:.0f} ({r['rewritten_gflops'] / peak:.0%}) |")
    bench_flags.write_json(_JSON_OUT.value, dict(cpu=cpu, threads=threads, xla_flags=xla_flags,
                                                 fast_grad=_FAST_GRAD.value, jax=jax.__version__,
                                                 torch=torch.__version__, examples=n, clean_acc=clean_acc,
                                                 peak_gflops=peak, peak_jax_gflops=peak_jax,
                                                 peak_torch_gflops=peak_torch, flop_per_step=flop_per_step, rows=rows,
                                                 per_layer=layer_rows))


if __name__ == "__main__":
    app.run(main)
