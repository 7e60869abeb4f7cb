r"""RobustBench-style evaluation of a published model in JAX: clean and AutoAttack accuracy.

  python -m experiments.benchmark --model=Gowal2020Uncovering_70_16_extra \
      --checkpoint=FILE --dataset=cifar10 --threat_model=Linf --data_dir=DIR \
      [--eps=E] [--examples=N] [--output_dir=O]
  python -m experiments.benchmark --model=wrn-28-10 --checkpoint=FILE ...   # an architecture
  python -m experiments.benchmark --list       # the registry: IDs, architectures, figures

``--model`` is a registry ID (RobustBench's model IDs whose architectures robustjax has,
``robustjax/zoo/models.json``) or an architecture name (``wrn-28-10``, ``dm-wrn-70-16``,
``resnet-18``..., with ``--mean/--std`` for its input normalisation). The checkpoint is
the PyTorch ``state_dict`` RobustBench downloads, or DeepMind's JAX ``.npy``
(``--allow_pickle``); nothing is downloaded here. ``--data_dir`` holds the official
CIFAR-10 / CIFAR-100 archives.

Writes O/benchmark.json (default O: ./benchmark/ID_DATASET_THREAT): RobustBench's
result fields (``clean_acc``, ``autoattack_acc`` in %, ``eps``, ``dataset``,
``architecture``, ``name``), the accuracies the registry reports beside them, the
accuracy after each attack and the shared ``rows``; and benchmark.md. AutoAttack
(standard version: APGD-CE, APGD-T, FAB-T, Square; the default eps 8/255 for L∞, 0.5
for L2, the registry's for an ID) runs on the devices of the mesh, keeps its state after
each attack in O/stages, and resumes there when the command is rerun.

What was checked here, without any published checkpoint (none can be downloaded on
the machines this was built on): every architecture against the peers' own released
model definitions (robustbench 1.1.1, pyautoattack 0.2.0), logits equal to PyTorch's
within float32 rounding on the same weights, the converters on checkpoints written by
those definitions, and AutoAttack against the official code on the same converted model
(``tests/test_zoo.py``, ``benchmarks/zoo_autoattack_compare.py``, ``benchmarks/RESULTS.md``
"Published models"). What a user with a registry model's checkpoint should see on the
full 10,000 test images: clean and AutoAttack accuracy near RobustBench's figures
(``--list`` prints them); that agreement has not been measured here. With
``--examples=N`` the figures are those of the first N test images.
"""

import json
import os

from absl import app, flags

from experiments import eval_flags
from experiments.cli import one_line_errors
from experiments.log_setup import setup_logging

flags.DEFINE_string("model", None, "Registry ID or architecture name (see --list).")
flags.DEFINE_string("checkpoint", None, "PyTorch state_dict (.pt/.pth) or DeepMind .npy.")
flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100"], "Test set.")
flags.DEFINE_enum("threat_model", "Linf", ["Linf", "L2"], "RobustBench threat model.")
flags.DEFINE_float("eps", None, "Radius (default: the registry's, else 8/255 L-inf, 0.5 L2).")
eval_flags.examples(-1, "First N test images (-1: all 10,000).")
flags.DEFINE_string("data_dir", None, "Official CIFAR archives (default: TFDS).")
eval_flags.run("./benchmark/MODEL_DATASET_THREAT; benchmark.json and .md")
flags.DEFINE_list("mean", None, "Architecture names only: input mean inside the model (3).")
flags.DEFINE_list("std", None, "Architecture names only: input std inside the model (3).")
flags.DEFINE_list("options", [], "Architecture names only: switches of the original, "
                  "e.g. sub_block1=true,activation=relu.")
flags.DEFINE_enum("format", "auto", ["auto", "pytorch", "haiku"], "Checkpoint format.")
flags.DEFINE_bool("allow_pickle", False, "Let the checkpoint run its pickle (DeepMind's .npy; "
                  "PyTorch files that store more than tensors). Only for trusted files.")
flags.DEFINE_enum("version", "standard", ["standard", "plus"], "AutoAttack version.")
eval_flags.budget()
flags.DEFINE_bool("list", False, "Print the registry and exit.")
FLAGS = flags.FLAGS
NORMS = {"Linf": "linf", "L2": "l2"}
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}


def _list() -> None:
    from robustjax import zoo
    print("| ID | dataset | threat | eps | architecture | clean | AutoAttack |")
    print("|---|---|---|---:|---|---:|---:|")
    for e in zoo.entries():
        print(f"| {e.id} | {e.dataset} | {e.threat_model} | {e.eps:.4g} | {e.arch} | "
              f"{e.clean:.2f} | {e.autoattack:.2f} |")


def _options() -> dict:
    out = {}
    for item in FLAGS.options:
        k, sep, v = item.partition("=")
        if not sep:
            raise app.UsageError(f"--options takes name=value pairs, got {item!r}")
        out[k] = {"true": True, "false": False}.get(v.lower(), v)
    return out


def _floats(name):
    vals = FLAGS[name].value
    if vals is None:
        return None
    try:
        return [float(v) for v in vals]
    except ValueError:
        raise app.UsageError(f"--{name} must be numbers, got {','.join(vals)}") from None


@one_line_errors
def main(argv):
    eval_flags.no_arguments(argv)
    if FLAGS.list:
        return _list()
    if not FLAGS.model:
        raise app.UsageError("--model (a registry ID or an architecture; --list) is required")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint (the model's weights file) is required")
    if FLAGS.eps is not None and not FLAGS.eps >= 0:
        raise app.UsageError(f"--eps must be >= 0, got {FLAGS.eps}")
    setup_logging()
    import jax
    import numpy as np

    from robustjax import zoo
    from robustjax.data import datasets as data
    from robustjax.runtime import mesh

    logits_fn = zoo.load(FLAGS.model, FLAGS.checkpoint, dataset=FLAGS.dataset,
                         threat_model=FLAGS.threat_model, mean=_floats("mean"),
                         std=_floats("std"), fmt=FLAGS.format,
                         allow_pickle=FLAGS.allow_pickle, **_options())
    entry = logits_fn.entry
    eps = FLAGS.eps if FLAGS.eps is not None else (
        entry.eps if entry is not None else DEFAULT_EPS[FLAGS.threat_model])
    x, y = data.load(FLAGS.dataset, "test", FLAGS.data_dir)
    n = len(x) if FLAGS.examples == -1 else min(FLAGS.examples, len(x))
    x, y = x[:n].astype(np.float32) / 255.0, y[:n]
    classes = zoo.registry.NUM_CLASSES[FLAGS.dataset]
    out_classes = int(jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + x.shape[1:],
                                                                     np.float32)).shape[-1])
    if out_classes != classes:
        raise ValueError(f"--model gives {out_classes} logits, {FLAGS.dataset} has {classes} "
                         f"classes")
    out = FLAGS.output_dir or os.path.join(
        "benchmark", f"{FLAGS.model}_{FLAGS.dataset}_{FLAGS.threat_model}")
    norm = NORMS[FLAGS.threat_model]
    res, seconds, rows = eval_flags.run_autoattack(logits_fn, x, y, eps=eps, norm=norm, out=out)
    module = logits_fn.module
    results = dict(
        # RobustBench's model_info fields (accuracies in %, as strings rounded to 2 places).
        name=FLAGS.model, dataset=FLAGS.dataset, threat_model=FLAGS.threat_model,
        eps=float(eps), architecture=entry.arch if entry else FLAGS.model,
        number_forward_passes=1,
        clean_acc=f"{100 * res.clean_accuracy:.2f}",
        autoattack_acc=f"{100 * res.robust_accuracy:.2f}",
        reported=(dict(clean_acc=f"{entry.clean:.2f}", autoattack_acc=f"{entry.autoattack:.2f}",
                       n_examples=10000, source="RobustBench leaderboard (robustbench 1.1.1)",
                       venue=entry.paper) if entry else None),
        # robustjax's own fields.
        clean_accuracy=res.clean_accuracy, robust_accuracy=res.robust_accuracy,
        accuracy_after=res.accuracy_after, attacks=list(res.accuracy_after), norm=norm,
        version=FLAGS.version, n_examples=int(n), num_steps=FLAGS.num_steps,
        num_queries=FLAGS.num_queries, seconds=seconds, seconds_per_attack=res.seconds,
        warnings=res.warnings, seed=FLAGS.seed, batch_size=FLAGS.batch_size, split="test",
        checkpoint=os.path.abspath(FLAGS.checkpoint),
        model=dict(arch=type(module).__name__, options=entry.options if entry else _options(),
                   params=int(sum(np.size(v) for v in jax.tree_util.tree_leaves(
                       logits_fn.variables.get("params", {}))))),
        jax=jax.__version__, device=jax.devices()[0].device_kind,
        devices=jax.device_count(), processes=jax.process_count(), rows=rows)
    if not mesh.is_primary():
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = _markdown(results)
    with open(os.path.join(out, "benchmark.md"), "w") as f:
        f.write(table)
    print(table, end="")
    print(f"results: {os.path.join(out, 'benchmark.json')} and benchmark.md")


def _markdown(r: dict) -> str:
    rep = r["reported"] or {}
    eps = r["eps"]
    eps_text = f"{eps * 255:g}/255" if r["norm"] == "linf" else f"{eps:g}"
    lines = [f"{r['name']} on {r['dataset']} ({r['threat_model']}, eps {eps_text}), "
             f"first {r['n_examples']} test images; AutoAttack {r['version']}, "
             f"{r['num_steps']} steps, {r['num_queries']} queries\n",
             "| | robustjax | reported (RobustBench, 10,000 images) |",
             "|---|---:|---:|",
             f"| clean | {r['clean_acc']} | {rep.get('clean_acc', '–')} |",
             f"| AutoAttack | {r['autoattack_acc']} | {rep.get('autoattack_acc', '–')} |"]
    for name, acc in r["accuracy_after"].items():
        lines.append(f"| after {name} | {100 * acc:.2f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app.run(main)
