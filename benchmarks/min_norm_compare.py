r"""Minimum-norm attacks side by side: robustjax's FMN (L0/L1/L2/L-inf), DDN, CW-L2 and FAB,
and foolbox 3.3.4's FMN, DDN and CW-L2 on a PyTorch twin of the same weights (the
``peers`` extra), at the same steps; then the curve from FMN's distances against
AutoAttack's points (Pintor et al., NeurIPS 2021; Rony et al., CVPR 2019; Carlini &
Wagner, IEEE S&P 2017; Croce & Hein, ICML 2020).

  python -m benchmarks.min_norm_compare --workdir=workdirs/mnist_cpu \
      --data_dir=../shared/data/mnist-10k --examples=1000 --steps=100 \
      --json_out=benchmarks/results/min_norm_mnist10k_cpu.json

Every distance, both sides', is measured on the returned point and counted only if
robustjax's model misclassifies that point (else the example counts as not found,
distance infinite). Times are wall-clock for the whole run of one attack over the
examples, compilation included for robustjax, in one process on the same CPU.
``--aa_linf`` / ``--aa_l2`` add AutoAttack's robust accuracy at those radii (version
``--aa_version``) and the figure ``--figure`` of the curves with those points;
``--norms_from`` takes the distances from an earlier run's JSON:

  python -m benchmarks.min_norm_compare --workdir=workdirs/mnist_cpu \
      --data_dir=../shared/data/mnist-10k --skip=robustjax,foolbox \
      --norms_from=benchmarks/results/min_norm_mnist10k_cpu.json --aa_linf=0.1,0.2,0.3 \
      --aa_l2=1,1.5,2 --aa_version=custom --aa_attacks=apgd-ce,apgd-t \
      --figure=docs/figures/min_norm_curves.png \
      --json_out=benchmarks/results/min_norm_autoattack_mnist10k_cpu.json
Figures in benchmarks/RESULTS.md ("Minimum-norm attacks").
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags

from benchmarks import bench_flags
from benchmarks.torch_port import cpu_description, torch_mnist_cnn

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of an MnistCNN model.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset files (default: the workdir's).")
_EXAMPLES = flags.DEFINE_integer("examples", 1000, "First N test examples.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 100, "Steps of every attack (CW: per constant).",
                              lower_bound=1)
_CW_SEARCH = flags.DEFINE_integer("cw_search", 9, "CW's binary search steps.", lower_bound=1)
_RUNS = flags.DEFINE_list("runs", ["fmn:linf", "fmn:l2", "fmn:l1", "fmn:l0", "ddn:l2",
                                   "cw_l2:l2", "fab:linf", "fab:l2", "fab:l1"],
                          "attack:norm pairs (foolbox runs those it has: fmn, ddn, cw_l2).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Attack batch, both sides.", lower_bound=1)
_SKIP = flags.DEFINE_list("skip", [], "Sides to skip: robustjax, foolbox.")
_AA_LINF = flags.DEFINE_list("aa_linf", [], "L-inf radii for AutoAttack's points.")
_AA_L2 = flags.DEFINE_list("aa_l2", [], "L2 radii for AutoAttack's points.")
_AA_VERSION = flags.DEFINE_string("aa_version", "standard", "AutoAttack version.")
_AA_ATTACKS = flags.DEFINE_list("aa_attacks", [], "AutoAttack's attacks (version custom).")
_FIGURE = flags.DEFINE_string("figure", None, "PNG of the FMN curves and AutoAttack's points.")
_NORMS_FROM = flags.DEFINE_string("norms_from", None, "JSON of an earlier run whose distances "
                                  "the AutoAttack points and the figure use (with "
                                  "--skip=robustjax,foolbox: AutoAttack only).")
_JSON_OUT = bench_flags.json_out()


def _summary(norms: np.ndarray, seconds: float) -> dict:
    return dict(median=float(np.median(norms)), found=float(np.mean(np.isfinite(norms))),
                mean_found=float(np.mean(norms[np.isfinite(norms)])) if np.isfinite(
                    norms).any() else None, seconds=seconds)


def _foolbox_attack(name: str, norm: str):
    import foolbox as fb

    steps = _STEPS.value
    if name == "fmn":
        cls = dict(linf=fb.attacks.LInfFMNAttack, l2=fb.attacks.L2FMNAttack,
                   l1=fb.attacks.L1FMNAttack, l0=fb.attacks.L0FMNAttack)[norm]
        return cls(steps=steps)
    if name == "ddn":
        return fb.attacks.DDNAttack(steps=steps)
    return fb.attacks.L2CarliniWagnerAttack(binary_search_steps=_CW_SEARCH.value, steps=steps)


def _run_foolbox(net, name, norm, x, y, logits_fn):
    import foolbox as fb
    import jax.numpy as jnp
    import torch

    from robustjax.attacks import min_norm

    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    attack = _foolbox_attack(name, norm)
    t0 = time.time()
    advs = []
    for s in range(0, len(x), _BATCH.value):
        xt = torch.from_numpy(np.ascontiguousarray(x[s:s + _BATCH.value].transpose(0, 3, 1, 2)))
        lab = fb.Misclassification(torch.from_numpy(y[s:s + _BATCH.value].astype(np.int64)))
        advs.append(attack.run(fmodel, xt, lab).detach().numpy().transpose(0, 2, 3, 1))
    seconds = time.time() - t0
    adv = np.concatenate(advs)
    pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(adv)), -1))
    dist = np.asarray(min_norm.distance(jnp.asarray(adv - x), norm))
    clean = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)) == y
    norms = np.where(~clean, 0.0, np.where(pred != y, dist, np.inf))
    return dict(_summary(norms, seconds), norms=norms.tolist())


def _run_robustjax(logits_fn, name, norm, x, y):
    import jax

    from robustjax.evaluation import distances

    kw = dict(binary_search_steps=_CW_SEARCH.value) if name == "cw_l2" else {}
    if name == "ddn":
        kw["levels"] = None  # foolbox's DDN does not quantise
    attack = distances.min_norm_attack(name, logits_fn, norm=norm, steps=_STEPS.value, **kw)
    t0 = time.time()
    res = distances.minimum_norms(logits_fn, x, y, jax.random.PRNGKey(0), attack, norm=norm,
                                  batch_size=_BATCH.value)
    return dict(_summary(res.norms, time.time() - t0), norms=res.norms.tolist(),
                forward=float(res.forward.mean()), backward=float(res.backward.mean()))


def _autoattack_points(logits_fn, x, y, out) -> None:
    import jax

    from robustjax.evaluation import autoattack

    out["autoattack"] = {}
    for norm, radii in (("linf", _AA_LINF.value), ("l2", _AA_L2.value)):
        for e in radii:
            t0 = time.time()
            r = autoattack.autoattack(logits_fn, x, y, jax.random.PRNGKey(0), eps=float(e),
                                      norm=norm, version=_AA_VERSION.value,
                                      attacks=_AA_ATTACKS.value or None,
                                      batch_size=_BATCH.value)
            out["autoattack"][f"{norm}:{e}"] = dict(accuracy=r.robust_accuracy,
                                                    after=r.accuracy_after,
                                                    seconds=time.time() - t0)
            print(f"AutoAttack {norm} eps {e}: {r.robust_accuracy:.2%} ({time.time() - t0:.0f} s)")


def _figure(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustjax.evaluation.distances import curve_from_norms

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, norm, top in ((axes[0], "linf", 0.4), (axes[1], "l2", 3.0)):
        grid = np.linspace(0, top, 301)
        for key, res in out["robustjax"].items():
            name, n = key.split(":")
            if n != norm:
                continue
            acc = curve_from_norms(np.asarray(res["norms"]), grid)
            ax.step(grid, 100 * acc, where="post",
                    label=f"{name.upper()} (median {res['median']:.3g})")
        pts = [(float(k.split(":")[1]), v["accuracy"]) for k, v in out.get("autoattack", {}).items()
               if k.startswith(norm + ":")]
        if pts:
            ax.plot(*zip(*[(e, 100 * a) for e, a in pts]), "ko", ms=6, label="AutoAttack")
        ax.set_xlabel(f"eps ({'L-inf' if norm == 'linf' else 'L2'})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Curves from per-example minimum distances ({out['steps']} steps), "
                 f"{out['examples']} MNIST test digits", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    import jax

    from experiments.log_setup import setup_logging
    from robustjax import training as train
    from robustjax.data import datasets as data

    setup_logging()
    run = train.load_run(_WORKDIR.value)
    x, y = data.load(run.config.data.dataset, "test", _DATA_DIR.value or run.config.data.data_dir)
    n = min(_EXAMPLES.value, len(x))
    x, y = x[:n].astype(np.float32) / 255.0, y[:n].astype(np.int32)
    out = dict(examples=n, steps=_STEPS.value, cw_search=_CW_SEARCH.value, jax=jax.__version__,
               workdir=_WORKDIR.value, cpu=cpu_description(), robustjax={}, foolbox={})
    print(f"# MnistCNN({run.config.model.width}) from {_WORKDIR.value}, {n} test digits, "
          f"{_STEPS.value} steps; {out['cpu']}")
    net = torch_mnist_cnn({"params": run.variables["params"]})
    runs = [] if {"robustjax", "foolbox"} <= set(_SKIP.value) else _RUNS.value
    if runs:
        print("| attack | norm | robustjax median | found | time (s) | foolbox median | found "
              "| time (s) | speed-up |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in runs:
        name, norm = spec.split(":")
        ours = theirs = None
        if "robustjax" not in _SKIP.value:
            ours = out["robustjax"][spec] = _run_robustjax(run.logits_fn, name, norm, x, y)
        if "foolbox" not in _SKIP.value and name in ("fmn", "ddn", "cw_l2"):
            theirs = out["foolbox"][spec] = _run_foolbox(net, name, norm, x, y, run.logits_fn)

        def cells(r):
            return ("–", "–", "–") if r is None else (
                f"{r['median']:.4g}", f"{100 * r['found']:.1f}%", f"{r['seconds']:.1f}")
        ratio = (f"{theirs['seconds'] / ours['seconds']:.2f}×" if ours and theirs else "–")
        print(f"| {name} | {norm} | " + " | ".join(cells(ours) + cells(theirs)) +
              f" | {ratio} |", flush=True)
        bench_flags.write_json(_JSON_OUT.value, out)
    if _NORMS_FROM.value:
        with open(_NORMS_FROM.value) as f:
            earlier = json.load(f)
        if earlier["examples"] != n:
            raise app.UsageError(f"--norms_from holds {earlier['examples']} examples, not {n}")
        out["robustjax"] = earlier["robustjax"]
        out["steps"] = earlier["steps"]
    if _AA_LINF.value or _AA_L2.value:
        _autoattack_points(run.logits_fn, x, y, out)
        for key, res in out["robustjax"].items():
            from robustjax.evaluation.distances import curve_from_norms
            name, norm = key.split(":")
            radii = [float(e) for e in (_AA_LINF.value if norm == "linf" else
                                        _AA_L2.value if norm == "l2" else [])]
            if radii:
                res["at_autoattack_radii"] = dict(zip(map(str, radii), curve_from_norms(
                    np.asarray(res["norms"]), radii).tolist()))
                print(f"{key} curve at {radii}: {res['at_autoattack_radii']}")
    if _FIGURE.value:
        _figure(out, _FIGURE.value)
    bench_flags.write_json(_JSON_OUT.value, out)


if __name__ == "__main__":
    app.run(main)
