r"""Randomized smoothing side by side: robustjax's CERTIFY and the Adversarial Robustness
Toolbox's ``PyTorchRandomizedSmoothing.certify`` (ART 1.20.1, the ``peers`` extra) on a
PyTorch twin of the same weights, at the same n0, n, alpha and noise batch (Cohen,
Rosenfeld & Kolter, ICML 2019, Algorithm 1).

  python -m benchmarks.smoothing_compare --workdir=workdirs/smoothing/gaussian_0.25 \
      --data_dir=../shared/data/mnist-10k --examples=100 --art_examples=20 --n=100000 \
      --json_out=benchmarks/results/smoothing_sigma0.25_mnist10k_cpu.json

robustjax certifies the first --examples test digits (its seconds per example include
compilation); ART the first --art_examples of them, one after the other as its certify
does. Both sides' certified accuracies at --radii are printed on the common examples
(they agree within the Monte Carlo noise: the noise draws differ), with the seconds per
example and their ratio. Figures in benchmarks/RESULTS.md ("Randomized smoothing").
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from benchmarks import bench_flags
from benchmarks.torch_port import cpu_description, torch_mnist_cnn

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of a noise-trained MnistCNN.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset files (default: the workdir's).")
_EXAMPLES = flags.DEFINE_integer("examples", 100, "robustjax: the first N test digits.",
                                 lower_bound=1)
_ART_EXAMPLES = flags.DEFINE_integer("art_examples", 20, "ART: the first N (0: skip ART).",
                                     lower_bound=0)
_N0 = flags.DEFINE_integer("n0", 100, "Selection samples.", lower_bound=1)
_N = flags.DEFINE_integer("n", 100_000, "Estimation samples.", lower_bound=1)
_ALPHA = flags.DEFINE_float("alpha", 0.001, "Failure probability.")
_BATCH = flags.DEFINE_integer("batch", 1000, "Noisy copies per forward pass, both sides.",
                              lower_bound=1)
_RADII = flags.DEFINE_list("radii", ["0", "0.25", "0.5", "0.75", "1.0"], "Summary radii.")
_JSON_OUT = bench_flags.json_out()


def _art_certify(variables, x, sigma):
    import torch
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    net = torch_mnist_cnn(variables)
    art = PyTorchRandomizedSmoothing(net, torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                     nb_classes=10, sample_size=_N0.value, scale=sigma,
                                     alpha=_ALPHA.value, clip_values=(0.0, 1.0),
                                     device_type="cpu")
    t0 = time.perf_counter()
    pred, radius = art.certify(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), n=_N.value,
                               batch_size=_BATCH.value)
    return pred, radius, (time.perf_counter() - t0) / len(x)


def main(argv):
    del argv
    import jax

    from robustjax import smoothing
    from robustjax import training as train
    from robustjax.data import datasets as data

    run = train.load_run(_WORKDIR.value)
    sigma = run.config.loss.noise_sigma
    x, y = data.load("mnist", "test", _DATA_DIR.value or run.config.data.data_dir)
    x, y = x[:_EXAMPLES.value].astype(np.float32) / 255.0, y[:_EXAMPLES.value]
    radii = [float(r) for r in _RADII.value]
    t0 = time.perf_counter()
    rows = smoothing.certify_table(run.logits_fn, x, y, jax.random.PRNGKey(0), sigma=sigma,
                                   n0=_N0.value, n=_N.value, alpha=_ALPHA.value,
                                   batch=_BATCH.value, chunk=len(x))
    rj_seconds = (time.perf_counter() - t0) / len(x)
    pred = np.asarray([r["predict"] for r in rows])
    rad = np.asarray([r["radius"] for r in rows])
    out = dict(workdir=_WORKDIR.value, sigma=sigma, n0=_N0.value, n=_N.value,
               alpha=_ALPHA.value, batch=_BATCH.value, cpu=cpu_description(),
               jax=jax.__version__, radii=radii, robustjax=dict(
                   examples=len(x), seconds_per_example=rj_seconds,
                   certified_accuracy=smoothing.certified_accuracy(pred, rad, y, radii).tolist(),
                   prediction=pred.tolist(), radius=rad.tolist()))
    print(f"robustjax, {len(x)} digits: {rj_seconds:.2f} s per example; certified accuracy "
          + ", ".join(f"{r:g}: {100 * a:.1f}%" for r, a in
                      zip(radii, out["robustjax"]["certified_accuracy"])), flush=True)
    k = min(_ART_EXAMPLES.value, len(x))
    if k:
        a_pred, a_rad, a_seconds = _art_certify(run.variables, x[:k], sigma)
        art_acc = smoothing.certified_accuracy(a_pred, a_rad, y[:k], radii)
        rj_common = smoothing.certified_accuracy(pred[:k], rad[:k], y[:k], radii)
        out["art"] = dict(examples=k, seconds_per_example=a_seconds,
                          certified_accuracy=art_acc.tolist(),
                          robustjax_on_the_same=rj_common.tolist(),
                          prediction=np.asarray(a_pred).tolist(),
                          radius=np.asarray(a_rad).tolist(), speedup=a_seconds / rj_seconds)
        print(f"ART, first {k}: {a_seconds:.2f} s per example ({a_seconds / rj_seconds:.2f}x "
              f"robustjax's time); certified accuracy ART / robustjax on them: "
              + ", ".join(f"{r:g}: {100 * a:.1f}/{100 * b:.1f}%"
                          for r, a, b in zip(radii, art_acc, rj_common)), flush=True)
    bench_flags.write_json(_JSON_OUT.value, out)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
