"""robustjax.inspect: the static scan finds each planted gradient-hiding construct and
nothing on the paper's and the zoo's networks; the numeric probes and the custom-rule
check measure what they claim."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import robustjax
from robustjax.attacks import adaptive
from robustjax.evaluation import program
from robustjax.models import defences, paper
from robustjax.zoo import registry

W = jax.random.normal(jax.random.PRNGKey(0), (64, 10)) / 8.0
X = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1))


def dense(z):
    return z.reshape(z.shape[0], -1) @ W


@jax.custom_vjp
def _zero_backward(z):
    return z


_zero_backward.defvjp(lambda z: (z, None), lambda _, g: (jnp.zeros_like(g),))


@jax.custom_jvp
def _honest_leaky(z):
    return jnp.where(z > 0, z, 0.1 * z)


_honest_leaky.defjvp(lambda p, t: (_honest_leaky(p[0]), jnp.where(p[0] > 0, 1.0, 0.1) * t[0]))


@jax.custom_jvp
def _honest_square(z):
    return z * z


_honest_square.defjvp(lambda p, t: (p[0] * p[0], 2 * p[0] * t[0]))


def _data_dependent_loop(z):
    return dense(lax.while_loop(lambda c: jnp.max(jnp.abs(c)) > 0.1, lambda c: c * 0.5, z))


def _purified(z):
    return defences.defend(dense, defences.purify(dense, steps=1))(z)


PLANTED = {
    "round": (lambda z: dense(jnp.round(z * 4) / 4), "zero-gradient", "round"),
    "floor": (lambda z: dense(jnp.floor(z * 4) / 4), "zero-gradient", "floor"),
    "ceil": (lambda z: dense(jnp.ceil(z * 4) / 4), "zero-gradient", "ceil"),
    "sign": (lambda z: dense(jnp.sign(z - 0.5)), "zero-gradient", "sign"),
    "stop_gradient": (lambda z: dense(lax.stop_gradient(z)), "stop-gradient", "stop_gradient"),
    "threshold as value": (lambda z: dense((z > 0.5).astype(jnp.float32)), "comparison", "gt"),
    "threshold select": (lambda z: dense(jnp.where(z > 0.5, 1.0, 0.0)), "step", "select_n"),
    "integer cast": (lambda z: dense((z * 255).astype(jnp.uint8).astype(jnp.float32) / 255),
                     "integer-cast", "convert_element_type"),
    "argmax": (lambda z: jax.nn.one_hot(jnp.argmax(dense(z), -1), 10), "index", "argmax"),
    "custom_vjp": (lambda z: dense(_zero_backward(z)), "custom-rule", "custom_vjp_call"),
    "straight-through": (lambda z: dense(adaptive.bpda(lambda v: jnp.round(v))(z)),
                         "straight-through", "custom_vjp_call"),
    "while": (_data_dependent_loop, "loop", "while"),
    "sort": (lambda z: dense(jnp.sort(z, axis=1)), "sort", "sort"),
    "dynamic": (_purified, "dynamic", "jvp/vjp"),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_the_scan_finds_each_planted_construct(name):
    fn, kind, prim = PLANTED[name]
    found = program.scan(fn, X).findings
    hits = [f for f in found if f.kind == kind]
    assert hits, (name, found)
    assert any(f.primitive.startswith(prim) for f in hits), hits
    assert all(f.where for f in hits), hits  # a source line for each
    assert "test_inspect.py" in hits[0].where or kind in ("straight-through", "dynamic")


def test_the_scan_finds_randomness_and_names_the_line():
    f = defences.defend(dense, defences.noise(0.1))
    found = program.scan(f, X, jax.random.PRNGKey(0)).findings
    assert [f_.kind for f_ in found] == ["random"]
    assert "defences.py" in found[0].where


BENIGN = {
    "relu": lambda z: dense(jax.nn.relu(z - 0.5)),
    "leaky relu by where": lambda z: dense(jnp.where(z > 0.3, z, 0.1 * z)),
    "clip": lambda z: dense(jnp.clip(z, 0.2, 0.8)),
    "max-pool": lambda z: dense(jnp.repeat(jnp.repeat(lax.reduce_window(
        z, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), 2, 1), 2, 2)),
    "where on constants": lambda z: dense(z) * jnp.where(jnp.arange(10) > 4, 1.0, 2.0),
    "log_softmax": lambda z: jax.nn.log_softmax(dense(z)),
    "logsumexp": lambda z: dense(z) - jax.scipy.special.logsumexp(dense(z), -1, keepdims=True),
    "log of softmax": lambda z: jnp.log(jax.nn.softmax(dense(z))),
    "fixed-count loop": lambda z: dense(lax.fori_loop(0, 3, lambda i, c: c * 0.9, z)),
    "piecewise cond": lambda z: lax.cond(jnp.sum(z) > 3, dense, lambda q: -dense(q), z),
}


@pytest.mark.parametrize("name", list(BENIGN))
def test_no_false_alarm_on_differentiable_constructs(name):
    # Static only (honest custom rules need the probes: the custom-rule test below).
    rep = robustjax.inspect(BENIGN[name], X, probe=False)
    assert rep.findings == [], rep.findings
    assert rep.warnings() == [], rep.warnings()


def _abstract_scan(module, shape, **apply_kw):
    """Scan of ``module.apply(params, x)`` with the parameters abstract (no weights made)."""
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                                **apply_kw))
    closed = jax.make_jaxpr(lambda x, p: module.apply(p, x, **apply_kw))(spec, params)
    flags = [True] + [False] * (len(closed.jaxpr.invars) - 1)
    return program.scan_jaxpr(closed, flags).findings


@pytest.mark.parametrize("arch", ["mnist-cnn", "cifar-resnet", "dm-cnn"]
                         + [a for a in registry.ARCHITECTURES
                            if a in ("wrn-28-10", "dm-wrn-28-10", "dm-preact-resnet-18",
                                     "preact-resnet-18", "resnet-18", "resnet-50")])
def test_nothing_found_on_the_paper_and_zoo_networks(arch):
    if arch == "mnist-cnn":
        found = _abstract_scan(paper.MnistCNN(width=1), (2, 28, 28, 1))
    elif arch == "cifar-resnet":
        found = _abstract_scan(paper.CifarResNet(width=1), (2, 32, 32, 3), train=False)
    elif arch == "dm-cnn":
        found = _abstract_scan(paper.DMCNN(arch="dm_medium"), (2, 28, 28, 1))
    else:
        found = _abstract_scan(registry.build(arch, mean=(0.5,) * 3, std=(0.25,) * 3),
                               (2, 32, 32, 3), train=False)
    assert found == [], found


def test_probes_on_a_quantised_model(natural_model):
    m = natural_model
    quantised = defences.defend(m.logits_fn, defences.quantize(2))
    rep = robustjax.inspect(quantised, m.x, m.y, examples=64)
    assert rep.probes["zero_gradient"] >= 0.95
    assert rep.probes["gradient_not_better"] > 0.5
    assert rep.shattered and not rep.randomized
    joined = " ".join(rep.warnings())
    assert "zero gradient" in joined and "round" in joined
    clean = robustjax.inspect(m.logits_fn, m.x, m.y, examples=64)
    assert clean.findings == [] and clean.warnings() == []
    assert clean.probes["zero_gradient"] < 0.05
    assert clean.probes["gradient_not_better"] < 0.2
    assert clean.probes["gain_gradient_median"] > clean.probes["gain_random_median"]
    table = rep.table()
    assert "| warning | zero-gradient | `round` |" in table and "| zero_gradient |" in table


def test_the_custom_rule_check_measures_the_rule_against_its_forward_pass():
    y = jnp.zeros(4, jnp.int32)
    masked = robustjax.inspect(lambda z: dense(_zero_backward(z)), X, y)
    rule = [f for f in masked.findings if f.kind == "custom-rule"]
    assert len(rule) == 1 and "cosine 0.000" in rule[0].meaning
    assert list(masked.rules.values()) == [0.0]
    for fn in (_honest_square, lambda z: _honest_leaky(z - 0.5)):
        honest = robustjax.inspect(lambda z: dense(fn(z)), X, y)
        assert honest.findings == [] and honest.warnings() == []
        assert all(c > 0.999 for c in honest.rules.values())


def test_probes_see_nan_and_exploding_gradients_and_randomness():
    y = jnp.zeros(4, jnp.int32)
    z0 = X.at[:, 0, 0, 0].set(0.0)
    nan = robustjax.inspect(lambda z: dense(jnp.sqrt(z)), z0, y)
    assert nan.probes["nan_gradient"] == 1.0 and any("NaN" in w for w in nan.warnings())
    big = robustjax.inspect(lambda z: dense(z) * 1e9, X, y)
    assert big.probes["exploding_gradient"] == 1.0
    noisy = defences.defend(dense, defences.noise(0.1))
    rep = robustjax.inspect(noisy, X, y, randomized=True)
    assert rep.randomized and rep.probes["output_spread"] > 0


def test_inspect_rejects_bad_input():
    with pytest.raises(ValueError, match="x must be a non-empty batch"):
        robustjax.inspect(dense, np.zeros((0, 8, 8, 1)), None)
    with pytest.raises(ValueError, match="y .* is required"):
        robustjax.inspect(dense, X, None)
    with pytest.raises(ValueError, match="examples"):
        robustjax.inspect(dense, X, None, examples=0, probe=False)
    with pytest.raises(TypeError, match="logits_fn must be a function"):
        robustjax.inspect("model", X, None)
    rep = robustjax.inspect(dense, X, probe=False)
    chex.assert_equal(rep.probes, {})
