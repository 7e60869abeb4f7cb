"""CROWN and alpha-CROWN on a four-conv MNIST CNN: time, memory chunks, certified accuracy.

  /usr/bin/time -v python -m benchmarks.crown_cnn --data_dir=../shared/data/mnist-10k \\
      --examples=1000 --eps=0.005,0.01,0.02 --methods=crown,alpha_crown

The network is the one of issue 30's memory report: four 3x3 convolutions of 16
channels on 28x28 digits with a 2x2 max-pool after the second and the fourth,
then FC 100 and FC 10 (stock ``flax.linen`` layers). Its CROWN bounds hold one
coefficient per pair of neurons: the relaxed 14x14x16 layers (3,136 neurons)
back-propagate 3,136 rows over the 28x28x16 maps, about 1 GB per example, so
``certify.certified`` runs it in chunks sized to its memory budget (half the
free memory by default). The model is trained naturally for ``--steps`` Adam
steps on the digits (a few seconds) and cached in ``--workdir``.
Figures: benchmarks/RESULTS.md, "Certified robustness".
"""

import json
import os
import time

from absl import app, flags

flags.DEFINE_string("data_dir", "../shared/data/mnist-10k", "MNIST IDX files.")
flags.DEFINE_string("workdir", "workdirs/crown_cnn", "Where the trained parameters are kept.")
flags.DEFINE_integer("examples", 100, "First N test digits.", lower_bound=1)
flags.DEFINE_list("eps", ["0.005", "0.01", "0.02"], "L-inf radii.")
flags.DEFINE_list("methods", ["crown", "alpha_crown"], "Verifiers.")
flags.DEFINE_integer("steps", 600, "Natural-training steps.", lower_bound=1)
flags.DEFINE_float("memory_budget_gib", 0.0, "Memory budget (0: the default, half the free "
                   "memory).", lower_bound=0.0)
FLAGS = flags.FLAGS


def _model():
    import flax.linen as nn

    class FourConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(4):
                x = nn.relu(nn.Conv(16, (3, 3), padding="SAME")(x))
                if i % 2:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(100)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)
    return FourConv()


def _train(model, x, y):
    import jax
    import numpy as np
    import optax
    from flax import serialization

    path = os.path.join(FLAGS.workdir, f"params_{FLAGS.steps}.msgpack")
    params = model.init(jax.random.PRNGKey(0), x[:1])
    if os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.from_bytes(params, f.read())
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, xb, yb):
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            model.apply(q, xb), yb).mean()
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    for _ in range(FLAGS.steps):
        i = rng.integers(0, len(x), 50)
        params, state = step(params, state, x[i], y[i])
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(path, "wb") as f:
        f.write(serialization.to_bytes(params))
    return params


def main(argv):
    del argv
    import logging

    import jax
    import numpy as np

    from robustjax.certify import verifier as certify
    from robustjax.data import datasets as data

    logging.getLogger("robustjax.certify.verifier").setLevel(logging.INFO)
    xtr, ytr = data.load("mnist", "train", FLAGS.data_dir)
    xte, yte = data.load("mnist", "test", FLAGS.data_dir)
    xtr = xtr.astype(np.float32) / 255.0
    x = xte[:FLAGS.examples].astype(np.float32) / 255.0
    y = yte[:FLAGS.examples]
    model = _model()
    params = _train(model, xtr, ytr)
    f = lambda z: model.apply(params, z)  # noqa: E731
    clean = np.asarray(np.argmax(f(x), -1) == y)
    per, where = certify.memory_per_example(f, x.shape[1:], method="crown")
    budget = FLAGS.memory_budget_gib * 2**30 or None
    print(f"clean accuracy {clean.mean():.2%} on {len(x)} digits; CROWN needs about "
          f"{per / 2**30:.2f} GiB per example ({where}); free memory "
          f"{certify.available_memory() / 2**30:.1f} GiB", flush=True)
    out = dict(examples=len(x), clean=float(clean.mean()), gib_per_example=per / 2**30,
               device=jax.devices()[0].device_kind, rows=[])
    for method in FLAGS.methods:
        for eps in (float(e) for e in FLAGS.eps):
            t0 = time.time()
            ok = np.asarray(certify.certified(f, x, y, eps=eps, method=method,
                                              memory_budget=budget))
            dt = time.time() - t0
            assert not np.any(ok & ~clean), "a misclassified digit was certified"
            out["rows"].append(dict(method=method, eps=eps, certified=float(ok.mean()),
                                    seconds=dt))
            print(f"{method} eps {eps:g}: certified {ok.mean():.2%} in {dt:.1f} s", flush=True)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, f"crown_cnn_{len(x)}.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    app.run(main)
