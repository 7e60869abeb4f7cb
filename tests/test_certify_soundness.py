"""The verifier is sound or refuses: issue 30's defects, random networks, chunks, alpha-CROWN.

Networks are tiny, so that each compiles in about a second.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import first_order as attacks
from robustjax.certify import graph as bound_graph
from robustjax.evaluation import bracket
from robustjax.certify import verifier as certify
from robustjax.models import paper as models
from robustjax.certify.crown import batch_axis_ok

from conftest import random_mnist_cnn

RTOL = 1e-5
Refused = certify.UnsupportedPrimitiveError


def _bounds(f, x, eps, method):
    return certify.bounds(f, x, eps=eps, method=method)


def _points(f, x, eps, key, n=16, pgd=True):
    """Uniform, corner and (optionally) PGD points of the eps-ball clipped to [0, 1]."""
    keys = jax.random.split(key, n)
    pts = []
    for i, k in enumerate(keys):
        d = jax.random.uniform(k, x.shape, minval=-eps, maxval=eps)
        pts.append(jnp.clip(x + (jnp.sign(d) * eps if i % 2 else d), 0, 1))
    if pgd:     # signed-gradient ascent / descent on two logits: 8 steps each, one compile
        @jax.jit
        def ascent(v, direction):
            for _ in range(8):
                g = jax.grad(lambda u: jnp.sum(f(u) * direction))(v)
                v = jnp.clip(jnp.clip(v + eps / 4 * jnp.sign(g), x - eps, x + eps), 0, 1)
            return v
        k = f(x).shape[-1]
        for t in range(min(2, k)):
            for s in (1.0, -1.0):
                pts.append(ascent(pts[t], s * jnp.eye(k)[t]))
    return pts


def _assert_sound(f, x, eps, lo, hi, key=jax.random.PRNGKey(7), pgd=True):
    fj = jax.jit(f)
    for p in [x] + _points(f, x, eps, key, pgd=pgd):
        z = fj(p)
        tol = RTOL * (1 + jnp.abs(z))
        assert bool(jnp.all(z >= lo - tol) & jnp.all(z <= hi + tol)), (
            float(jnp.max(jnp.maximum(lo - z, z - hi))))


def _dense(seed, n_in, n_out):
    r = np.random.default_rng(seed)
    return (r.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)


W1, W2 = _dense(0, 6, 8), _dense(1, 8, 3)
X = jax.random.uniform(jax.random.PRNGKey(0), (5, 6))


@jax.jit
def relu(z):          # a user's function that is *named* relu (decreasing: no ReLU rule holds)
    return 1.3 - 2.0 * z


ACTIVATIONS = {
    "leaky_relu 0": (lambda h: jax.nn.leaky_relu(h, 0.0), True),
    "leaky_relu 1": (lambda h: jax.nn.leaky_relu(h, 1.0), True),
    "leaky_relu 0.3": (lambda h: jax.nn.leaky_relu(h, 0.3), True),
    "leaky_relu -0.01": (lambda h: jax.nn.leaky_relu(h, -0.01), False),
    "leaky_relu 1.01": (lambda h: jax.nn.leaky_relu(h, 1.01), False),
    "leaky_relu 3": (lambda h: jax.nn.leaky_relu(h, 3.0), False),
    "elu 0": (lambda h: jax.nn.elu(h, 0.0), True),
    "elu -0.01": (lambda h: jax.nn.elu(h, -0.01), False),
    "elu -1": (lambda h: jax.nn.elu(h, -1.0), False),
    "celu 0.5": (lambda h: jax.nn.celu(h, 0.5), True),
    "celu -1": (lambda h: jax.nn.celu(h, -1.0), False),
    "user relu": (relu, False),
    "relu": (jax.nn.relu, True),
    "silu": (jax.nn.silu, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_named_activations_are_trusted_only_in_range(name):
    act, trusted = ACTIVATIONS[name]
    f = lambda z: act(z @ W1 * 3.0) @ W2  # noqa: E731
    graph = bound_graph.trace(f, jax.ShapeDtypeStruct(X.shape, jnp.float32))
    kept = [n.name for n in graph.nodes if n.prim == "call"]
    assert bool(kept) == trusted, kept     # else bounded through its body, primitive by primitive
    for method in ("ibp", "crown"):
        lo, hi = _bounds(f, X, 0.2, method)
        _assert_sound(f, X, 0.2, lo, hi)


def test_inputs_outside_bounds_are_refused_everywhere():
    f = lambda z: z @ W1  # noqa: E731
    x = np.asarray(X).copy()
    x[3, 2] = 3.0
    y = np.zeros(5, np.int32)
    with pytest.raises(ValueError, match=r"x\[3\] lies outside bounds \[0, 1\]"):
        certify.bounds(f, x, eps=0.1)
    with pytest.raises(ValueError, match=r"x\[3\] lies outside bounds"):
        certify.certified(f, x, y, eps=0.1, method="crown")
    with pytest.raises(ValueError, match=r"x\[3\] lies outside bounds"):
        bracket.bracket(f, x, y, eps=0.1, methods=("ibp",), attack_rows=("pgd",))
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"x\[3\] holds NaN"):
        certify.bounds(f, x, eps=0.1)
    # Within float rounding of the box: accepted; with the box the inputs live in: sound.
    x = np.asarray(X).copy()
    x[0, 0] = 1.0 + 1e-7
    certify.bounds(f, x, eps=0.0)
    xs = np.asarray(X) * 6 - 3                      # normalised inputs in [-3, 3]
    lo, hi = certify.bounds(f, xs, eps=0.1, bounds=(-3, 3))
    assert np.all(lo <= np.asarray(f(xs)) + 1e-5) and np.all(hi >= np.asarray(f(xs)) - 1e-5)


def test_low_precision_models_are_refused_unless_upcast_and_dots_are_highest():
    f16 = lambda z: (z.astype(jnp.bfloat16) @ W1.astype(jnp.bfloat16)).astype(jnp.float32)  # noqa: E731,E501
    with pytest.raises(ValueError, match="computes in bfloat16.*upcast=True"):
        certify.bounds(f16, X, eps=0.0)
    lo, hi = certify.bounds(f16, X, eps=0.0, upcast=True)
    # The float32 upcast: the same program (its bfloat16 weights) with every value in float32.
    want = np.asarray(X) @ np.asarray(jnp.asarray(W1, jnp.bfloat16), np.float32)
    np.testing.assert_allclose(lo, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hi, want, rtol=1e-6, atol=1e-6)
    graph = bound_graph.trace(lambda z: z @ W1, jax.ShapeDtypeStruct(X.shape, jnp.float32))
    (dot,) = [n for n in graph.nodes if n.name == "dot_general"]
    assert dot.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2


def test_nan_intervals_are_unknown_not_false():
    # 1 / (x - 0.5) spans (-inf, inf) near 0.5; times 0 its centre is NaN. The predicate is
    # true at every real point (0 > -1), and must not be read as certainly false.
    f = lambda z: jnp.where((1.0 / (z - 0.5)) * 0.0 > -1.0, z, z + 5.0)  # noqa: E731
    x = jnp.full((2, 6), 0.5) + jnp.linspace(-0.05, 0.05, 6)
    for method in ("ibp", "crown"):
        lo, hi = _bounds(f, x, 0.1, method)
        _assert_sound(f, x, 0.1, lo, hi, pgd=False)


def test_bool_to_float_is_bounded_and_integer_casts_are_refused():
    f = lambda z: z + (z > 0.5).astype(jnp.float32)  # noqa: E731
    for method in ("ibp", "crown"):
        lo, hi = _bounds(f, X, 0.2, method)
        _assert_sound(f, X, 0.2, lo, hi, pgd=False)
    lo, hi = certify.bounds(f, X, eps=0.2, method="crown")     # jitted: no raw TypeError
    _assert_sound(f, X, 0.2, lo, hi, pgd=False)
    for g in (lambda z: z + (z * 10).astype(jnp.int32).astype(jnp.float32),
              lambda z: z + ((z > 0.5).astype(jnp.int32) * 2).astype(jnp.float32)):
        with pytest.raises(Refused, match="convert_element_type.*new_dtype") as info:
            certify.bounds(g, X, eps=0.1)
        assert isinstance(info.value, ValueError)


def _random_network(seed):
    """A small random network: dense or conv, random activations with parameters in and out
    of their rules' ranges, max-pooling, residual adds."""
    r = np.random.default_rng(seed)
    acts = [lambda h: jax.nn.relu(h),
            lambda h, a=float(r.uniform(-0.5, 1.5)): jax.nn.leaky_relu(h, a),
            lambda h, a=float(r.uniform(-1, 1)): jax.nn.elu(h, a),
            jax.nn.swish, jnp.tanh, lambda h: jnp.maximum(h, 0.1)]
    picks = [acts[i] for i in r.integers(0, len(acts), 3)]
    conv = bool(r.integers(0, 2))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            if conv:
                x = picks[0](nn.Conv(3, (3, 3), padding="SAME")(x))
                x = x + picks[1](nn.Conv(3, (3, 3), padding="SAME")(x))    # residual
                x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
            else:
                x = picks[0](nn.Dense(8)(x.reshape(x.shape[0], -1)))
                x = x + picks[1](nn.Dense(8)(x))
            return nn.Dense(3)(picks[2](nn.Dense(6)(x)))
    net = Net()
    x = jax.random.uniform(jax.random.PRNGKey(seed), (3, 4, 4, 1))
    v = net.init(jax.random.PRNGKey(seed + 100), x)
    v = jax.tree_util.tree_map(lambda a: a * float(r.uniform(1, 3)), v)   # larger weights
    return (lambda z: net.apply(v, z)), x


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_random_networks_are_sound_or_refused(seed):
    f, x = _random_network(seed)
    for method in ("ibp", "crown"):
        try:
            lo, hi = _bounds(f, x, 0.1, method)
        except Refused:
            continue
        _assert_sound(f, x, 0.1, lo, hi, key=jax.random.PRNGKey(seed))


def _small_cnn():
    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
            x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
            return nn.Dense(4)(x)
    m = CNN()
    x = jax.random.uniform(jax.random.PRNGKey(0), (7, 8, 8, 1))
    v = m.init(jax.random.PRNGKey(1), x)
    return (lambda z: m.apply(v, z)), x


@pytest.mark.slow
def test_crown_in_memory_chunks_equals_one_batch_and_refuses_what_cannot_fit():
    f, x = _small_cnn()
    per, where = certify.memory_per_example(f, x.shape[1:], method="crown")
    assert "CROWN pass of the relu" in where
    whole = certify.bounds(f, x, eps=0.02, method="crown", memory_budget=1e12)
    chunks = certify.bounds(f, x, eps=0.02, method="crown", memory_budget=2.5 * per)
    for a, b in zip(whole, chunks):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _assert_sound(f, jnp.asarray(x), 0.02, *whole, pgd=False)
    with pytest.raises(MemoryError, match="CROWN pass of the relu.*crown_max_neurons.*crown_ibp"):
        certify.bounds(f, x, eps=0.02, method="crown", memory_budget=per / 2)
    # The one-computation training bounds refuse the memory-hungry methods.
    with pytest.raises(ValueError, match="use certified_margins for CROWN"):
        certify.margin_lower_bounds(f, jnp.asarray(x), jnp.zeros(7, jnp.int32), eps=0.1,
                                    method="crown")
    # The bound function is built once per function and settings.
    assert certify.make_bound_fn(f, method="crown") is certify.make_bound_fn(f, method="crown")


@pytest.mark.slow
def test_alpha_crown_is_never_looser_than_crown_and_certifies_more():
    r = np.random.default_rng(1)
    w1, w2, w3 = (r.normal(size=s).astype(np.float32) / d
                  for s, d in (((8, 32), 2), ((32, 32), 4), ((32, 3), 3)))
    f = lambda z: jax.nn.relu(jax.nn.relu(z @ w1 - 0.5) @ w2) @ w3  # noqa: E731
    x = r.uniform(size=(200, 8)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), -1))
    crown = certify.certified_margins(f, x, y, eps=0.06, method="crown")
    alpha = certify.certified_margins(f, x, y, eps=0.06, method="alpha-crown")
    fin = np.isfinite(crown)
    assert np.all(alpha[fin] >= crown[fin] - 1e-5 * (1 + np.abs(crown[fin])))
    assert np.mean(alpha[fin] - crown[fin]) > 1e-3
    assert certify.is_certified(alpha).sum() > certify.is_certified(crown).sum()
    x_adv = attacks.pgd(f, x, y, jax.random.PRNGKey(0), eps=0.06, step_size=0.01,
                        num_steps=40, restarts=3, loss="cw")
    broken = np.asarray(jnp.argmax(f(x_adv), -1) != y)
    assert not np.any(certify.certified(f, x, y, eps=0.06, method="alpha_crown") & broken)


@pytest.mark.slow
def test_batch_axis_crown_ibp_equals_the_vmapped_one():
    m = models.DMCNN(arch="dm_small")
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 12, 12, 1))
    y = jnp.arange(3)
    params = m.init(jax.random.PRNGKey(1), x)["params"]
    f = lambda z: m.apply({"params": params}, z)  # noqa: E731
    assert batch_axis_ok(bound_graph.trace(f, jax.ShapeDtypeStruct(x.shape, jnp.float32)))

    def loss(p, per_example):
        g = lambda z: m.apply({"params": p}, z)  # noqa: E731
        out = certify.certified_loss(g, x, y, eps=0.05, kappa=0.5, method="crown_ibp",
                                     beta=0.5, per_example=per_example)
        return out[0], out[2]

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, batched), gb = value_and_grad(params, False)
    (_, vmapped), gv = value_and_grad(params, True)
    np.testing.assert_allclose(batched, vmapped, rtol=1e-5, atol=1e-5)
    for u, v in zip(jax.tree_util.tree_leaves(gb), jax.tree_util.tree_leaves(gv)):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_batch_axis_crown_on_an_im2col_network_equals_the_vmapped_one():
    # The paper's CNN folds pixels into axis 0 for its im2col convolutions: examples stay
    # contiguous blocks of rows, which the batch-axis check accepts.
    f, x = random_mnist_cnn((3, 12, 12, 1), x_seed=0, init_seed=1)
    assert batch_axis_ok(bound_graph.trace(f, jax.ShapeDtypeStruct(x.shape, jnp.float32)))
    spec = certify.margin_spec(jnp.arange(3), 10)
    a = certify.make_bound_fn(f, method="crown", per_example=False)(x, 0.02, spec)
    b = certify.make_bound_fn(f, method="crown", per_example=True)(x, 0.02, spec)
    for u, w in zip(a, b):
        np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-5)


def test_a_model_that_mixes_examples_is_bounded_per_example():
    f = lambda z: (z - jnp.mean(z, axis=0)) @ W1  # noqa: E731  (train-mode-BN-like)
    assert not batch_axis_ok(bound_graph.trace(f, jax.ShapeDtypeStruct(X.shape, jnp.float32)))
    spec = jnp.broadcast_to(jnp.eye(8), (5, 8, 8))
    lo, hi = certify.make_bound_fn(f, jit=False)(X, 0.1, spec)    # vmapped: f on each alone
    # f of one example alone is exactly 0 (x minus its own mean; the elided affine layers make
    # the bound exact), while f on the batch is not.
    np.testing.assert_allclose(lo, 0.0, atol=1e-6)
    np.testing.assert_allclose(hi, 0.0, atol=1e-6)
    assert float(jnp.max(jnp.abs(f(X)))) > 0.05
    with pytest.raises(ValueError, match="per_example=False"):
        certify.make_bound_fn(f, jit=False, per_example=False)(X, 0.1, spec)


def test_certified_keeps_a_rounding_margin():
    inf = np.inf
    assert certify.is_certified(np.array([[inf, 0.1]]), np.array([[inf, 1.0]]))[0]
    assert not certify.is_certified(np.array([[inf, 1e-4]]), np.array([[inf, 100.0]]))[0]
    assert not certify.is_certified(np.array([[inf, np.nan]]))[0]
    assert not certify.is_certified(np.array([[inf, 0.0]]))[0]


def test_config_json_records_only_what_the_objective_reads():
    from robustjax.training.config import TrainConfig
    ibp = TrainConfig(objective="ibp", train_attack="fgsm").to_flat_json()
    for name in ("train_attack", "attack_steps", "attack_step_size", "trades_beta",
                 "crown_beta_start", "bn_attack_mode"):
        assert name not in ibp, name
    assert ibp["kappa_end"] == 0.5
    assert TrainConfig(objective="crown_ibp").to_flat_json()["crown_beta_start"] == 1.0
    madry = TrainConfig().to_flat_json()
    assert madry["attack_steps"] == 40 and "kappa_start" not in madry
    assert "trades_beta" not in madry and TrainConfig(
        objective="trades").to_flat_json()["trades_beta"]
    assert "attack_steps" not in TrainConfig(train_attack="none").to_flat_json()
    # A saved configuration reloads to the same run (the unread fields take their defaults).
    cfg = TrainConfig(objective="crown_ibp", eps=0.2)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
