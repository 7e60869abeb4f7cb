"""Published-model zoo: Flax architectures equal their PyTorch originals; converters; registry.

The references are the peers' released definitions (robustbench 1.1.1's architecture
files, pyautoattack's examples/resnet.py and model_test.pt), installed by the
``peers`` extra and loaded by :mod:`peers`.
"""

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import peers  # noqa: E402

from robustjax import zoo  # noqa: E402
from robustjax.zoo import CheckpointError, convert, registry  # noqa: E402

X = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)


@pytest.fixture(scope="module")
def ref():
    try:
        return dict(wrn=peers.robustbench_arch("wide_resnet"),
                    dm=peers.robustbench_arch("dm_wide_resnet"),
                    rn=peers.robustbench_arch("resnet"),
                    aa=peers.autoattack_example("resnet.py"))
    except ImportError as e:
        pytest.skip(str(e))


def _cases(r):
    """(arch, build kwargs, reference constructor): every family and switch, small WRNs."""
    dm, rn = r["dm"], r["rn"]
    c10 = dict(mean=dm.CIFAR10_MEAN, std=dm.CIFAR10_STD)
    c100 = dict(mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD)
    return [
        ("wrn-10-2", {}, lambda: r["wrn"].WideResNet(depth=10, widen_factor=2)),
        ("wrn-10-2", dict(sub_block1=True, num_classes=100),
         lambda: r["wrn"].WideResNet(depth=10, widen_factor=2, sub_block1=True, num_classes=100)),
        ("dm-wrn-10-2", dict(activation="swish", **c10),
         lambda: dm.DMWideResNet(depth=10, width=2, activation_fn=dm.Swish)),
        ("dm-wrn-16-2", dict(activation="relu", num_classes=100, **c100),
         lambda: dm.DMWideResNet(num_classes=100, depth=16, width=2, mean=dm.CIFAR100_MEAN,
                                 std=dm.CIFAR100_STD)),
        ("dm-preact-resnet-18", dict(activation="swish", **c10),
         lambda: dm.DMPreActResNet(activation_fn=dm.Swish)),
        ("preact-resnet-18", {}, lambda: rn.PreActResNet(rn.PreActBlock, [2, 2, 2, 2])),
        ("preact-resnet-18", dict(out_shortcut=True, bn_before_fc=True),
         lambda: rn.PreActResNet(rn.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)),
        ("preact-resnet-18", dict(out_shortcut=True, bn_before_fc=True, num_classes=100),
         lambda: rn.PreActResNet(rn.PreActBlock, [2, 2, 2, 2], num_classes=100,
                                 bn_before_fc=True, out_shortcut=True)),
        ("resnet-18", {}, lambda: r["aa"].ResNet18()),
        ("resnet-50", {}, lambda: rn.ResNet50()),
    ]


def _rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


@pytest.mark.slow
def test_every_architecture_equals_its_pytorch_original(ref):
    """Random weights and BN statistics; one forward each; logits to 1e-4 relative."""
    for arch, kw, make in _cases(ref):
        model = peers.randomise(make(), seed=len(arch))
        want = peers.torch_logits(model, X)
        module = zoo.build(arch, **kw)
        variables = convert.to_flax(module, peers.state_dict_numpy(model))
        got = module.apply(variables, X)
        assert _rel_err(got, want) < 1e-4, (arch, kw, _rel_err(got, want))


def _meta_state_shapes(model_fn):
    with torch.device("meta"):
        m = model_fn()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()
            if not k.endswith("num_batches_tracked")}


@pytest.mark.slow
def test_published_sizes_have_the_originals_parameters(ref):
    """Full-size WRN-28-10 ... WRN-106-16: every key and shape of the reference's state_dict
    (built on torch's meta device, so nothing is allocated)."""
    dm, rn, wrn = ref["dm"], ref["rn"], ref["wrn"].WideResNet
    table = {
        "wrn-28-10": lambda: wrn(28, widen_factor=10),
        "wrn-34-10": lambda: wrn(34, widen_factor=10),
        "wrn-34-20": lambda: wrn(34, widen_factor=20),
        "wrn-70-16": lambda: wrn(70, widen_factor=16),
        "dm-preact-resnet-18": lambda: dm.DMPreActResNet(),
        "preact-resnet-18": lambda: rn.PreActResNet(rn.PreActBlock, [2, 2, 2, 2]),
        "resnet-18": lambda: rn.ResNet18(), "resnet-50": lambda: rn.ResNet50()}
    for arch in ("dm-wrn-28-10", "dm-wrn-34-20", "dm-wrn-70-16", "dm-wrn-106-16"):
        d, w = (int(v) for v in arch.split("-")[2:])
        table[arch] = (lambda d=d, w=w: dm.DMWideResNet(depth=d, width=w))
    assert set(table) == set(zoo.ARCHITECTURES)
    for arch, make in table.items():
        assert convert.expected_keys(zoo.build(arch)) == _meta_state_shapes(make), arch


def test_autoattack_example_checkpoint_gives_torchs_logits(ref):
    """pyautoattack's trained ResNet-18 (examples/model_test.pt) through zoo.load."""
    path = peers.autoattack_example("model_test.pt")
    model = ref["aa"].ResNet18()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    x = np.random.RandomState(1).rand(8, 32, 32, 3).astype(np.float32)
    want = peers.torch_logits(model.eval(), x)
    logits_fn = zoo.load("resnet-18", checkpoint=path)
    assert _rel_err(logits_fn(x), want) < 1e-4
    assert (np.argmax(logits_fn(x), -1) == want.argmax(-1)).all()


@pytest.fixture(scope="module")
def small_wrn(ref, tmp_path_factory):
    """A random WRN-10-1 (sub_block1) saved as a PyTorch state_dict, and its logits."""
    model = peers.randomise(ref["wrn"].WideResNet(depth=10, widen_factor=1, sub_block1=True))
    path = tmp_path_factory.mktemp("ckpt") / "wrn.pt"
    torch.save(model.state_dict(), path)
    return model, str(path), peers.torch_logits(model, X)


def test_wrapped_and_prefixed_checkpoints_load(small_wrn, tmp_path):
    model, path, want = small_wrn
    sd = model.state_dict()
    for i, obj in enumerate([{"state_dict": {f"module.{k}": v for k, v in sd.items()}},
                             {"model_state_dict": sd, "epoch": 3},
                             {f"model.{k}": v for k, v in sd.items()}]):
        p = tmp_path / f"c{i}.pth"
        torch.save(obj, p)
        fn = zoo.load("wrn-10-1", checkpoint=p, sub_block1=True)
        assert _rel_err(fn(X), want) < 1e-5, i
    # RobustBench's normalize_model(): "normalize.mean/std" beside "model." (mean 0, std 1).
    p = tmp_path / "normalized.pt"
    torch.save(dict({f"model.{k}": v for k, v in sd.items()},
                    **{"normalize.mean": torch.zeros(1, 3, 1, 1),
                       "normalize.std": torch.ones(1, 3, 1, 1)}), p)
    fn = zoo.load("wrn-10-1", checkpoint=p, sub_block1=True, mean=(0, 0, 0), std=(1, 1, 1))
    assert _rel_err(fn(X), want) < 1e-5


def _save(tmp_path, sd, name="bad.pt"):
    p = tmp_path / name
    torch.save(sd, p)
    return p


def test_checkpoint_that_does_not_fit_names_the_parameter(small_wrn, tmp_path):
    model, path, _ = small_wrn
    sd = dict(model.state_dict())
    missing = {k: v for k, v in sd.items() if k != "fc.bias"}
    with pytest.raises(CheckpointError, match=r"'fc\.bias' \(shape \(10,\)\) is missing.*"
                                              r"\[1 missing, 0 unexpected, 0 of the wrong"):
        zoo.load("wrn-10-1", checkpoint=_save(tmp_path, missing), sub_block1=True)
    extra = dict(sd, **{"block1.layer.0.extra.weight": torch.zeros(3, 4)})
    with pytest.raises(CheckpointError, match=r"'block1\.layer\.0\.extra\.weight' \(shape "
                                              r"\(3, 4\)\) in the checkpoint has no place"):
        zoo.load("wrn-10-1", checkpoint=_save(tmp_path, extra), sub_block1=True)
    wrong = dict(sd, **{"block2.layer.0.conv1.weight": torch.zeros(32, 16, 5, 5)})
    with pytest.raises(CheckpointError, match=r"'block2\.layer\.0\.conv1\.weight' has shape "
                                              r"\(32, 16, 5, 5\) in the checkpoint, but .* "
                                              r"expects \(32, 16, 3, 3\)"):
        zoo.load("wrn-10-1", checkpoint=_save(tmp_path, wrong), sub_block1=True)
    # The unused sub-block is never dropped silently: without sub_block1=True it is extra.
    with pytest.raises(CheckpointError, match="sub_block1=True"):
        zoo.load("wrn-10-1", checkpoint=path)
    # Normalisation buffers in the state must equal the model's own.
    normed = dict(sd, mu=torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1),
                  sigma=torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))
    p = _save(tmp_path, normed, "normed.pt")
    with pytest.raises(CheckpointError, match="normalises its input with mu="):
        zoo.load("wrn-10-1", checkpoint=p, sub_block1=True)
    zoo.load("wrn-10-1", checkpoint=p, sub_block1=True, mean=(0.4914, 0.4822, 0.4465),
             std=(0.2471, 0.2435, 0.2616))
    with pytest.raises(CheckpointError, match="file not found"):
        zoo.load("wrn-10-1", checkpoint=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="torch cannot read it"):
        zoo.load("wrn-10-1", checkpoint=tmp_path / "junk.pt")


def _haiku_trees(model):
    """DeepMind's Haiku (params, state) of a DMWideResNet, with the module names, layouts
    and EMA states that adversarial_robustness/jax/model_zoo.py's WideResNet has under
    dm-haiku 0.0.17 (checked once against their code: benchmarks/RESULTS.md)."""
    params, state = {}, {}
    top = "wide_res_net"
    for k, v in model.state_dict().items():
        v = v.numpy()
        mod, leaf = k.rsplit(".", 1)
        parts = mod.split(".")
        if parts[0] == "layer":  # constructor-made submodules are joined by "/~/"
            mod = f"resnet_lay_{parts[1]}_block_{parts[3]}/~/{parts[4]}"
        mod = f"{top}/~/{mod}"
        if leaf == "weight" and v.ndim == 4:
            params.setdefault(mod, {})["w"] = v.transpose(2, 3, 1, 0)
        elif leaf == "weight" and v.ndim == 2:
            params.setdefault(mod, {})["w"] = v.T
        elif leaf in ("weight", "bias") and "batchnorm" in mod:
            params.setdefault(mod, {})["scale" if leaf == "weight" else "offset"] = \
                v.reshape(1, 1, 1, -1)
        elif leaf == "bias":
            params.setdefault(mod, {})["b"] = v
        elif leaf in ("running_mean", "running_var"):
            ema = "mean_ema" if leaf == "running_mean" else "var_ema"
            state[f"{mod}/~/{ema}"] = {"average": v.reshape(1, 1, 1, -1),
                                       "counter": np.int32(7), "hidden": v.reshape(1, 1, 1, -1)}
    return params, state


def test_deepmind_haiku_checkpoint(ref, tmp_path):
    dm = ref["dm"]
    model = peers.randomise(dm.DMWideResNet(depth=10, width=2, activation_fn=dm.Swish))
    want = peers.torch_logits(model, X)
    params, state = _haiku_trees(model)
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = params, state
    path = tmp_path / "dm.npy"
    np.save(path, arr, allow_pickle=True)
    kw = dict(mean=dm.CIFAR10_MEAN, std=dm.CIFAR10_STD)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        zoo.load("dm-wrn-10-2", checkpoint=path, **kw)
    fn = zoo.load("dm-wrn-10-2", checkpoint=path, allow_pickle=True, **kw)
    assert _rel_err(fn(X), want) < 1e-4
    del params["wide_res_net/~/resnet_lay_1_block_0/~/shortcut"]
    arr[0] = params
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(CheckpointError, match=r"'layer\.1\.block\.0\.shortcut\.weight' "
                                              r"\(shape \(64, 32, 1, 1\)\) is missing"):
        zoo.load("dm-wrn-10-2", checkpoint=path, allow_pickle=True, **kw)


def test_registry():
    es = zoo.entries()
    assert len(es) >= 15
    groups = {(e.dataset, e.threat_model) for e in es}
    assert {("cifar10", "Linf"), ("cifar10", "L2"), ("cifar100", "Linf")} <= groups
    keys = [(e.id, e.dataset, e.threat_model) for e in es]
    assert len(keys) == len(set(keys))
    for e in es:
        assert e.arch in zoo.ARCHITECTURES, e
        assert 0 < e.autoattack < e.clean < 100, e
        assert e.eps == pytest.approx(8 / 255 if e.threat_model == "Linf" else 0.5)
    e = zoo.find("Gowal2020Uncovering", "cifar100", "Linf")
    assert (e.arch, e.mean) == ("dm-wrn-70-16", registry.DATASET_STATS["cifar100"][0])
    with pytest.raises(ValueError, match="pass dataset= and threat_model="):
        zoo.find("Engstrom2019Robustness")
    with pytest.raises(ValueError, match="neither an architecture .* nor a registry ID"):
        zoo.load("NoSuch2099Model", checkpoint="x.pt")
    with pytest.raises(ValueError, match="overrides"):
        zoo.load("Wong2020Fast", checkpoint="x.pt", mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match=r"options \['activation'\] do not apply"):
        zoo.build("resnet-18", activation="relu")


def _robustbench_model_zoo(ref):
    """``(id, dataset, threat) -> (model AST, class ASTs)`` from robustbench's
    model_zoo/cifar10.py and cifar100.py (parsed: importing them needs torchvision)."""
    import ast

    out = {}
    for dataset in ("cifar10", "cifar100"):
        with open(os.path.join(peers._package_dir("robustbench"), "model_zoo",
                               f"{dataset}.py")) as f:
            tree = ast.parse(f.read())
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in ("linf", "l2")):
                threat = {"linf": "Linf", "l2": "L2"}[node.targets[0].id]
                for item in node.value.args[0].elts:
                    keys = [k.value for k in item.elts[1].keys]
                    out[(item.elts[0].value, dataset, threat)] = (
                        item.elts[1].values[keys.index("model")], classes)
    return out


def _reference_normalisation(expr, classes, ns):
    """The input normalisation a robustbench model definition applies: (mean, std) or None."""
    import ast

    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    for name in names & set(classes):
        buffers = {}
        for call in ast.walk(classes[name]):
            if (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "register_buffer"):
                values = next(n for n in ast.walk(call.args[1]) if isinstance(n, ast.List))
                buffers[call.args[0].value] = tuple(ast.literal_eval(values))
        if buffers:
            return buffers["mu"], buffers["sigma"]
        if "x = 2.0 * x - 1.0" in ast.unparse(classes[name]):  # Hendrycks et al.: 2x - 1
            return (0.5,) * 3, (0.5,) * 3
    call = expr.body if isinstance(expr, ast.Lambda) else expr
    if isinstance(call, ast.Call) and getattr(call.func, "id", "") in ("DMWideResNet",
                                                                       "DMPreActResNet"):
        kw = {k.arg: eval(compile(ast.Expression(k.value), "<rb>", "eval"), ns)
              for k in call.keywords}
        return tuple(kw.get("mean", ns["CIFAR10_MEAN"])), tuple(kw.get("std", ns["CIFAR10_STD"]))
    return None


@pytest.mark.slow
def test_registry_matches_robustbench_definitions(ref):
    """Each entry's architecture, options, classes and normalisation against robustbench
    1.1.1's own model_zoo entry, built on torch's meta device: the same state_dict keys and
    shapes, and the same input normalisation."""
    import ast

    ns = {"torch": torch, "nn": torch.nn}
    for mod in (ref["wrn"], ref["dm"], ref["rn"]):
        ns.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
    zoo_defs = _robustbench_model_zoo(ref)
    for e in zoo.entries():
        expr, classes = zoo_defs[(e.id, e.dataset, e.threat_model)]
        for name in {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)} & set(classes):
            exec(compile(ast.Module([classes[name]], []), "<robustbench>", "exec"), ns)
        make = eval(compile(ast.Expression(expr), "<robustbench>", "eval"), ns)
        with torch.device("meta"):
            model = make()
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked") and k not in ("mu", "sigma")}
        assert convert.expected_keys(e.build()) == want, e.id
        norm = _reference_normalisation(expr, classes, ns)
        if norm is None:
            assert e.mean is None, e.id
        else:
            np.testing.assert_allclose(e.mean, norm[0], rtol=0, atol=1e-12, err_msg=e.id)
            np.testing.assert_allclose(e.std, norm[1], rtol=0, atol=1e-12, err_msg=e.id)


def test_registry_id_loads_with_its_normalisation(ref, tmp_path):
    """Wong2020Fast: PreAct ResNet-18 whose state keeps mu/sigma (RobustBench's class)."""
    rn = ref["rn"]
    model = peers.randomise(rn.PreActResNet(rn.PreActBlock, [2, 2, 2, 2]))
    mu = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    sigma = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    xt = torch.from_numpy(X.transpose(0, 3, 1, 2))
    with torch.no_grad():
        want = model((xt - mu) / sigma).numpy()
    p = tmp_path / "wong.pt"
    torch.save(dict(model.state_dict(), mu=mu, sigma=sigma), p)
    fn = zoo.load("Wong2020Fast", checkpoint=p)
    assert fn.entry.threat_model == "Linf" and fn.entry.autoattack == 43.21
    assert _rel_err(fn(X), want) < 1e-4
    torch.save(dict(model.state_dict()), p)  # RobustBench's file may lack the buffers
    assert _rel_err(zoo.load("Wong2020Fast", checkpoint=p)(X), want) < 1e-4
    assert os.path.exists(p)


def _run(*args):
    from entry import subprocess_run
    return subprocess_run("experiments.benchmark", *args)


def _here(*args):
    from entry import in_process
    return in_process("experiments.benchmark", *args)


@pytest.mark.slow
def test_benchmark_entry_point(small_wrn, cifar_dir, tmp_path):
    """End to end on generated CIFAR-shaped data with a tiny WRN; a rerun resumes."""
    import json

    _, path, _ = small_wrn
    args = ["--model=wrn-10-1", "--options=sub_block1=true", f"--checkpoint={path}",
            "--dataset=cifar10", "--threat_model=Linf", "--examples=8", "--num_steps=2",
            "--num_queries=5", "--batch_size=8", f"--data_dir={cifar_dir}",
            f"--output_dir={tmp_path}"]
    p = _run(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(tmp_path / "benchmark.json"))
    assert {"name", "dataset", "eps", "architecture", "clean_acc", "autoattack_acc",
            "reported", "accuracy_after", "rows", "n_examples"} <= set(res)
    assert res["n_examples"] == 8 and res["eps"] == pytest.approx(8 / 255)
    assert list(res["accuracy_after"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert float(res["autoattack_acc"]) <= float(res["clean_acc"])
    assert res["reported"] is None  # an architecture name has no reported figures
    assert "| AutoAttack |" in open(tmp_path / "benchmark.md").read()
    again = _here(*args)  # every attack's state is stored: the rerun resumes, same result
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.load(open(tmp_path / "benchmark.json"))["accuracy_after"] == res["accuracy_after"]
    listing = _here("--list")
    assert listing.returncode == 0 and "Gowal2020Uncovering_70_16_extra" in listing.stdout
    for bad, what in (("--model=NoSuch2099", "neither an architecture"),
                      (f"--checkpoint={tmp_path}/none.pt", "file not found")):
        p = _here(*[a for a in args if not a.startswith(bad.split("=")[0])], bad)
        assert p.returncode == 1 and what in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.slow
def test_loaded_model_composes_with_attacks_suite_sweeps_landscape():
    """zoo.load's logits_fn is an ordinary robustjax logits_fn (jit, vmap, grad inside)."""
    from robustjax.attacks import first_order as attacks
    from robustjax.evaluation import landscape
    from robustjax.evaluation import suite
    from robustjax.evaluation import sweeps

    module = zoo.build("wrn-10-1", num_classes=10)
    variables = module.init(jax.random.PRNGKey(0), X[:1])
    fn = zoo.load("wrn-10-1", variables=variables)
    assert fn.entry is None and fn.module == module
    x, y = X, np.asarray(np.argmax(fn(X), -1), np.int32)  # clean-correct by construction
    eps = 4 / 255
    x_adv = jax.jit(lambda x, y, k: attacks.pgd(fn, x, y, k, eps=eps, step_size=eps / 2,
                                                num_steps=3))(x, y, jax.random.PRNGKey(1))
    assert np.max(np.abs(np.asarray(x_adv) - x)) <= eps + 1e-6
    assert 0.0 <= float(np.min(x_adv)) and float(np.max(x_adv)) <= 1.0
    res = suite.run_suite(fn, x, y, [suite.AttackSpec("Natural", attack="natural", eps=eps),
                                     suite.AttackSpec("PGD-3", eps=eps, steps=3,
                                                      step_size=eps / 2)], batch_size=2)
    assert res.rows[0]["accuracy"] == 1.0 and res.rows[-1]["accuracy"] <= 1.0
    curve = sweeps.accuracy_curve(fn, x, y, jax.random.PRNGKey(2),
                                  sweeps.sweep_attack("pgd", fn, norm="linf", num_steps=2),
                                  [0.0, eps], norm="linf", batch_size=2)
    assert curve.accuracy[0] == 1.0 and curve.accuracy[1] <= 1.0
    ls = landscape.restart_losses(fn, x, y, jax.random.PRNGKey(3), eps=eps, step_size=eps / 2,
                                  num_steps=2, restarts=2, keep_trajectories=1)
    assert np.all(np.isfinite(ls.final))
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        zoo.load("wrn-10-1")
