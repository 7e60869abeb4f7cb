r"""The loss landscape over random restarts: Madry et al. Figures 1 and 2 (Section 3).

  python -m experiments.loss_landscape --workdir=ADV [--natural_workdir=NAT] \
      [--restarts=100000] [--examples=5] [--steps=100] [--step_size=0.01] [--eps=0.3] \
      [--chunk_size=1000] [--trajectories=20] [--data_dir=DIR] [--output_dir=DIR]

For each of the first M test examples, PGD runs from N uniformly random starts
in the eps-ball (vectorised over restarts, N / chunk_size compiled calls of
one shape), for each model. Writes to OUTPUT_DIR (default ADV/loss_landscape):

* ``landscape.json``: the settings; per model and example, the mean, std,
  min and max of the final losses, the fraction of restarts that fool the
  model, the histogram (50 bins) and the loss along the first 20 trajectories;
* ``landscape.npz``: every final loss, ``final_<model index>`` of shape [M, N];
* ``loss_trajectories.png`` (Figure 1: the cross-entropy against the PGD
  iteration, 20 runs per example as light lines, one panel per model) and
  ``loss_histograms.png`` (Figure 2: per example, the histogram of the N final
  losses, log-scale counts, one row per model).

The paper's setting is N = 10^5 restarts on 5 examples, PGD of step 0.01 at
eps 0.3 on MNIST (steps until the loss plateaus; 100 here) and 2/255 at 8/255
on CIFAR-10: a GPU job (10^6 forward-backward passes per example and model
for MNIST). A CPU setting for the 2-core machine:
``--restarts=10000 --steps=100 --chunk_size=500`` (about 30 minutes for two MNIST
models of width 8; at 40 steps the loss of the PGD-trained model is still
rising, at 100 it has plateaued). What the paper found, and
benchmarks/figures_mnist10k_cpu.sh reproduces on real digits: the final losses
of the adversarially trained model are low and concentrated, without
outliers; the naturally trained model's are large (every restart fools it).
"""

import logging
import os
import time

import numpy as np
from absl import app, flags

from experiments import eval_flags, figures
from experiments.cli import one_line_errors

eval_flags.model("Adversarially trained model's workdir", natural=True)
flags.DEFINE_integer("restarts", 100_000, "Random starts per example (the paper: 10^5).")
eval_flags.examples(5, "First M test examples (the paper: 5).")
flags.DEFINE_integer("steps", 100, "PGD iterations per restart.")
flags.DEFINE_float("step_size", None, "PGD step (default: the run's evaluation step, 0.01 "
                   "on MNIST, 2/255 on CIFAR-10).")
flags.DEFINE_float("eps", None, "L-inf radius (default: the training eps).")
flags.DEFINE_integer("chunk_size", 1000, "Restarts per compiled call.")
flags.DEFINE_integer("trajectories", 20, "Trajectories per example kept for Figure 1.")
flags.DEFINE_integer("bins", 50, "Histogram bins (Figure 2).")
eval_flags.run("WORKDIR/loss_landscape", "Seed of the random starts.")
FLAGS = flags.FLAGS
log = logging.getLogger("robustjax.figures")

for _name in ("restarts", "chunk_size", "bins"):
    flags.register_validator(_name, lambda v: v >= 1, message=f"--{_name} must be >= 1")
flags.register_validator("steps", lambda v: v >= 0, message="--steps must be >= 0")
flags.register_validator("trajectories", lambda v: v >= 0, message="--trajectories must be >= 0")
flags.register_validator("eps", lambda v: v is None or v >= 0, message="--eps must be >= 0")
flags.register_validator("step_size", lambda v: v is None or v > 0,
                         message="--step_size must be > 0")


def plot_trajectories(plt, result: dict, path: str) -> None:
    """Figure 1: loss against the PGD iteration, light lines, one panel per model."""
    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, m in zip(axes[0], models):
        for j, ex in enumerate(m["examples"]):
            for t in ex["trajectories"]:
                ax.plot(t, color=colors[j % 10], alpha=0.35, lw=0.8)
            ax.plot([], [], color=colors[j % 10], label=f"test example {ex['index']}")
        ax.set_title(f"{m['label']} model")
        ax.set_xlabel("PGD iteration")
        ax.set_ylabel("Cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    s = result["settings"]
    fig.suptitle(f"{result['dataset']}: loss along {s['trajectories']} PGD runs per example "
                 f"(random starts, L-inf eps {s['eps']:g}, step {s['step_size']:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histograms(plt, result: dict, path: str) -> None:
    """Figure 2: per example, histograms of the final losses (log counts), a row per model."""
    models = result["models"]
    m_ex = len(models[0]["examples"])
    fig, axes = plt.subplots(len(models), m_ex, figsize=(2.6 * m_ex, 2.4 * len(models)),
                             squeeze=False)
    colors = ("tab:red", "tab:blue", "tab:green", "tab:orange")
    for r, m in enumerate(models):
        for c, ex in enumerate(m["examples"]):
            ax = axes[r][c]
            h = ex["histogram"]
            edges = np.asarray(h["edges"])
            ax.stairs(h["counts"], edges, fill=True, color=colors[r % 4], alpha=0.8)
            ax.set_yscale("log")
            ax.set_ylim(0.7, result["settings"]["restarts"] * 1.5)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(f"test example {ex['index']}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{m['label']}\ncount", fontsize=8)
            if r == len(models) - 1:
                ax.set_xlabel("final loss", fontsize=8)
    s = result["settings"]
    fig.suptitle(f"{result['dataset']}: final cross-entropy of PGD-{s['steps']} from "
                 f"{s['restarts']:,} random starts per example", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@one_line_errors
def main(argv):
    models, x, y = figures.start_from_flags(argv)
    import jax

    from robustjax.evaluation import landscape
    from robustjax.runtime import mesh

    cfg = models[0].run.config
    eps = cfg.threat.eps if FLAGS.eps is None else FLAGS.eps
    step = cfg.evaluation.eval_attack_step_size if FLAGS.step_size is None else FLAGS.step_size
    settings = dict(restarts=FLAGS.restarts, examples=len(x), steps=FLAGS.steps,
                    step_size=step, eps=eps, norm="linf", loss="xent",
                    trajectories=min(FLAGS.trajectories, FLAGS.restarts),
                    chunk_size=FLAGS.chunk_size, seed=FLAGS.seed)
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "loss_landscape")
    result = dict(dataset=cfg.data.dataset, split="test", settings=settings, models=[],
                  jax=jax.__version__, device=jax.devices()[0].device_kind)
    finals = {}
    total = len(models) * len(x) * FLAGS.restarts
    done, t0 = 0, time.time()
    for k, model in enumerate(models):
        def progress(i, n_done, base=done):
            rate = (base + i * FLAGS.restarts + n_done) / max(time.time() - t0, 1e-9)
            left = total - base - i * FLAGS.restarts - n_done
            log.info("%s model, example %d/%d: %d/%d restarts, %.0f restarts/s, ETA %.0fs",
                     model.label, i + 1, len(x), n_done, FLAGS.restarts, rate, left / rate)
        start = time.time()
        res = landscape.restart_losses(
            model.run.logits_fn, x, y, jax.random.PRNGKey(FLAGS.seed), eps=eps, step_size=step,
            num_steps=FLAGS.steps, restarts=FLAGS.restarts, chunk_size=FLAGS.chunk_size,
            keep_trajectories=FLAGS.trajectories, progress=progress)
        done += len(x) * FLAGS.restarts
        finals[f"final_{k}"] = res.final
        examples = []
        for i, (s, h) in enumerate(zip(landscape.summaries(res),
                                       landscape.histograms(res.final, FLAGS.bins))):
            examples.append(dict(index=i, label=int(y[i]), **s, histogram=h,
                                 trajectories=res.trajectories[i].tolist()))
            log.info("%s model, example %d: final loss mean %.4g std %.3g min %.4g max "
                     "%.4g, %.1f%% of restarts fool it", model.label, i, s["mean"], s["std"],
                     s["min"], s["max"], 100 * s["fooled_fraction"])
        result["models"].append(dict(figures.model_info(model), examples=examples,
                                     seconds=time.time() - start))
    if not mesh.is_primary():  # process 0 writes the files
        return
    os.makedirs(out, exist_ok=True)
    np.savez_compressed(os.path.join(out, "landscape.npz"), **finals)
    figures.write_json(os.path.join(out, "landscape.json"), result)
    plt = figures.pyplot()
    if plt is not None:
        plot_trajectories(plt, result, os.path.join(out, "loss_trajectories.png"))
        plot_histograms(plt, result, os.path.join(out, "loss_histograms.png"))
    print(f"results: {out}/landscape.json, landscape.npz, loss_trajectories.png, "
          "loss_histograms.png")


if __name__ == "__main__":
    app.run(main)
