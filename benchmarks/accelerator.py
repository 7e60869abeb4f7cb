r"""The accelerator acceptance in one command: every figure a lent GPU (or TPU) should give.

A lent accelerator is there for minutes, so this runs everything at once, each
part in its own process with its own time limit (a part that fails or runs out
of time is reported as such; the others still run), and writes
``DIR/<device>.md`` and ``DIR/<device>.json``, ready to paste into
benchmarks/RESULTS.md:

1. ``pgd``: PGD-40 on ``MnistCNN(16)`` at batch 50, 256 and 1024 against
   PyTorch eager and ``torch.compile`` on the same device, with robustjax's
   loop-friendly layers on and off (``benchmarks.attack_throughput``).
2. ``wrn_step``: the WRN-34-10 PGD-7 training step at batch 128, fp32 and
   bf16, against PyTorch with AMP and channels_last, eager and compiled, with
   model FLOP utilisation against the device's dense peak
   (``benchmarks.train_throughput``).
3. ``mnist_recipe``: Madry's MNIST recipe (``MnistCNN(16)``, batch 50,
   PGD-40) for a fixed number of steps through ``experiments.mnist``, and the
   time for the paper's 100k steps projected from the steady-state rate.
4. ``autoattack``: AutoAttack (standard) on 1,000 digits against
   pyautoattack on the same device, on the recipe's weights
   (``benchmarks.autoattack_compare``).
5. ``tests``: a fast subset of the test suite on the accelerator.

A missing peer (no torch, no pyautoattack, no pytest) is written in its rows,
never an error. Data travels as IDX files: ``--data_dir``, else
``.data/mnist-10k`` (git-ignored, carried to the lent machine), else
``../shared/data/mnist-10k``, else generated digits (said so in the report).

  python -m benchmarks.accelerator --output_dir=DIR            # GPU/TPU: about 9 minutes
  python -m benchmarks.accelerator --output_dir=DIR --smoke    # every part on CPU, tiny
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

_OUT = flags.DEFINE_string("output_dir", None, "Where <device>.md, <device>.json and the "
                           "parts' logs go.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Every part with tiny sizes (CPU, a few minutes): "
                           "checks the script, not the figures.")
_DATA = flags.DEFINE_string("data_dir", None, "MNIST IDX files (default: .data/mnist-10k, then "
                            "../shared/data/mnist-10k, else generated digits).")
_BUDGET = flags.DEFINE_integer("budget_s", 530, "Seconds for all parts together; each part "
                               "gets at most what is left.", lower_bound=10)
_PARTS = flags.DEFINE_list("parts", ["pgd", "wrn_step", "mnist_recipe", "autoattack", "tests",
                                     "wrn_step_compiled"], "Parts to run, in this order.")
_RECIPE_STEPS = flags.DEFINE_integer("recipe_steps", 400, "Training steps of the MNIST recipe "
                                     "part.", lower_bound=2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("pgd", "wrn_step", "mnist_recipe", "autoattack", "tests", "wrn_step_compiled")
# Dense peak TFLOP/s (bf16, tf32) from the vendors' data sheets, for the MFU column.
PEAKS = {"H100": (989.4, 494.7), "H200": (989.4, 494.7), "A100": (312.0, 156.0),
         "L4": (121.0, 60.0), "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0),
         "TPU v5": (459.0, 459.0)}
# A fast subset of the suite: attacks, layers, models, the mesh, evaluation.
TESTS = ["tests/test_attacks.py", "tests/test_layers.py", "tests/test_models.py",
         "tests/test_mesh.py", "tests/test_evaluate.py", "tests/test_fastpath.py"]


def _write_idx(path: str, arr) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big")
                                                      for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def _data_dir(out: str) -> tuple[str, str]:
    """(directory of MNIST IDX files, what they are)."""
    for d in ([_DATA.value] if _DATA.value else [os.path.join(REPO, ".data", "mnist-10k"),
                                                 os.path.join(REPO, "..", "shared", "data",
                                                              "mnist-10k")]):
        if os.path.isfile(os.path.join(d, "t10k-images-idx3-ubyte.gz")) or os.path.isfile(
                os.path.join(d, "t10k-images-idx3-ubyte")):
            return os.path.abspath(d), f"MNIST IDX files in {os.path.abspath(d)}"
    if _DATA.value:
        raise app.UsageError(f"--data_dir={_DATA.value}: no MNIST IDX files there")
    import numpy as np

    d = os.path.join(out, "generated-digits")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1234)
    protos = rng.random((10, 28, 28)) > 0.7
    for split, n in (("train", 4000), ("t10k", 1000)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.clip(protos[y] * 0.8 + rng.random((n, 28, 28)) * 0.3, 0, 1)
        _write_idx(os.path.join(d, f"{split}-images-idx3-ubyte.gz"), (x * 255).astype(np.uint8))
        _write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte.gz"), y)
    return d, "generated digits (no MNIST IDX files found): speed figures only"


def _commands(out: str, data_dir: str, smoke: bool) -> dict[str, tuple[list, int, str]]:
    """Part -> (command, time limit in seconds, JSON it writes or None)."""
    py = sys.executable
    j = lambda name: os.path.join(out, f"{name}.json")  # noqa: E731
    recipe = os.path.join(out, "recipe_workdir")
    if smoke:
        return {
            "pgd": ([py, "-m", "benchmarks.attack_throughput", "--batches=4", "--steps=2",
                     "--repeats=1", "--min_time=0.01", f"--json_out={j('pgd')}"], 120, j("pgd")),
            "pgd_stock": ([py, "-m", "benchmarks.attack_throughput", "--batches=4", "--steps=2",
                           "--repeats=1", "--min_time=0.01", "--noloop_friendly", "--nopeer",
                           f"--json_out={j('pgd_stock')}"], 120, j("pgd_stock")),
            "wrn_step": ([py, "-m", "benchmarks.train_throughput", "--widths=1", "--batch=4",
                          "--dtypes=float32", "--repeats=1", "--steps_per_sample=1",
                          f"--json_out={j('wrn_step')}"], 180,
                         j("wrn_step")),
            "mnist_recipe": ([py, "-m", "experiments.mnist", f"--workdir={recipe}",
                              f"--data_dir={data_dir}", "--width=1", "--steps=4",
                              "--batch_size=10", "--attack_steps=2", "--log_every=2",
                              "--checkpoint_every=4", "--eval_examples=10",
                              "--eval_batch_size=10", "--eval_attack_steps=2"], 180, None),
            "autoattack": ([py, "-m", "benchmarks.autoattack_compare", f"--workdir={recipe}",
                            "--examples=10", "--batch_size=10", "--num_steps=2",
                            "--num_queries=5", f"--json_out={j('autoattack')}"], 180,
                           j("autoattack")),
            "tests": ([py, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                       "tests/test_mesh.py", "-k", "padding or per_example"], 120, None),
            "wrn_step_compiled": None,
        }
    return {
        "pgd": ([py, "-m", "benchmarks.attack_throughput", "--batches=50,256,1024",
                 "--repeats=3", "--min_time=0.3", "--torch_compile", f"--json_out={j('pgd')}"],
                150, j("pgd")),
        "pgd_stock": ([py, "-m", "benchmarks.attack_throughput", "--batches=50,256,1024",
                       "--repeats=3", "--min_time=0.3", "--noloop_friendly", "--nopeer",
                       f"--json_out={j('pgd_stock')}"], 60, j("pgd_stock")),
        "wrn_step": ([py, "-m", "benchmarks.train_throughput", "--widths=10", "--batch=128",
                      "--dtypes=float32,bfloat16", "--repeats=3", "--steps_per_sample=3",
                      "--torch_channels_last", f"--json_out={j('wrn_step')}"], 180,
                     j("wrn_step")),
        "mnist_recipe": ([py, "-m", "experiments.mnist", f"--workdir={recipe}",
                          f"--data_dir={data_dir}", "--width=16", f"--steps={_RECIPE_STEPS.value}",
                          "--batch_size=50", "--attack_steps=40", "--attack_step_size=0.01",
                          "--eps=0.3", f"--log_every={max(1, _RECIPE_STEPS.value // 4)}",
                          f"--checkpoint_every={_RECIPE_STEPS.value}", "--eval_examples=1000",
                          "--eval_batch_size=500", "--eval_attack_steps=40"], 120, None),
        "autoattack": ([py, "-m", "benchmarks.autoattack_compare", f"--workdir={recipe}",
                        "--examples=1000", "--batch_size=500", f"--json_out={j('autoattack')}"],
                       150, j("autoattack")),
        "tests": ([py, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *TESTS], 150,
                  None),
        "wrn_step_compiled": ([py, "-m", "benchmarks.train_throughput", "--widths=10",
                               "--batch=128", "--dtypes=bfloat16", "--repeats=3",
                               "--steps_per_sample=3", "--torch_compile",
                               "--torch_channels_last", f"--json_out={j('wrn_step_compiled')}"],
                              180, j("wrn_step_compiled")),
    }


def _version(module: str):
    """The installed version of ``module`` ("installed" if it has none), or None."""
    try:
        m = __import__(module)
    except Exception:  # missing, or broken: either way the peer cannot run
        return None
    return getattr(m, "__version__", "installed")


def _run_part(name, cmd, limit, json_path, out, env) -> dict:
    """Runs one part; returns its record (status, seconds, JSON, log tail)."""
    log_path = os.path.join(out, f"{name}.log")
    t0 = time.time()
    try:
        with open(log_path, "w") as log:
            p = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               timeout=limit)
        status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit}s"
    rec = dict(status=status, seconds=round(time.time() - t0, 1), command=" ".join(cmd[1:]),
               log=os.path.basename(log_path))
    with open(log_path) as f:
        rec["tail"] = f.read()[-1500:]
    if json_path and os.path.isfile(json_path):
        with open(json_path) as f:
            rec["result"] = json.load(f)
    print(f"[{name}] {status} in {rec['seconds']:.0f}s", flush=True)
    return rec


def _recipe_summary(out: str) -> dict:
    path = os.path.join(out, "recipe_workdir", "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    if not recs:
        return {}
    last = recs[-1]  # steady state: the first window holds the compilation
    rate = last["examples_per_s"]
    out = dict(steps=last["step"], examples_per_s=rate, steps_per_s=rate / 50,
               projected_100k_hours=100_000 * 50 / rate / 3600, loss=last["loss"],
               adv_acc=last["adv_acc"])
    res = os.path.join(os.path.dirname(path), "results.json")
    if os.path.isfile(res):
        with open(res) as f:
            out["test_rows"] = {r["name"] + (f"-{r['steps']}" if r.get("steps") else ""):
                                r["accuracy"] for r in json.load(f)["rows"]}
    return out


def _peak(device: str):
    for k, v in PEAKS.items():
        if k.lower() in device.lower():
            return k, v
    return None, None


def _markdown(report: dict) -> str:
    lines = [f"## {report['device']} ({report['platform']}), {report['date']}", "",
             f"`{report['command']}`; JAX {report['jax']}, PyTorch {report['torch'] or 'missing'}"
             f", pyautoattack {report['pyautoattack'] or 'missing'}; host {report['host']}; "
             f"data: {report['data']}." + (" **Smoke run: sizes are tiny, figures mean "
                                           "nothing.**" if report["smoke"] else ""), ""]
    parts = report["parts"]
    lines += ["| part | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']:.0f} |" for k, v in parts.items()]
    for name in ("pgd", "pgd_stock"):
        res = parts.get(name, {}).get("result")
        if not res:
            continue
        peers = res.get("peers") or []
        lines += ["", f"**PGD-40, MnistCNN(16), fp32, loop_friendly={res['loop_friendly']}** "
                      f"(img/s; ratio = robustjax / peer)", "",
                  "| " + " | ".join(["batch", "robustjax"] + [f"{p} | ratio" for p in peers])
                  + " |",
                  "|---:|---:|" + "---:|---:|" * len(peers)]
        for r in res["rows"]:
            lines.append("| " + " | ".join([str(r["batch"]), f"{r['jax_img_s']:.0f}"] + [
                f"{r[f'{p}_img_s']:.0f} | {r[f'ratio_{p}']:.2f}x" for p in peers]) + " |")
    _, peak = _peak(report["device"])
    for name in ("wrn_step", "wrn_step_compiled"):
        res = parts.get(name, {}).get("result")
        if not res:
            continue
        lines += ["", f"**CifarResNet PGD-7 training step** (torch.compile="
                      f"{res.get('torch_compile')}, channels_last={res.get('channels_last')}, "
                      "AMP for bf16)", "",
                  "| width | dtype | batch | robustjax img/s | PyTorch img/s | ratio | "
                  "robustjax TFLOP/s | MFU |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            p = peak and (peak[0] if r["dtype"] == "bfloat16" else peak[1])
            mfu = f"{100 * r['jax_tflops'] / p:.1f}%" if p else "-"
            tt = "-" if r["torch_img_s"] is None else f"{r['torch_img_s']:.0f}"
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append(f"| {r['width']} | {r['dtype']} | {r['batch']} | {r['jax_img_s']:.0f} "
                         f"| {tt} | {ratio} | {r['jax_tflops']:.1f} | {mfu} |")
    rec = report.get("mnist_recipe") or {}
    if rec:
        lines += ["", f"**Madry's MNIST recipe**: {rec['steps']} steps, {rec['steps_per_s']:.1f} "
                      f"steps/s ({rec['examples_per_s']:.0f} examples/s) in the last window; "
                      f"100k steps projected: {rec['projected_100k_hours']:.2f} h."]
    res = parts.get("autoattack", {}).get("result")
    if res:
        rj, pa = res.get("robustjax"), res.get("pyautoattack")
        lines += ["", f"**AutoAttack (standard), {res['examples']} digits, eps {res['eps']}**: "
                      f"robustjax {rj['robust']:.2%} in {rj['seconds']:.1f}s" + (
                          f"; pyautoattack {pa['robust']:.2%} in {pa['seconds']:.1f}s "
                          f"({pa['seconds'] / rj['seconds']:.2f}x)" if pa else
                          f"; pyautoattack: {res.get('peer_missing') or 'skipped'} missing")]
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _OUT.value:
        raise app.UsageError("--output_dir is required")
    for p in _PARTS.value:
        if p not in PARTS:
            raise app.UsageError(f"--parts takes {', '.join(PARTS)}; got {p!r}")
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    smoke = _SMOKE.value
    # JAX and PyTorch share the device inside a part: JAX takes half, not 75%.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    if smoke:
        env["JAX_PLATFORMS"] = "cpu"
    # Asked in a child process: this one must not hold the accelerator's memory.
    probe = subprocess.run([sys.executable, "-c", "import jax; d = jax.devices()[0]; "
                            "print(jax.__version__, jax.default_backend(), d.device_kind, "
                            "sep='|')"], env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise SystemExit(f"JAX does not start here: {probe.stderr.strip()[-500:]}")
    jax_version, plat, device = probe.stdout.strip().splitlines()[-1].split("|")
    if smoke:
        device = "cpu-smoke"
    data_dir, data_note = _data_dir(out)
    commands = _commands(out, data_dir, smoke)
    report = dict(device=device, platform=plat, smoke=smoke, date=time.strftime("%Y-%m-%d"),
                  command="python -m benchmarks.accelerator " + " ".join(sys.argv[1:]),
                  jax=jax_version, host=f"{platform.node()} ({os.cpu_count()} CPUs)",
                  data=data_note, parts={},
                  torch=_version("torch"), pyautoattack=_version("pyautoattack"))
    deadline = time.time() + _BUDGET.value
    order = [p for p in _PARTS.value]
    if "pgd" in order:
        order.insert(order.index("pgd") + 1, "pgd_stock")
    for name in order:
        spec = commands.get(name)
        if spec is None:
            continue
        cmd, limit, json_path = spec
        if name == "tests" and _version("pytest") is None:
            report["parts"][name] = dict(status="skipped: pytest is not installed", seconds=0)
            continue
        if name == "autoattack" and not os.path.isdir(os.path.join(out, "recipe_workdir")):
            report["parts"][name] = dict(status="skipped: needs the mnist_recipe part's model",
                                         seconds=0)
            continue
        left = int(deadline - time.time())
        if left < 10:
            report["parts"][name] = dict(status="skipped: out of time (--budget_s)", seconds=0)
            continue
        report["parts"][name] = _run_part(name, cmd, min(limit, left), json_path, out, env)
        if name == "mnist_recipe":
            report["mnist_recipe"] = _recipe_summary(out)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    with open(os.path.join(out, f"{safe}.json"), "w") as f:
        json.dump(report, f, indent=1)
    md = _markdown(report)
    with open(os.path.join(out, f"{safe}.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"written: {os.path.join(out, safe)}.md and .json")
    failed = [k for k, v in report["parts"].items() if not v["status"].startswith(("ok",
                                                                                   "skipped"))]
    if failed:
        print(f"parts that did not finish: {', '.join(failed)} (see their logs in {out})")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
