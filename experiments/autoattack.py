r"""AutoAttack on a trained workdir (Croce & Hein, ICML 2020): robustjax's strongest evaluation.

  python -m experiments.autoattack --workdir=DIR [--data_dir=DIR] [--norm=linf|l2|l1] \
      [--eps=E] [--version=standard|plus] [--examples=N] [--batch_size=500] [--seed=0] \
      [--num_steps=100] [--num_queries=5000]
  python -m experiments.autoattack --workdir=DIR --norm=linf,l2,l1 --eps=0.3,2,10   # several

With several threat models, each runs in turn into its own directory and
ROOT/threat_models.json and .md (ROOT: --output_dir, else DIR) put them in one
table: clean accuracy, then AutoAttack's robust accuracy in each.

Runs the ensemble (standard: APGD-CE, APGD-T, FAB-T, Square; each on the
examples still robust) on the first N test examples of the workdir's dataset
and writes OUTPUT_DIR/autoattack.json (RobustBench-style fields: clean and
robust accuracy, accuracy after each attack, eps, norm, version, number of
examples, seconds) and autoattack.md. OUTPUT_DIR defaults to DIR/autoattack.
The default eps is the training eps (MNIST 0.3, CIFAR-10 8/255) in the
training norm; --eps must be given for another norm (for L1, the official
code's L1 ensemble runs: APGD-CE with 5 restarts and APGD-T with 5 targets,
both starting at 3 eps, FAB-T-L1 and Square-L1). Progress: one line per batch with the
examples left,
the robust accuracy so far and an ETA. The state after each attack is kept in
OUTPUT_DIR/stages (OUTPUT_DIR is DIR/autoattack_NORM_EPS for another threat
model than the training one): an interrupted evaluation resumes after the last finished
attack when the same command is rerun (same result as an uninterrupted run).

On the 2,000 test digits of shared/data/mnist-10k, the CPU recipe's PGD-trained
model (benchmarks/mnist10k_cpu.sh) at eps 0.3: see benchmarks/RESULTS.md,
"AutoAttack", for the figures and the comparison with the official code. On
Madry et al.'s released models the strongest reported attacks reach 88.0%
(MNIST, eps 0.3) and 43.95% (CIFAR-10, eps 8/255), below every PGD figure of
the paper's Tables 1 and 2.
"""

import os

from absl import app, flags

from experiments import eval_flags
from experiments.cli import one_line_errors
from experiments.log_setup import setup_logging

eval_flags.model()
flags.DEFINE_list("norm", ["linf"], "Threat model(s): linf, l2 or l1; a list runs each, "
                  "one after the other (default eps: the training eps in the training norm).")
flags.DEFINE_list("eps", None, "Radius, one per --norm (default: the training eps; required "
                  "for another norm than the training one).")
flags.DEFINE_enum("version", "standard", ["standard", "plus"], "AutoAttack version.")
eval_flags.examples(-1)
eval_flags.budget()
eval_flags.run("WORKDIR/autoattack, or WORKDIR/autoattack_NORM_EPS for another threat "
               "model; autoattack.json and .md")
FLAGS = flags.FLAGS
NORM_TITLES = {"linf": "L-inf", "l2": "L2", "l1": "L1"}


@one_line_errors
def main(argv):
    eval_flags.no_arguments(argv)
    if not FLAGS.workdir:
        raise app.UsageError("--workdir (the evaluated model's training workdir) is required")
    setup_logging()
    import numpy as np

    from robustjax.data import datasets as data
    from robustjax.runtime import mesh
    from robustjax import training as train

    run = train.load_run(FLAGS.workdir)
    cfg = run.config
    threats = _threat_models(cfg)
    x, y = data.load(cfg.data.dataset, "test", FLAGS.data_dir or cfg.data.data_dir)
    n = len(x) if FLAGS.examples == -1 else min(FLAGS.examples, len(x))
    x, y = x[:n].astype(np.float32) / 255.0, y[:n]
    outputs = []
    for norm, eps in threats:
        default = "autoattack" if (norm, eps) == (cfg.threat.train_norm, cfg.threat.eps) else (
            f"autoattack_{norm}_{eps:g}")  # other threat models do not overwrite it
        if len(threats) == 1:
            out = FLAGS.output_dir or os.path.join(FLAGS.workdir, default)
        else:
            out = os.path.join(FLAGS.output_dir or FLAGS.workdir, default)
        outputs.append(_evaluate(run, cfg, x, y, norm, eps, out))
    if len(threats) > 1 and mesh.is_primary():
        _write_summary(outputs, FLAGS.output_dir or FLAGS.workdir)


def _threat_models(cfg) -> list:
    """``[(norm, eps), ...]`` from --norm and --eps, checked."""
    norms = list(FLAGS.norm)
    for nm in norms:
        if nm not in NORM_TITLES:
            raise app.UsageError(f"--norm must be a list from linf, l2, l1, got {nm!r}")
    if FLAGS.eps is None:
        eps = [None] * len(norms)
    else:
        try:
            eps = [float(e) for e in FLAGS.eps]
        except ValueError:
            raise app.UsageError(f"--eps must be numbers, got {','.join(FLAGS.eps)}") from None
        if len(eps) != len(norms):
            raise app.UsageError(f"--eps must give one radius per --norm ({len(norms)}), got "
                                 f"{len(eps)}")
        if any(not e >= 0 for e in eps):
            raise app.UsageError(f"--eps must be >= 0, got {','.join(FLAGS.eps)}")
    out = []
    for nm, e in zip(norms, eps):
        if e is None and nm != cfg.threat.train_norm:
            raise app.UsageError(f"--eps is required for --norm={nm} (the training eps is "
                                 f"{cfg.threat.train_norm})")
        out.append((nm, cfg.threat.eps if e is None else e))
    if len(set(out)) != len(out):
        raise app.UsageError("--norm/--eps repeat a threat model")
    return out


def _evaluate(run, cfg, x, y, norm, eps, out) -> dict:
    """AutoAttack in one threat model; writes OUT/autoattack.json and .md; returns the results."""
    import jax

    from robustjax import training as train
    from robustjax.evaluation import suite
    from robustjax.runtime import mesh

    n = len(x)
    res, seconds, rows = eval_flags.run_autoattack(run.logits_fn, x, y, eps=eps, norm=norm, out=out)
    results = dict(
        clean_acc=res.clean_accuracy, robust_acc=res.robust_accuracy,
        accuracy_after=res.accuracy_after, eps=float(eps), norm=norm,
        version=FLAGS.version, attacks=list(res.accuracy_after), n_examples=int(n),
        num_steps=FLAGS.num_steps, num_queries=FLAGS.num_queries,
        seconds=seconds, seconds_per_attack=res.seconds, warnings=res.warnings,
        dataset=cfg.data.dataset, split="test", seed=FLAGS.seed, batch_size=FLAGS.batch_size,
        model=dict(arch=train.build_model(cfg).__class__.__name__, width=cfg.model.width,
                   params=run.params),
        training=dict(cfg.to_json(), final_step=run.step,
                      workdir=os.path.abspath(FLAGS.workdir)),
        jax=jax.__version__, device=jax.devices()[0].device_kind,
        devices=jax.device_count(), processes=jax.process_count(), rows=rows)
    if not mesh.is_primary():  # process 0 writes the files
        return results
    os.makedirs(out, exist_ok=True)
    suite.write_results(os.path.join(out, "autoattack.json"), results)
    print(suite.markdown_table(rows))
    print(f"results: {os.path.join(out, 'autoattack.json')} and autoattack.md")
    return results


def _write_summary(outputs: list, root: str) -> None:
    """threat_models.json / .md: clean accuracy, then AutoAttack in each threat model."""
    from robustjax.evaluation import suite

    first = outputs[0]
    rows = [first["rows"][0]]
    for r in outputs:
        row = dict(r["rows"][1], name=f"AutoAttack ({NORM_TITLES[r['norm']]})")
        rows.append(row)
    summary = dict(dataset=first["dataset"], split="test", n_examples=first["n_examples"],
                   version=first["version"], seed=first["seed"], model=first["model"],
                   training=first["training"],
                   threat_models=[dict(norm=r["norm"], eps=r["eps"], clean_acc=r["clean_acc"],
                                       robust_acc=r["robust_acc"],
                                       accuracy_after=r["accuracy_after"],
                                       seconds=r["seconds"]) for r in outputs],
                   rows=rows)
    os.makedirs(root, exist_ok=True)
    suite.write_results(os.path.join(root, "threat_models.json"), summary)
    print(suite.markdown_table(rows))
    print(f"all threat models: {os.path.join(root, 'threat_models.json')} and .md")


if __name__ == "__main__":
    app.run(main)
