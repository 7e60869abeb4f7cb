"""BPDA, EOT, the defence transforms and the adaptive evaluation (Athalye, Carlini & Wagner,
ICML 2018): BPDA breaks a quantised model that plain PGD cannot; EOT's gradient variance
falls with its samples; one EOT sample is the plain attack; AutoAttack through the wrappers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import robustjax
from conftest import assert_valid_adversarial
from robustjax.attacks import adaptive
from robustjax.evaluation import adaptive_eval
from robustjax.models import defences


def test_bpda_forward_as_given_backward_of_the_stand_in():
    x = jnp.array([0.1, 0.4, 0.8])
    q = adaptive.bpda(lambda v: jnp.round(v * 2) / 2)
    chex.assert_trees_all_close(q(x), jnp.round(x * 2) / 2)
    chex.assert_trees_all_close(jax.grad(lambda v: jnp.sum(q(v) * jnp.arange(3.0)))(x),
                                jnp.arange(3.0))  # identity backward
    sq = adaptive.bpda(jnp.round, backward=lambda v: v ** 2)
    chex.assert_trees_all_close(jax.grad(lambda v: jnp.sum(sq(v)))(x), 2 * x)
    with pytest.raises(ValueError, match="keep its input's shape"):
        adaptive.bpda(lambda v: v[:2])(x)
    with pytest.raises(TypeError, match="forward must be a function"):
        adaptive.bpda(3)


def test_straight_through_rewrites_every_rounding_in_the_program():
    def f(v):
        return jnp.sum(jnp.round(v * 3) / 3 + jnp.sign(v) + jnp.sin(v))

    x = jnp.array([0.2, 0.7, -0.4])
    st = adaptive.straight_through(f)
    chex.assert_trees_all_close(st(x), f(x))
    chex.assert_trees_all_close(jax.grad(st)(x), 2.0 + jnp.cos(x), atol=1e-6)
    chex.assert_trees_all_close(jax.jit(jax.grad(st))(x), 2.0 + jnp.cos(x), atol=1e-6)


def _noisy(sigma):
    w = jax.random.normal(jax.random.PRNGKey(3), (64, 10))
    return lambda z, k: (z.reshape(z.shape[0], -1) + sigma * jax.random.normal(
        k, (z.shape[0], 64))) ** 2 @ w


def test_eot_is_pure_keyed_per_example_and_its_variance_falls_with_samples():
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1))
    f = _noisy(0.5)
    g = adaptive.eot(f, 4, key=jax.random.PRNGKey(1))
    chex.assert_trees_all_close(g(x), g(x))                       # pure
    chex.assert_trees_all_close(g(x[::-1]), g(x)[::-1])           # per example, not per row
    chex.assert_trees_all_close(jax.jit(g)(x), g(x), rtol=1e-5)
    assert not np.allclose(g(x + 1e-3), g(x), atol=1e-2)          # a new input: new draws
    probs = jnp.exp(adaptive.eot(f, 3, average="log_probs")(x))  # the expected classifier
    chex.assert_trees_all_close(probs.sum(-1), jnp.ones(3), atol=1e-5)
    # One sample is one draw of the model, keyed by the input.
    one = adaptive.eot(f, 1, key=jax.random.PRNGKey(1))
    keys = adaptive.input_keys(jax.random.PRNGKey(1), x)
    manual = jnp.concatenate([f(x[j:j + 1], jax.random.fold_in(keys[j], 0)) for j in range(3)])
    chex.assert_trees_all_close(one(x), manual, rtol=1e-5)

    def grad_variance(samples):
        grads = [jax.grad(lambda z: jnp.sum(adaptive.eot(f, samples, key=jax.random.PRNGKey(s))(
            z)[:, 0]))(x) for s in range(16)]
        return float(jnp.mean(jnp.var(jnp.stack(grads), axis=0)))

    v1, v4, v16 = grad_variance(1), grad_variance(4), grad_variance(16)
    assert v1 > v4 > v16 and v16 < v1 / 8, (v1, v4, v16)


def test_eot_with_one_sample_of_a_deterministic_model_is_the_plain_attack(natural_model):
    m = natural_model
    x, y = m.x[:16], m.y[:16]
    plain = robustjax.pgd(m.logits_fn, x, y, jax.random.PRNGKey(0), eps=0.1, step_size=0.02,
                          num_steps=5)
    wrapped = robustjax.pgd(robustjax.eot(lambda z, k: m.logits_fn(z), 1), x, y,
                            jax.random.PRNGKey(0), eps=0.1, step_size=0.02, num_steps=5)
    chex.assert_trees_all_close(wrapped, plain, atol=1e-6)


@pytest.mark.slow
def test_square_and_fab_take_eot_samples():
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
    f = _noisy(0.05)
    y = jnp.argmax(adaptive.eot(f, 8)(x), -1)
    key = jax.random.PRNGKey(5)
    adv = robustjax.square(f, x, y, key, eps=0.1, num_queries=30, eot_samples=4)
    assert_valid_adversarial(adv, x, eps=0.1, norm="linf")
    k2, keot = jax.random.split(key)  # the same as composing the wrapper by hand
    by_hand = robustjax.square(adaptive.eot(f, 4, key=keot), x, y, k2, eps=0.1, num_queries=30)
    chex.assert_trees_all_close(adv, by_hand)
    adv = robustjax.fab(f, x, y, key, eps=0.1, num_steps=5, targeted=False, eot_samples=3)
    assert_valid_adversarial(adv, x, eps=0.1, norm="linf")
    with pytest.raises(ValueError, match="eot_samples"):
        robustjax.square(f, x, y, key, eps=0.1, eot_samples=0)
    # AutoAttack's rand version with a chosen list: every attack through EOT.
    res = robustjax.autoattack(f, x, y, key, eps=0.1, version="rand",
                               attacks=["apgd-ce", "fab", "square"], eot_samples=2,
                               num_steps=3, num_queries=10, batch_size=4)
    assert list(res.accuracy_after) == ["apgd-ce", "fab", "square"]
    assert res.inspection["findings"][0]["kind"] == "random"
    with pytest.raises(ValueError, match="attacks is only for version='custom' or 'rand'"):
        robustjax.autoattack(f, x, y, key, eps=0.1, attacks=["square"])


def test_defence_transforms_keep_shape_and_range():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 1))
    key = jax.random.PRNGKey(1)
    for t in (defences.quantize(4), defences.jpeg(50), defences.jpeg(50, differentiable=True),
              defences.noise(0.3), defences.resize_pad(4)):
        out = t(x, key)
        chex.assert_equal_shape([out, x])
        assert float(out.min()) >= 0 and float(out.max()) <= 1, t.name
    assert set(np.unique(np.asarray(defences.quantize(3)(x)))) <= {0.0, 0.5, 1.0}
    assert float(jnp.abs(defences.jpeg(100)(x) - x).max()) < 0.02   # near-lossless
    assert float(jnp.abs(defences.jpeg(10)(x) - x).mean()) > 0.05   # lossy
    assert not np.allclose(defences.noise(0.1)(x, key), defences.noise(0.1)(x, key + 1))
    assert defences.parse("quantize:2", None).name == "quantize:2"
    with pytest.raises(ValueError, match="defence must be one of"):
        defences.parse("blur:2", None)
    with pytest.raises(ValueError, match="takes a int"):
        defences.parse("jpeg:high", None)


@pytest.fixture(scope="module")
def quantised(natural_model):
    m = natural_model
    n = 100
    return m, defences.defend(m.logits_fn, defences.quantize(3)), m.x[:n], m.y[:n]


@pytest.mark.slow
def test_bpda_breaks_a_quantised_model_that_plain_pgd_cannot(quantised):
    """Athalye et al. 2018, Section 4.1 (BPDA against input quantisation), on real digits.

    Three levels (0, 0.5, 1): at eps 0.3 a background pixel can reach the next level. (With
    two levels, binarisation at 0.5, eps 0.3 can only flip grey pixels: most of the
    robustness is then real.)
    """
    m, q, x, y = quantised
    eps = 0.3

    def acc(adv):
        return float(jnp.mean(jnp.argmax(q(adv), -1) == y))

    clean = acc(x)
    pgd = dict(eps=eps, step_size=0.01, num_steps=40)
    plain = acc(robustjax.pgd(q, x, y, jax.random.PRNGKey(0), **pgd))
    bpda_quantised = robustjax.bpda(defences.quantize(3))

    def through_model(z):  # the same model, the identity's gradient through the rounding
        return m.logits_fn(bpda_quantised(z))

    through = acc(robustjax.pgd(through_model, x, y, jax.random.PRNGKey(0), **pgd))
    square = acc(robustjax.square(q, x, y, jax.random.PRNGKey(0), eps=eps, num_queries=5000))
    assert plain >= clean - 0.10, (clean, plain)
    assert through <= plain - 0.30, (plain, through)
    assert through <= square + 0.02, (through, square)
    rep = robustjax.inspect(q, x, y, examples=100)
    assert rep.probes["zero_gradient"] >= 0.95


@pytest.mark.slow
def test_autoattack_through_the_wrappers_counts_on_the_model_as_given(quantised):
    m, q, x, y = quantised
    x, y = x[:40], y[:40]
    kw = dict(eps=0.3, version="custom", attacks=["apgd-ce"], num_steps=20, batch_size=40)
    given = robustjax.autoattack(q, x, y, jax.random.PRNGKey(0), **kw)
    assert any("zero gradient" in w for w in given.warnings)
    assert any("round" in w for w in given.warnings)
    assert given.inspection["probes"]["zero_gradient"] >= 0.95
    st = adaptive.straight_through(q)
    adapted = robustjax.autoattack(q, x, y, jax.random.PRNGKey(0), attack_fn=st, **kw)
    assert adapted.clean_accuracy == given.clean_accuracy
    assert adapted.robust_accuracy <= given.robust_accuracy - 0.3
    # Each adversarial example counts on the model as given.
    broken = ~adapted.correct & adapted.clean_correct
    assert np.all(np.argmax(q(adapted.x_adv[broken]), -1) != y[broken])
    off = robustjax.autoattack(q, x, y, jax.random.PRNGKey(0), inspect=False, **kw)
    assert off.inspection is None and off.robust_accuracy == given.robust_accuracy


@pytest.mark.slow
def test_adaptive_evaluation_side_by_side(quantised, tmp_path):
    m, _, x, y = quantised
    res = adaptive_eval.adaptive_autoattack(
        m.logits_fn, x[:30], y[:30], jax.random.PRNGKey(0),
        transforms=[defences.quantize(3), defences.noise(0.05)], eps=0.3, version="custom",
        attacks=["apgd-ce"], num_steps=10, eot_samples=2, batch_size=30,
        resume_dir=str(tmp_path))
    assert res.wrappers == ["bpda(quantize:3)", "eot(2)"]
    assert res.inspection.shattered and res.inspection.randomized
    rows = {r["attack"]: r for r in res.rows}
    assert rows["AutoAttack"]["gap"] >= 0.3, res.rows
    assert (tmp_path / "given").is_dir() and (tmp_path / "adaptive").is_dir()
    md = adaptive_eval.markdown(res.rows)
    assert md.splitlines()[0] == "| | as given | adaptive | gap |"


@pytest.mark.slow
def test_the_official_checks_fire_on_the_same_models(natural_model):
    """pyautoattack 0.2.0's check_zero_gradients and check_dynamic on PyTorch twins of the
    quantised and the purified model fire where robustjax's inspection does, and not on the
    plain model (the ``peers`` extra)."""
    import warnings

    torch = pytest.importorskip("torch")
    checks = pytest.importorskip("pyautoattack.checks")
    from benchmarks.torch_port import torch_mnist_cnn

    m = natural_model
    net = torch_mnist_cnn(m.params)
    x, y = m.x[:32], m.y[:32]
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))

    class Quantised(torch.nn.Module):  # defences.quantize(3): levels 0, 0.5, 1
        def forward(self, z):
            return net(torch.round(z * 2) / 2)

    class Purified(torch.nn.Module):  # defences.purify(steps=1, step_size=0.02)
        def forward(self, z):
            with torch.enable_grad():
                z = z.detach().clone().requires_grad_(True)
                logp = torch.log_softmax(net(z), -1)
                entropy = -(logp.exp() * logp).sum()
                g = torch.autograd.grad(entropy, z)[0]
            return net((z - 0.02 * g.sign()).clamp(0, 1).detach())

    def official(check, *args):
        for k in checks.funcs:  # the official counters are global: start from zero
            checks.funcs[k] = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check(*args)
        return [str(w.message) for w in caught]

    def official_zero(model):
        z = xt.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(z), yt, reduction="sum")
        grad = torch.autograd.grad(loss, z)[0]
        n_zero = int((grad.reshape(len(z), -1).abs().sum(-1) == 0).sum())
        return official(checks.check_zero_gradients, grad), n_zero

    ours = {name: robustjax.inspect(fn, x, y) for name, fn in (
        ("plain", m.logits_fn),
        ("quantised", defences.defend(m.logits_fn, defences.quantize(3))),
        ("purified", defences.defend(m.logits_fn, defences.purify(m.logits_fn, steps=1))))}

    fired, n_zero = official_zero(Quantised().eval())
    assert fired and "zero gradient" in fired[0]
    assert ours["quantised"].probes["zero_gradient_count"] == n_zero == 32
    fired, n_zero = official_zero(net)
    assert not fired and n_zero == 0 == ours["plain"].probes["zero_gradient_count"]

    fired = official(checks.check_dynamic, Purified().eval(), xt)
    assert fired and "dynamic defense" in fired[0]
    assert [f.kind for f in ours["purified"].findings if f.kind == "dynamic"] == ["dynamic"]
    assert not official(checks.check_dynamic, net, xt)
    assert not any(f.kind == "dynamic" for f in ours["plain"].findings)
