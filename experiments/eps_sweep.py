r"""Accuracy against eps for L-inf, L2 or L1 adversaries (Madry et al. Section 5 and appendix).

  python -m experiments.eps_sweep --workdir=ADV [--natural_workdir=NAT] --norm=linf|l2|l1 \
      [--eps=0,0.1,...] [--attacks=pgd,apgd,square] [--examples=1000] [--num_steps=100] \
      [--num_queries=5000] [--min_norm=fmn,ddn,cw_l2,fab] [--batch_size=500] \
      [--data_dir=DIR] [--output_dir=DIR]

For each model and attack, the robust accuracy at each eps on the first N test
examples, from validated adversarial examples; under them, the accuracy
certified by each verifier of --certify (default IBP and CROWN-IBP), checked
example by example against every attack (a certified example that an attack
breaks stops the sweep with an error). eps is traced, so each attack
compiles once per model. PGD takes 2.5 eps / k steps (k = --num_steps), APGD
and Square their AutoAttack settings. Writes OUTPUT_DIR/eps_sweep_<norm>.json
(curves, per-example results, the gradient-masking checks) and .md, and
eps_sweep_<norm>.png: one curve per model and attack, the training eps marked.
OUTPUT_DIR defaults to ADV/eps_sweep.

--min_norm adds the whole curve from one run of each minimum-norm attack given (FMN,
DDN and CW-L2 for L2 only, FAB; --num_steps steps): every example's smallest adversarial
distance, and the accuracy at every eps from them (robustjax.curve_from_norms), drawn as
a step curve beside the fixed-eps attacks' points, the median distance in the legend.
Like them it is an upper bound on the robust accuracy; where it lies more than 5 points
above the best fixed-eps attack at some eps, the plot and the warnings say so.

--smoothing_sigma=S adds the "smoothing-certified" curve: CERTIFY (Cohen et al. 2019,
--smoothing_n0/--smoothing_n/--smoothing_alpha) of the model's smoothed classifier at noise
S, its accuracy certified at each eps (L2; an L-inf eps as the L2 radius eps * sqrt(d) that
covers its ball). It bounds the smoothed classifier, not the model the attacks run on, so it
is not checked against them (experiments.smoothing gives the whole radius curve).

The checks, printed and in the JSON (a failure is a warning, not an error):
accuracy at eps 0 equals clean accuracy; accuracy does not rise with eps
beyond sampling noise; it reaches (near) zero at the largest eps; at the
training eps under the training norm (the run's train_norm), the gradient-free
attack is not much stronger than the gradient attacks.

The paper's appendix finding on MNIST, reproduced by
benchmarks/figures_mnist10k_cpu.sh: the L-inf-trained model keeps a high L2
accuracy under PGD up to large eps, while a gradient-free attack (Square
here) breaks it at far smaller eps. The default eps lists: MNIST L-inf 0 to 0.5,
L2 0 to 6, L1 0 to 20; CIFAR-10 L-inf 0 to 16/255, L2 0 to 2, L1 0 to 24. L1
attacks are L1 PGD (sparse steps, the exact projection onto the L1 ball and
the box), l1-APGD and Square-L1.
"""

import logging
import os
import time

import numpy as np
from absl import app, flags

from experiments import eval_flags, figures
from experiments.cli import one_line_errors
from robustjax.evaluation.sweeps import SWEEP_ATTACKS

DEFAULT_EPS = {
    ("mnist", "linf"): [0, .05, .1, .15, .2, .25, .3, .35, .4, .5],
    ("mnist", "l2"): [0, .5, 1, 1.5, 2, 2.5, 3, 4, 5, 6],
    ("cifar10", "linf"): [e / 255 for e in (0, 1, 2, 4, 6, 8, 10, 12, 16)],
    ("cifar10", "l2"): [0, .1, .25, .5, .75, 1, 1.5, 2],
    ("mnist", "l1"): [0, 2, 4, 6, 8, 10, 12, 15, 20],
    ("cifar10", "l1"): [0, 2, 4, 6, 8, 12, 16, 24],
}
DEFAULT_EPS.update({("fashion_mnist", n): DEFAULT_EPS[("mnist", n)]
                    for n in ("linf", "l2", "l1")})
NORM_TITLES = {"linf": "L-inf", "l2": "L2", "l1": "L1"}

eval_flags.model("Adversarially trained model's workdir", natural=True)
flags.DEFINE_enum("norm", "linf", ["linf", "l2", "l1"], "Threat model of the sweep.")
flags.DEFINE_list("eps", None, "Radii (default: the dataset's list for --norm, see above).")
flags.DEFINE_list("attacks", ["pgd", "apgd", "square"],
                  "Attacks, from fgsm, pgd, apgd, apgd_t, square.")
flags.DEFINE_list("certify", ["ibp", "crown_ibp"],
                  "Verifiers whose certified-accuracy curves (the lower side of the bracket) "
                  "are drawn under the attack curves: from ibp, crown_ibp, crown (empty: none).")
flags.DEFINE_list("min_norm", [], "Minimum-norm attacks whose curve from per-example distances "
                  "is drawn beside the fixed-eps ones: from fmn, ddn, cw_l2, fab.")
eval_flags.examples(1000)
eval_flags.smoothing()
eval_flags.budget(num_steps="PGD / APGD iterations.")
eval_flags.run("WORKDIR/eps_sweep")
FLAGS = flags.FLAGS
log = logging.getLogger("robustjax.figures")

flags.register_validator("attacks", lambda v: bool(v) and set(v) <= set(SWEEP_ATTACKS),
                         message=f"--attacks must be a list from {','.join(SWEEP_ATTACKS)}")
flags.register_validator("certify", lambda v: set(v) <= {"ibp", "crown_ibp", "crown"},
                         message="--certify must be a list from ibp,crown_ibp,crown")
flags.register_validator("min_norm", lambda v: set(v) <= {"fmn", "ddn", "cw_l2", "fab"},
                         message="--min_norm must be a list from fmn,ddn,cw_l2,fab")
CERT_COLORS = dict(ibp="0.45", crown_ibp="black", crown="tab:brown", smoothing="tab:green")
MIN_NORM_COLORS = dict(fmn="tab:cyan", ddn="tab:olive", cw_l2="tab:pink", fab="tab:gray")
GAP_POINTS = 5.0  # a min-norm curve this far above the best fixed-eps attack is reported


def _eps_list(dataset: str, norm: str) -> list[float]:
    if FLAGS.eps is None:
        return [float(e) for e in DEFAULT_EPS[(dataset, norm)]]
    try:
        eps = [float(e) for e in FLAGS.eps]
    except ValueError:
        raise app.UsageError(f"--eps must be a comma-separated list of numbers, got "
                             f"{','.join(FLAGS.eps)}") from None
    if not eps or min(eps) < 0 or not all(np.isfinite(eps)):
        raise app.UsageError(f"--eps must hold finite numbers >= 0, got {','.join(FLAGS.eps)}")
    return sorted(set(eps))


def plot(plt, result: dict, path: str) -> None:
    """Accuracy against eps: colour per attack, line style per model, training eps marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = dict(zip(("pgd", "apgd", "apgd_t", "fgsm", "square"),
                      ("tab:blue", "tab:purple", "tab:green", "tab:orange", "tab:red")))
    styles = ("-o", "--s", ":^", "-.v")
    for k, m in enumerate(result["models"]):
        for name, c in m["curves"].items():
            ax.plot(c["eps"], [100 * a for a in c["accuracy"]], styles[k % 4], ms=3.5,
                    color=colors.get(name, "black"), label=f"{m['label']}: {name}")
        for name, c in m.get("certified", {}).items():
            ax.plot(c["eps"], [100 * a for a in c["accuracy"]], "--x", ms=4, lw=1.6,
                    color=CERT_COLORS.get(name, "gray"),
                    label=f"{m['label']}: {name}-certified")
    for k, m in enumerate(result["models"]):
        for name, c in m.get("min_norm", {}).items():
            ax.step(c["grid"], [100 * a for a in c["grid_accuracy"]], where="post", lw=1.4,
                    ls=("-", "--", ":", "-.")[k % 4], color=MIN_NORM_COLORS.get(name, "black"),
                    label=f"{m['label']}: {name} (min-norm, median {c['median']:.3g})")
            for gap in c.get("gaps", [])[:1]:
                ax.annotate(f"{name} {gap['points']:.0f} pts above the\nfixed-eps attacks",
                            (gap["eps"], 100 * gap["accuracy"]), fontsize=7, color="0.25",
                            xytext=(8, 8), textcoords="offset points",
                            arrowprops=dict(arrowstyle="->", color="0.4", lw=0.7))
    train_eps = result["models"][0]["train_eps"]
    if result["norm"] == result["models"][0].get("train_norm", "linf"):
        ax.axvline(train_eps, color="gray", lw=0.8, ls=":")
        ax.text(train_eps, 2, f" training eps {train_eps:g}", fontsize=8, color="gray")
    ax.set_xlabel(f"eps ({NORM_TITLES[result['norm']]})")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    ax.set_title(f"{result['dataset']}: accuracy against {result['norm']} eps "
                 f"({result['n_examples']} test examples)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    eps = result["models"][0]["curves"][next(iter(result["models"][0]["curves"]))]["eps"]
    lines = ["| Model | Attack | " + " | ".join(f"{e:g}" for e in eps) + " |",
             "|---|---|" + "---:|" * len(eps)]
    for m in result["models"]:
        for name, c in m["curves"].items():
            lines.append(f"| {m['label']} | {name} | " +
                         " | ".join(f"{100 * a:.1f}" for a in c["accuracy"]) + " |")
        for name, c in m.get("certified", {}).items():
            lines.append(f"| {m['label']} | {name}-certified | " +
                         " | ".join(f"{100 * a:.1f}" for a in c["accuracy"]) + " |")
        for name, c in m.get("min_norm", {}).items():
            lines.append(f"| {m['label']} | {name} (min-norm, median {c['median']:.4g}) | " +
                         " | ".join(f"{100 * a:.1f}" for a in c["accuracy"]) + " |")
    return "\n".join(lines)


def _min_norm_curves(model, x, y, eps, curves, key, out_dir) -> tuple[dict, list]:
    """One run of each --min_norm attack: the curve from its distances, and its gaps above
    the best fixed-eps attack (more than GAP_POINTS points)."""
    import jax

    from robustjax.evaluation import distances

    out, warnings = {}, []
    grid = np.linspace(0.0, max(eps) * 1.05, 211)
    best_fixed = (np.min([c.accuracy for c in curves.values()], axis=0) if curves
                  else None)
    for j, name in enumerate(FLAGS.min_norm):
        t0 = time.time()
        attack = distances.min_norm_attack(name, model.run.logits_fn, norm=FLAGS.norm,
                                           steps=FLAGS.num_steps)
        res = distances.minimum_norms(
            model.run.logits_fn, x, y, jax.random.fold_in(key, 1000 + j), attack, norm=FLAGS.norm,
            batch_size=FLAGS.batch_size, settings=dict(attack=name, steps=FLAGS.num_steps),
            resume_dir=os.path.join(out_dir, f"min_norm_{model.label}_{name}_{FLAGS.norm}"))
        acc = res.curve(eps)
        entry = dict(eps=list(eps), accuracy=acc.tolist(), median=res.median(),
                     grid=grid.tolist(), grid_accuracy=res.curve(grid).tolist(),
                     norms=[float(v) for v in res.norms], seconds=time.time() - t0,
                     forward=int(res.forward.sum()), backward=int(res.backward.sum()), gaps=[])
        if best_fixed is not None:
            for e, a, b in zip(eps, acc, best_fixed):
                if 100 * (a - b) > GAP_POINTS:
                    entry["gaps"].append(dict(eps=e, accuracy=float(a), points=100 * (a - b)))
            if entry["gaps"]:
                g = max(entry["gaps"], key=lambda d: d["points"])
                warnings.append(f"{model.label}: the {name} curve lies {g['points']:.1f} points "
                                f"above the best fixed-eps attack at eps {g['eps']:g}")
        log.info("%s model, %s (min-norm): median %.4g, %s (%.0fs)", model.label, name,
                 res.median(), " ".join(f"{100 * a:.1f}" for a in acc), time.time() - t0)
        out[name] = entry
    return out, warnings


def _certified_curves(model, x, y, eps, curves) -> dict:
    """The certified curves of --certify, each checked against every attack curve."""
    from robustjax.evaluation import bracket
    from robustjax.evaluation import sweeps

    out = {}
    for method in FLAGS.certify:
        t0 = time.time()
        c = sweeps.certified_curve(model.run.logits_fn, x, y, eps, method=method,
                                   norm=FLAGS.norm)
        for j, e in enumerate(eps):  # a certified example broken by an attack is a bug
            bracket.check_bracket({method: c.correct[j]},
                                  {a: curve.correct[j] for a, curve in curves.items()}, eps=e)
        log.info("%s model, %s-certified: %s (%.0fs)", model.label, method,
                 " ".join(f"{100 * a:.1f}" for a in c.accuracy), time.time() - t0)
        out[method] = dict(eps=c.eps.tolist(), accuracy=c.accuracy.tolist(),
                           correct=["".join("1" if v else "0" for v in row) for row in c.correct],
                           seconds=time.time() - t0)
    return out


def _check_min_norm_flags() -> None:
    from robustjax.evaluation.distances import MIN_NORM_ATTACKS

    for name in FLAGS.min_norm:
        if FLAGS.norm not in MIN_NORM_ATTACKS[name]:
            raise app.UsageError(f"--min_norm={name} takes --norm from "
                                 f"{','.join(MIN_NORM_ATTACKS[name])}, got {FLAGS.norm}")


@one_line_errors
def main(argv):
    _check_min_norm_flags()
    models, x, y = figures.start_from_flags(argv)
    import jax

    from robustjax.runtime import mesh
    from robustjax.evaluation import sweeps

    cfg = models[0].run.config
    eps = _eps_list(cfg.data.dataset, FLAGS.norm)
    key = jax.random.PRNGKey(FLAGS.seed)
    result = dict(dataset=cfg.data.dataset, split="test", norm=FLAGS.norm, n_examples=len(x),
                  attacks=list(FLAGS.attacks), num_steps=FLAGS.num_steps,
                  num_queries=FLAGS.num_queries, seed=FLAGS.seed, models=[],
                  jax=jax.__version__, device=jax.devices()[0].device_kind)
    warnings = []
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "eps_sweep")
    for model in models:
        curves, entry = {}, dict(figures.model_info(model), curves={})
        for j, name in enumerate(FLAGS.attacks):
            t0 = time.time()
            attack = sweeps.sweep_attack(name, model.run.logits_fn, norm=FLAGS.norm,
                                         num_steps=FLAGS.num_steps, num_queries=FLAGS.num_queries)
            curve = sweeps.accuracy_curve(
                model.run.logits_fn, x, y, jax.random.fold_in(key, j), attack, eps,
                norm=FLAGS.norm, batch_size=FLAGS.batch_size,
                progress=lambda e, a, n=name: log.info(
                    "%s model, %s, eps %g: accuracy %.2f%% (%.0fs)", model.label, n, e, 100 * a,
                    time.time() - t0))
            curves[name] = curve
            entry["curves"][name] = dict(
                eps=curve.eps.tolist(), accuracy=curve.accuracy.tolist(),
                correct=["".join("1" if c else "0" for c in row) for row in curve.correct],
                seconds=time.time() - t0)
        entry["certified"] = _certified_curves(model, x, y, eps, curves)
        if FLAGS.smoothing_sigma > 0:  # of the smoothed classifier: no bracket with the attacks
            entry["certified"]["smoothing"] = eval_flags.smoothing_certified(
                model.run.logits_fn, x, y, eps, norm=FLAGS.norm,
                resume_dir=os.path.join(out, f"smoothing_{model.label}_{FLAGS.smoothing_sigma:g}"))
        entry["min_norm"], gap_warnings = _min_norm_curves(model, x, y, eps, curves, key, out)
        warnings += gap_warnings
        for line in gap_warnings:
            print(line)
        entry["clean_accuracy"] = next(iter(curves.values())).clean_accuracy
        entry["checks"] = sweeps.masking_checks(curves, train_eps=cfg.threat.eps,
                                                same_norm=FLAGS.norm == cfg.threat.train_norm)
        for c in entry["checks"]:
            line = (f"{model.label}: {c['check']} ({c['attack']}): "
                    f"{'ok' if c['passed'] else 'FAILED'}: {c['detail']}")
            print(line)
            if not c["passed"]:
                warnings.append(line)
        result["models"].append(entry)
    result["warnings"] = warnings
    if not mesh.is_primary():  # process 0 writes the files
        return
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, f"eps_sweep_{FLAGS.norm}")
    figures.write_json(base + ".json", result)
    table = markdown(result)
    with open(base + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    plt = figures.pyplot()
    if plt is not None:
        plot(plt, result, base + ".png")
    print(f"results: {base}.json, .md, .png")


if __name__ == "__main__":
    app.run(main)
