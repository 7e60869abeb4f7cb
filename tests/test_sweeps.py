"""Accuracy against eps and the gradient-masking checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_mlp
from robustjax.evaluation import sweeps


@pytest.fixture(scope="module")
def data():
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (24, 6, 6, 1)))
    f = random_mlp(jax.random.PRNGKey(2), (6, 6, 1))
    y = np.array(jnp.argmax(f(jnp.asarray(x)), -1))  # clean accuracy 100%
    y[:3] = (y[:3] + 1) % 10                              # ... 87.5%
    return f, x, y


@pytest.mark.slow
@pytest.mark.parametrize("attack,norm", [("fgsm", "linf"), ("pgd", "l2"),
                                         ("apgd", "linf"), ("apgd_t", "l2"),
                                         ("square", "linf"), ("square", "l2")])
def test_eps_zero_is_clean_accuracy_and_one_trace_per_sweep(data, attack, norm):
    f, x, y = data
    traces = []

    def counted(z):
        traces.append(1)
        return f(z)

    atk = sweeps.sweep_attack(attack, counted, norm=norm, num_steps=3, num_queries=20)
    eps = [0.0, 0.05, 0.5] if norm == "linf" else [0.0, 0.3, 3.0]
    counts = []
    for sweep in (eps[:1], eps[:1], eps):
        c = sweeps.accuracy_curve(counted, x, y, jax.random.PRNGKey(0), atk, sweep, norm=norm,
                                  batch_size=16)
        counts.append(len(traces))
    assert counts[2] - counts[1] == counts[1] - counts[0]  # 3 eps trace as often as 1 eps
    assert c.accuracy[0] == c.clean_accuracy == pytest.approx(21 / 24)
    assert c.correct.shape == (3, 24) and c.accuracy[2] <= c.accuracy[0]
    again = sweeps.accuracy_curve(f, x, y, jax.random.PRNGKey(0), atk, eps[::-1], norm=norm,
                                  batch_size=16)
    np.testing.assert_array_equal(again.correct[::-1], c.correct)
    checks = {(d["check"], d["attack"]): d for d in sweeps.masking_checks({attack: c})}
    assert checks[("eps0_equals_clean", attack)]["passed"]


def test_linear_model_curve_is_monotone_and_reaches_zero():
    """PGD finds the exact L-inf optimum of a linear two-class model, so accuracy falls
    monotonically in eps and is zero once eps exceeds every example's margin / ||d||_1."""
    d = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 1))
    f = lambda z: jnp.stack([jnp.zeros(z.shape[0]), jnp.sum((z - 0.5) * d, axis=(1, 2, 3))], 1)
    x = np.asarray(0.4 + 0.2 * jax.random.uniform(jax.random.PRNGKey(1), (40, 4, 4, 1)))
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
    atk = sweeps.sweep_attack("pgd", f, norm="linf", num_steps=20)
    eps = np.linspace(0, 0.35, 8)
    c = sweeps.accuracy_curve(f, x, y, jax.random.PRNGKey(0), atk, eps, norm="linf")
    assert np.all(np.diff(c.accuracy) <= 0) and c.accuracy[-1] == 0.0
    margin = np.abs(np.asarray(f(jnp.asarray(x)))[:, 1]) / float(jnp.sum(jnp.abs(d)))
    expected = [(margin > e).mean() for e in eps]
    np.testing.assert_allclose(c.accuracy, expected, atol=1 / 40)
    checks = sweeps.masking_checks({"pgd": c})
    assert all(ch["passed"] for ch in checks), checks


def _curve(acc, n=1000, clean=0.99, eps=(0.0, 0.1, 0.2, 0.3)):
    acc = np.asarray(acc)
    correct = np.zeros((len(acc), n), bool)
    for j, a in enumerate(acc):
        correct[j, : int(round(a * n))] = True
    return sweeps.EpsCurve(np.asarray(eps), correct.mean(1), correct, clean)


def test_masking_checks_flag_what_they_should():
    good = _curve([0.99, 0.9, 0.5, 0.01])
    assert all(c["passed"] for c in sweeps.masking_checks({"pgd": good}, train_eps=0.3))
    failed = {(c["check"], c["attack"]) for c in sweeps.masking_checks(
        {"pgd": _curve([0.95, 0.9, 0.95, 0.6]), "square": _curve([0.99, 0.8, 0.4, 0.3])},
        train_eps=0.3) if not c["passed"]}
    assert failed == {("eps0_equals_clean", "pgd"), ("non_increasing", "pgd"),
                      ("reaches_zero", "square"), ("gradient_free_not_stronger", "square")}
    # off the training norm, a stronger gradient-free attack is the finding, not a warning
    names = {c["check"] for c in sweeps.masking_checks(
        {"pgd": good, "square": _curve([0.99, 0.5, 0.2, 0.0])}, train_eps=0.3, same_norm=False)}
    assert "gradient_free_not_stronger" not in names


def test_bad_arguments_raise(data):
    f, x, y = data
    with pytest.raises(ValueError, match="attack"):
        sweeps.sweep_attack("cw", f, norm="linf")
    atk = sweeps.sweep_attack("pgd", f, norm="linf", num_steps=1)
    with pytest.raises(ValueError, match="eps_values"):
        sweeps.accuracy_curve(f, x, y, jax.random.PRNGKey(0), atk, [], norm="linf")
    with pytest.raises(ValueError, match="eps_values"):
        sweeps.accuracy_curve(f, x, y, jax.random.PRNGKey(0), atk, [0.1, -0.1], norm="linf")
