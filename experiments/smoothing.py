r"""Randomized smoothing's certified L2 robustness (Cohen, Rosenfeld & Kolter, ICML 2019).

  python -m experiments.smoothing --workdir=WD [--sigma=0.25] [--n0=100] [--n=100000] \
      [--alpha=0.001] [--examples=500] [--skip=1] [--batch=1000] [--aa_radii=0.5,1.0]
  python -m experiments.smoothing --model=ID --checkpoint=FILE --dataset=cifar10 \
      --sigma=0.25 --examples=500 --skip=20

CERTIFY (Algorithm 1) of the smoothed classifier of the workdir's (or the zoo's) model on
every --skip-th test example, --examples of them: the paper's table, one row per example
(index, label, prediction or -1 for abstain, certified radius, correct, n_A, the bound
p_A, seconds), in OUT/smoothing.json with the certified accuracy at --radii, and a
markdown summary in OUT/smoothing.md; the figure OUT/smoothing.png (certified accuracy
against the L2 radius, the paper's Figure 6-7 style), with the empirical robust accuracy of
the smoothed classifier at --aa_radii beside it: APGD-CE and APGD-T in L2 on the soft
smoothed classifier (the mean softmax over --aa_samples noise draws, as SmoothAdv attacks
it), each attacked point then classified by PREDICT with --aa_n samples. That accuracy is
an upper bound on the true robust accuracy, which the certified curve bounds from below
(each certificate holds with probability 1 - alpha). OUT defaults to WD/smoothing_SIGMA
(--output_dir). Finished chunks of examples are kept in OUT/rows: rerunning the same command
resumes, with the same table.

--sigma defaults to the workdir's noise_sigma when it was trained with --objective=gaussian or
smoothadv. On the 2,000 test digits of shared/data/mnist-10k, MnistCNN(4) trained with
Gaussian noise (benchmarks/smoothing_mnist10k_cpu.sh): see benchmarks/RESULTS.md,
"Randomized smoothing", for the certified accuracies and the time against ART.
"""

import os
import time

from absl import app, flags

from experiments import eval_flags
from experiments.cli import one_line_errors

eval_flags.model("Training workdir of the base classifier")
flags.DEFINE_string("model", None, "Instead of --workdir: a zoo registry ID or architecture.")
flags.DEFINE_string("checkpoint", None, "With --model: the weights file.")
flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100"], "With --model: the test set.")
flags.DEFINE_float("sigma", None, "Noise level sigma (default: the workdir's noise_sigma).")
flags.DEFINE_integer("n0", 100, "CERTIFY's selection samples per example.")
flags.DEFINE_integer("n", 100_000, "CERTIFY's estimation samples per example.")
flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate, in (0, 1).")
flags.DEFINE_integer("batch", 1000, "Noisy copies of each example per forward pass.")
eval_flags.examples(500, "Examples to certify (-1: every --skip-th test example).")
flags.DEFINE_integer("skip", 1, "Certify every K-th test example (Cohen et al.'s --skip).")
flags.DEFINE_integer("chunk", 20, "Examples per stored chunk (the unit of resuming).")
flags.DEFINE_list("radii", ["0", "0.25", "0.5", "0.75", "1.0"],
                  "Radii of the summary's certified accuracies.")
flags.DEFINE_list("aa_radii", ["0", "0.5", "1.0"], "L2 radii of the empirical points "
                  "(APGD-CE + APGD-T on the soft smoothed classifier; at 0, PREDICT on the "
                  "clean inputs); empty: none.")
flags.DEFINE_integer("aa_steps", 100, "APGD iterations of the empirical points.")
flags.DEFINE_integer("aa_samples", 8, "Noise draws of the soft smoothed classifier attacked.")
flags.DEFINE_integer("aa_n", 1000, "PREDICT's samples at each attacked point.")
eval_flags.run("WORKDIR/smoothing_SIGMA")
FLAGS = flags.FLAGS
for _name in ("skip", "chunk", "aa_steps", "aa_samples", "aa_n", "batch", "n0", "n"):
    flags.register_validator(_name, lambda v: v >= 1, message=f"--{_name} must be >= 1")
flags.register_validator("alpha", lambda v: 0 < v < 1, message="--alpha must lie in (0, 1)")
flags.register_validator("sigma", lambda v: v is None or v > 0, message="--sigma must be > 0")


def _floats(name: str, values) -> list:
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be numbers, got {','.join(values)}") from None
    if any(not v >= 0 for v in out):
        raise app.UsageError(f"--{name} must be >= 0, got {','.join(values)}")
    return out


def _model_and_data():
    """``(logits_fn, x, y, indices, sigma, output root, what)`` of --workdir or --model."""
    import numpy as np

    from robustjax.data import datasets as data
    from robustjax.training.config import NOISE_OBJECTIVES

    sigma = FLAGS.sigma
    if FLAGS.model:
        from robustjax import zoo
        if not FLAGS.checkpoint:
            raise app.UsageError("--checkpoint (the model's weights file) is required with "
                                 "--model")
        logits_fn = zoo.load(FLAGS.model, FLAGS.checkpoint, dataset=FLAGS.dataset)
        dataset, data_dir, root, what = FLAGS.dataset, FLAGS.data_dir, ".", FLAGS.model
    else:
        from robustjax import training as train
        run = train.load_run(FLAGS.workdir)
        cfg = run.config
        logits_fn, dataset, root = run.logits_fn, cfg.data.dataset, FLAGS.workdir
        data_dir, what = FLAGS.data_dir or cfg.data.data_dir, os.path.abspath(FLAGS.workdir)
        if sigma is None and cfg.loss.objective in NOISE_OBJECTIVES:
            sigma = cfg.loss.noise_sigma
    if sigma is None:
        raise app.UsageError("--sigma is required (the model was not trained with noise)")
    x, y = data.load(dataset, "test", data_dir)
    idx = np.arange(0, len(x), FLAGS.skip)
    idx = idx if FLAGS.examples == -1 else idx[:FLAGS.examples]
    return logits_fn, x[idx].astype(np.float32) / 255.0, y[idx], idx, sigma, root, what


@one_line_errors
def main(argv):
    eval_flags.no_arguments(argv)
    from experiments.log_setup import setup_logging
    setup_logging()
    import jax

    from robustjax import smoothing
    from robustjax.runtime import mesh

    radii = _floats("radii", FLAGS.radii)
    aa_radii = _floats("aa_radii", FLAGS.aa_radii)
    logits_fn, x, y, idx, sigma, root, what = _model_and_data()
    out = FLAGS.output_dir or os.path.join(root, f"smoothing_{sigma:g}")
    key = jax.random.PRNGKey(FLAGS.seed)
    t0 = time.time()

    def progress(done, total, rows):
        if mesh.is_primary():
            s = smoothing.table.summary(rows, [0.0])
            eta = (time.time() - t0) / done * (total - done)
            print(f"[{time.time() - t0:7.1f}s] {done}/{total} examples  certified at r=0: "
                  f"{100 * s['certified_accuracy'][0]:.1f}%  abstain {100 * s['abstain']:.1f}%  "
                  f"{s['seconds_per_example']:.2f} s/example  ETA {eta:.0f}s", flush=True)

    rows = smoothing.certify_table(
        logits_fn, x, y, key, sigma=sigma, n0=FLAGS.n0, n=FLAGS.n, alpha=FLAGS.alpha,
        batch=FLAGS.batch, indices=idx, chunk=FLAGS.chunk, resume_dir=os.path.join(out, "rows"),
        progress=progress)
    summary = smoothing.table.summary(rows, radii)
    empirical = _empirical_points(logits_fn, x, y, idx, sigma, aa_radii, key, out)
    results = dict(sigma=sigma, n0=FLAGS.n0, n=FLAGS.n, alpha=FLAGS.alpha, batch=FLAGS.batch,
                   skip=FLAGS.skip, model=what, seed=FLAGS.seed, summary=summary,
                   empirical=empirical, seconds=time.time() - t0, devices=jax.device_count(),
                   device=jax.devices()[0].device_kind, jax=jax.__version__, rows=rows)
    if mesh.is_primary():
        _write(out, results)


def _empirical_points(logits_fn, x, y, idx, sigma, radii, key, out) -> list:
    """APGD-CE + APGD-T (L2) on the soft smoothed classifier at each radius, each attacked
    point classified by PREDICT: upper bounds on the smoothed classifier's robust accuracy."""
    if not radii:
        return []
    import jax
    import numpy as np

    from robustjax import autoattack, eot, smoothing

    def noisy(z, k):
        return logits_fn(z + sigma * jax.random.normal(k, z.shape, z.dtype))

    soft = eot(noisy, FLAGS.aa_samples, key=jax.random.fold_in(key, 1), average="log_probs")
    points = []
    for r in radii:
        t0 = time.time()
        x_att, soft_acc = x, None
        if r > 0:
            res = autoattack(soft, x, y, key, eps=r, norm="l2", version="custom",
                             attacks=["apgd-ce", "apgd-t"], num_steps=FLAGS.aa_steps,
                             batch_size=min(len(x), 100), inspect=False,
                             resume_dir=os.path.join(out, f"autoattack_{r:g}"))
            x_att, soft_acc = res.x_adv, res.robust_accuracy
        pred = smoothing.predict(logits_fn, x_att, jax.random.fold_in(key, 2), sigma=sigma,
                                 n=FLAGS.aa_n, alpha=FLAGS.alpha, indices=idx).prediction
        points.append(dict(radius=r, accuracy=float(np.mean(pred == y)),
                           soft_accuracy=soft_acc, seconds=time.time() - t0))
        print(f"radius {r:g}: PREDICT of the smoothed classifier at the attacked points "
              f"{100 * points[-1]['accuracy']:.1f}%" + (
                  "" if soft_acc is None else f" (soft classifier {100 * soft_acc:.1f}%)"),
              flush=True)
    return points


def _write(out: str, results: dict) -> None:
    from experiments import figures

    os.makedirs(out, exist_ok=True)
    figures.write_json(os.path.join(out, "smoothing.json"), results)
    s = results["summary"]
    lines = [f"Randomized smoothing (Cohen et al. 2019), sigma {results['sigma']:g}, "
             f"n0 {results['n0']}, n {results['n']}, alpha {results['alpha']:g}, "
             f"{s['examples']} examples; abstained on {100 * s['abstain']:.1f}%, "
             f"{s['seconds_per_example']:.2f} s per example.", "",
             "| L2 radius | " + " | ".join(f"{r:g}" for r in s["radii"]) + " |",
             "|---|" + "---:|" * len(s["radii"]),
             "| certified accuracy | "
             + " | ".join(f"{100 * a:.1f}%" for a in s["certified_accuracy"]) + " |"]
    if results["empirical"]:
        pts = results["empirical"]
        lines += ["", "| L2 radius | " + " | ".join(f"{p['radius']:g}" for p in pts) + " |",
                  "|---|" + "---:|" * len(pts),
                  "| APGD-CE + APGD-T on the soft smoothed classifier, then PREDICT (upper "
                  "bound) | " + " | ".join(f"{100 * p['accuracy']:.1f}%" for p in pts) + " |"]
    with open(os.path.join(out, "smoothing.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _figure(out, results)
    print(f"results: {os.path.join(out, 'smoothing.json')}, smoothing.md and smoothing.png")


def _figure(out: str, results: dict) -> None:
    from experiments import figures

    plt = figures.pyplot()
    if plt is not None:
        plot(plt, [results], os.path.join(out, "smoothing.png"))


def plot(plt, runs: list, path: str) -> None:
    """Certified accuracy against the L2 radius of each run's results (``smoothing.json``),
    one colour per run, with its empirical points (upper bounds) beside it."""
    import numpy as np

    from robustjax.smoothing import stats

    top = max(max([r["radius"] for r in run["rows"]] + [p["radius"] for p in run["empirical"]])
              for run in runs)
    grid = np.linspace(0.0, max(1.0, 1.05 * top), 400)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for k, run in enumerate(runs):
        rows, color, sigma = run["rows"], f"C{k}", run["sigma"]
        acc = stats.certified_accuracy([r["predict"] for r in rows], [r["radius"] for r in rows],
                                       [r["label"] for r in rows], grid)
        ax.plot(grid, 100 * acc, color=color,
                label=f"certified, sigma {sigma:g} (n {run['n']:,}, {len(rows)} examples)")
        if run["empirical"]:
            pts = run["empirical"]
            ax.plot([p["radius"] for p in pts], [100 * p["accuracy"] for p in pts], "v--",
                    color=color, alpha=0.7,
                    label=f"APGD-L2 on the smoothed classifier, sigma {sigma:g} (upper bound)")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("accuracy of the smoothed classifier (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
