r"""Certified and attacked robust accuracy of a trained workdir: the bracket on the truth.

  python -m experiments.certify --workdir=DIR [--data_dir=D] [--eps=E[,E2...]] \
      [--examples=N] [--methods=ibp,crown_ibp,crown] [--output_dir=O]

For each eps, on the first N test examples: clean accuracy, PGD-40 (step
2.5 eps / 40, random start), AutoAttack (standard) — upper bounds on the
robust accuracy — and the accuracy certified by IBP, CROWN-IBP and CROWN (and
alpha-CROWN on request; :mod:`robustjax.certify.verifier`) — lower bounds. CROWN runs in
chunks of examples sized to --memory_budget_gib (default: half the free memory).
Writes O/certify.json (rows in the shared schema, per-eps figures and per-example
"0101..." strings: clean, each attack, each method) and O/certify.md; O defaults to
DIR/certify. An example that is certified and yet broken by an attack is a bug:
the command stops with an error naming it (:func:`robustjax.evaluation.bracket.check_bracket`).
AutoAttack keeps its finished attacks in O/stages_EPS, so a rerun resumes.

On the 2,000 test digits of shared/data/mnist-10k, the IBP-trained DM-small
of benchmarks/certified_mnist10k_cpu.sh at eps 0.3: see benchmarks/RESULTS.md,
"Certified robustness", for the figures.
"""

import os
import time

from absl import app, flags

from experiments import eval_flags, figures
from experiments.cli import one_line_errors

eval_flags.model()
flags.DEFINE_list("eps", None, "L-inf radii (default: the training eps).")
flags.DEFINE_list("methods", ["ibp", "crown_ibp", "crown"],
                  "Verifiers: ibp, crown_ibp, crown, alpha_crown.")
flags.DEFINE_list("attacks", ["pgd", "autoattack"], "Attack rows: pgd, autoattack.")
eval_flags.examples(-1)
eval_flags.budget(num_steps="AutoAttack's APGD and FAB iterations (AutoAttack: 100).")
flags.DEFINE_integer("bound_batch_size", 256, "IBP / CROWN-IBP batch size.")
flags.DEFINE_integer("crown_batch_size", 256, "Most examples per CROWN / alpha-CROWN chunk "
                     "(chunks are also sized to --memory_budget_gib).")
flags.DEFINE_float("memory_budget_gib", 0.0, "Memory for the bounds, in GiB (0: half of the "
                   "free memory).", lower_bound=0.0)
flags.DEFINE_integer("pgd_steps", 40, "PGD steps.")
flags.DEFINE_integer("pgd_restarts", 1, "PGD restarts.")
eval_flags.run("WORKDIR/certify; certify.json and .md")
FLAGS = flags.FLAGS
for _name in ("bound_batch_size", "crown_batch_size", "pgd_steps", "pgd_restarts"):
    flags.register_validator(_name, lambda v: v >= 1, message=f"--{_name} must be >= 1")

TITLES = dict(pgd="PGD", autoattack="AutoAttack", ibp="IBP-certified",
              crown_ibp="CROWN-IBP-certified", crown="CROWN-certified",
              alpha_crown="alpha-CROWN-certified")


def _parse(cfg):
    from robustjax.evaluation import bracket
    from robustjax.certify import verifier as certify

    for m in FLAGS.methods:
        if m not in certify.METHODS:
            raise app.UsageError(f"--methods must be a list from {','.join(certify.METHODS)}, "
                                 f"got {m!r}")
    for a in FLAGS.attacks:
        if a not in bracket.ATTACK_ROWS:
            raise app.UsageError(f"--attacks must be a list from "
                                 f"{','.join(bracket.ATTACK_ROWS)}, got {a!r}")
    if FLAGS.eps is None:
        return [cfg.threat.eps]
    try:
        eps = [float(e) for e in FLAGS.eps]
    except ValueError:
        raise app.UsageError(f"--eps must be numbers, got {','.join(FLAGS.eps)}") from None
    if any(not (e >= 0 and e < float("inf")) for e in eps):
        raise app.UsageError(f"--eps must be finite and >= 0, got {','.join(FLAGS.eps)}")
    return eps


@one_line_errors
def main(argv):
    models, x, y = figures.start_from_flags(argv)
    import jax

    from robustjax.evaluation import bracket
    from robustjax.evaluation import suite
    from robustjax import training as train

    run = models[0].run
    cfg = run.config
    eps_list = _parse(cfg)
    n = len(x)
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "certify")
    os.makedirs(out, exist_ok=True)
    rows, per_eps = [], []
    t_all = time.time()
    for eps in eps_list:
        res = bracket.bracket(
            run.logits_fn, x, y, eps=eps, methods=FLAGS.methods, attack_rows=FLAGS.attacks,
            key=jax.random.PRNGKey(FLAGS.seed), pgd_steps=FLAGS.pgd_steps,
            pgd_restarts=FLAGS.pgd_restarts, batch_size=FLAGS.batch_size,
            autoattack_steps=FLAGS.num_steps, autoattack_queries=FLAGS.num_queries,
            bound_batch_size=FLAGS.bound_batch_size, crown_batch_size=FLAGS.crown_batch_size,
            memory_budget=FLAGS.memory_budget_gib * 2**30 or None,
            resume_dir=os.path.join(out, f"stages_{eps:g}"))
        entry = _entry(eps, res)
        per_eps.append(entry)
        rows.extend(_rows(eps, entry))
    settings = dict(seed=FLAGS.seed)       # only the settings of what ran
    if "pgd" in FLAGS.attacks:
        settings.update(pgd_steps=FLAGS.pgd_steps, pgd_restarts=FLAGS.pgd_restarts)
    if "autoattack" in FLAGS.attacks:
        settings.update(num_steps=FLAGS.num_steps, num_queries=FLAGS.num_queries)
    if FLAGS.memory_budget_gib:
        settings.update(memory_budget_gib=FLAGS.memory_budget_gib)
    results = dict(
        dataset=cfg.data.dataset, split="test", n_examples=int(n), norm="linf", **settings,
        methods=list(FLAGS.methods), attacks=list(FLAGS.attacks), seconds=time.time() - t_all,
        model=dict(arch=train.build_model(cfg).__class__.__name__, config_arch=cfg.model.arch,
                   width=cfg.model.width, params=run.params),
        training=dict(cfg.to_json(), final_step=run.step,
                      workdir=os.path.abspath(FLAGS.workdir)),
        jax=jax.__version__, device=jax.devices()[0].device_kind, eps=per_eps, rows=rows)
    suite.write_results(os.path.join(out, "certify.json"), results, table=False)
    md = bracket_table(per_eps) + "\n\n" + suite.markdown_table(rows) + "\n"
    with open(os.path.join(out, "certify.md.tmp"), "w") as f:
        f.write(md)
    os.replace(os.path.join(out, "certify.md.tmp"), os.path.join(out, "certify.md"))
    print(md)
    print(f"results: {os.path.join(out, 'certify.json')} and certify.md")


def bracket_table(per_eps: list) -> str:
    """| eps | clean | each attack | each verifier | certified (any) .. attacked | gap |."""
    first = per_eps[0]
    attacks, methods = list(first["attacked_acc"]), list(first["certified_acc"])
    head = (["eps", "clean"] + [TITLES[a] for a in attacks] + [TITLES[m] for m in methods]
            + ["bracket (certified .. attacked)", "gap"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    for e in per_eps:
        cells = ([f"{e['eps']:g}", pct(e["clean_acc"])]
                 + [pct(e["attacked_acc"][a]) for a in attacks]
                 + [pct(e["certified_acc"][m]) for m in methods]
                 + [f"{pct(e['lower'])} .. {pct(e['upper'])}", f"{100 * e['gap']:.2f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _entry(eps, res) -> dict:
    """Per-eps figures and per-example "0101..." strings (1: correct, robust or certified)."""
    import numpy as np

    attacked = np.logical_and.reduce([res["clean"]] + list(res["attacks"].values()))
    certified = np.logical_or.reduce([np.zeros_like(res["clean"])] +
                                     list(res["certified"].values()))
    acc = lambda a: float(np.mean(a))  # noqa: E731
    return dict(
        eps=float(eps), clean_acc=acc(res["clean"]),
        attacked_acc={k: acc(v) for k, v in res["attacks"].items()},
        certified_acc={k: acc(v) for k, v in res["certified"].items()},
        upper=acc(attacked), lower=acc(certified), gap=acc(attacked) - acc(certified),
        seconds=res["seconds"],
        per_example={k: "".join("1" if b else "0" for b in v) for k, v in
                     [("clean", res["clean"])] + list(res["attacks"].items()) +
                     list(res["certified"].items())})


def _rows(eps, entry) -> list:
    """Rows in the shared schema: Natural, the attacks, the verifiers, the bracket."""
    from robustjax.evaluation import suite

    rows = [suite.AttackSpec("Natural", attack="natural", eps=eps).row(entry["clean_acc"])]
    for name, acc in entry["attacked_acc"].items():
        attack = "pgd" if name == "pgd" else "autoattack"
        spec = suite.AttackSpec(f"{TITLES[name]}-{FLAGS.pgd_steps}" if name == "pgd"
                                else TITLES[name], attack=attack, eps=eps,
                                steps=FLAGS.pgd_steps if name == "pgd" else None,
                                step_size=2.5 * eps / FLAGS.pgd_steps if eps > 0 else 0.01,
                                restarts=FLAGS.pgd_restarts if name == "pgd" else 1)
        rows.append(dict(spec.row(acc), bound="upper"))
    for name, acc in entry["certified_acc"].items():
        rows.append(dict(name=TITLES[name], attack="certified", method=name, norm="linf",
                         eps=float(eps), steps=None, step_size=None, restarts=None,
                         source="-", accuracy=acc, bound="lower"))
    rows.append(dict(name="Bracket (certified .. attacked)", attack="bracket", norm="linf",
                     eps=float(eps), steps=None, step_size=None, restarts=None, source="-",
                     accuracy=entry["lower"], upper=entry["upper"], gap=entry["gap"]))
    return rows


if __name__ == "__main__":
    app.run(main)
