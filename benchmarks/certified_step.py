"""Cost of the certified-training losses (IBP, CROWN-IBP, with and without the gradient) and of
alpha-CROWN's margin bounds.

  python -m benchmarks.certified_step [--arch=dm_small] [--batch=100] [--repeats=5]

Times ``robustjax.certify.verifier.certified_loss`` (Gowal et al. 2018; Zhang et al. 2020) on random
MNIST-shaped inputs at eps 0.3, jitted, as the mean of ``--repeats`` calls after a warm-up.
Figures: benchmarks/RESULTS.md, "Certified robustness".
"""

import time

from absl import app, flags

flags.DEFINE_enum("arch", "dm_small", ["dm_small", "dm_medium", "dm_large"], "Network.")
flags.DEFINE_integer("batch", 100, "Batch size.", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed calls.", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp

    from robustjax.certify import verifier as certify
    from robustjax.models import paper as models

    m = models.DMCNN(arch=FLAGS.arch)
    x = jax.random.uniform(jax.random.PRNGKey(0), (FLAGS.batch, 28, 28, 1))
    y = jnp.arange(FLAGS.batch) % 10
    params = m.init(jax.random.PRNGKey(1), x)["params"]

    def loss(p, method, beta):
        f = lambda z: m.apply({"params": p}, z)  # noqa: E731
        return certify.certified_loss(f, x, y, eps=0.3, kappa=0.5, method=method,
                                      beta=beta)[0]

    cases = [("IBP loss", lambda p: loss(p, "ibp", None)),
             ("IBP loss + gradient", jax.grad(lambda p: loss(p, "ibp", None))),
             ("CROWN-IBP loss", lambda p: loss(p, "crown_ibp", 0.5)),
             ("CROWN-IBP loss + gradient", jax.grad(lambda p: loss(p, "crown_ibp", 0.5)))]
    for name, fn in cases:
        fn = jax.jit(fn)
        jax.block_until_ready(fn(params))
        t0 = time.time()
        for _ in range(FLAGS.repeats):
            jax.block_until_ready(fn(params))
        print(f"{name}: {(time.time() - t0) / FLAGS.repeats * 1000:.1f} ms "
              f"({FLAGS.arch}, batch {FLAGS.batch}, {jax.devices()[0].device_kind})", flush=True)
    if "alpha_crown" in getattr(certify, "METHODS", ()):    # landed with issue 30
        f = lambda z: m.apply({"params": params}, z)  # noqa: E731
        for method in ("crown", "alpha_crown"):
            certify.certified_margins(f, x[:2], y[:2], eps=0.3, method=method)   # compile
            t0 = time.time()
            certify.certified_margins(f, x, y, eps=0.3, method=method)
            print(f"{method} margin bounds (certified_margins, memory-sized chunks): "
                  f"{(time.time() - t0) * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    app.run(main)
