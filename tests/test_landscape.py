"""Loss landscape over random restarts (paper Section 3, Figures 1-2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_mlp
from robustjax.attacks import first_order as attacks
from robustjax.evaluation import landscape

SETTINGS = dict(eps=0.1, step_size=0.02, num_steps=5)


@pytest.fixture(scope="module")
def model_and_data():
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3, 6, 6, 1)))
    y = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (3,), 0, 10))
    return random_mlp(jax.random.PRNGKey(2), (6, 6, 1)), x, y


@pytest.fixture(scope="module")
def result(model_and_data):
    f, x, y = model_and_data
    return landscape.restart_losses(f, x, y, jax.random.PRNGKey(3), restarts=11, chunk_size=4,
                                    keep_trajectories=5, **SETTINGS)


def test_shapes_and_histogram_counts(result):
    assert result.final.shape == (3, 11) and result.fooled.shape == (3, 11)
    assert result.trajectories.shape == (3, 5, SETTINGS["num_steps"] + 1)
    hists = landscape.histograms(result.final, bins=7)
    assert sum(sum(h["counts"]) for h in hists) == 3 * 11
    for h, row in zip(hists, result.final):
        assert len(h["edges"]) == 8 and h["edges"][0] <= row.min() and h["edges"][-1] >= row.max()
    s = landscape.summaries(result)
    assert [d["max"] for d in s] == pytest.approx(result.final.max(axis=1).tolist())
    assert all(0.0 <= d["fooled_fraction"] <= 1.0 for d in s)


def test_each_restart_is_pgd_with_its_key(model_and_data, result):
    """Restart r of example m is attacks.pgd on that example with fold_in(fold_in(key, m), r)."""
    f, x, y = model_and_data
    for m, r in ((0, 0), (1, 6), (2, 10)):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(3), m), r)
        x_adv = attacks.pgd(f, jnp.asarray(x[m:m + 1]), jnp.asarray(y[m:m + 1]), k, **SETTINGS)
        loss = float(attacks.xent_loss(f(x_adv), jnp.asarray(y[m:m + 1]))[0])
        assert result.final[m, r] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        assert bool(result.fooled[m, r]) == bool(jnp.argmax(f(x_adv), -1)[0] != y[m])
        if r < 5:
            assert result.trajectories[m, r, -1] == result.final[m, r]


def test_chunk_size_does_not_change_results(model_and_data, result):
    f, x, y = model_and_data
    other = landscape.restart_losses(f, x, y, jax.random.PRNGKey(3), restarts=11, chunk_size=11,
                                     keep_trajectories=5, **SETTINGS)
    np.testing.assert_allclose(other.final, result.final, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other.trajectories, result.trajectories, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(other.fooled, result.fooled)


def test_pgd_raises_the_loss_of_a_linear_model():
    """On a linear two-class model, L-inf PGD's trajectory is non-decreasing and reaches the
    closed-form maximum x - eps * sign(d) (inside the bounds) from every start."""
    d = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 1))
    f = lambda z: jnp.stack([jnp.zeros(z.shape[0]), jnp.sum(z * d, axis=(1, 2, 3))], axis=1)
    x = np.full((1, 4, 4, 1), 0.5, np.float32)
    res = landscape.restart_losses(f, x, np.array([1]), jax.random.PRNGKey(1), eps=0.2,
                                   step_size=0.05, num_steps=10, restarts=6)
    assert np.all(np.diff(res.trajectories, axis=-1) >= -1e-6)
    best = attacks.xent_loss(f(jnp.asarray(x) - 0.2 * jnp.sign(d)[None]), jnp.array([1]))
    np.testing.assert_allclose(res.final[0], float(best[0]), rtol=1e-5)
    assert landscape.summaries(res)[0]["std"] < 1e-5


@pytest.mark.parametrize("override,name", [(dict(restarts=0), "restarts"),
                                           (dict(chunk_size=0), "chunk_size"),
                                           (dict(eps=-0.1), "eps"),
                                           (dict(norm="l0"), "norm")])
def test_bad_settings_raise(model_and_data, override, name):
    f, x, y = model_and_data
    kw = {**SETTINGS, "restarts": 2, **override}
    with pytest.raises(ValueError, match=name):
        landscape.restart_losses(f, x, y, jax.random.PRNGKey(0), **kw)
