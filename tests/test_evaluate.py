"""robust_accuracy: batching, counting, validation of adversarial examples, bad data."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import first_order as attacks
from robustjax.evaluation.accuracy import InvalidAdversarialError, robust_accuracy


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    x = rng.random((37, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 37).astype(np.int32)
    w = jnp.asarray(rng.normal(size=(16, 3)).astype(np.float32))
    return x, y, (lambda z: z.reshape(z.shape[0], -1) @ w)


def test_counts_match_a_direct_computation(toy):
    x, y, f = toy
    attack = functools.partial(attacks.pgd, f, eps=0.1, step_size=0.05, num_steps=3,
                               random_start=False)
    res = robust_accuracy(f, x, y, attack, eps=0.1, batch_size=37)
    x_adv = attack(jnp.asarray(x), jnp.asarray(y), None)
    clean = np.asarray(jnp.argmax(f(x), -1)) == y
    adv = np.asarray(jnp.argmax(f(x_adv), -1)) == y
    np.testing.assert_array_equal(res.clean_correct, clean)
    np.testing.assert_array_equal(res.correct, clean & adv)
    assert res.accuracy == pytest.approx((clean & adv).mean())
    assert res.clean_accuracy == pytest.approx(clean.mean())
    # A last partial batch (37 = 2 * 16 + 5) is padded and gives the same answer.
    res16 = robust_accuracy(f, x, y, attack, eps=0.1, batch_size=16, keep_adversarial=True)
    np.testing.assert_array_equal(res16.correct, res.correct)
    assert res16.x_adv.shape == x.shape
    np.testing.assert_allclose(res16.x_adv, x_adv, atol=1e-6)


def test_natural_row_and_clean_errors_count_as_not_robust(toy):
    x, y, f = toy
    nat = robust_accuracy(f, x, y, None, eps=0.0)
    assert nat.accuracy == nat.clean_accuracy
    # An "attack" that returns the input unchanged still loses the clean errors.
    ident = robust_accuracy(f, x, y, lambda a, b, k: a, eps=0.0)
    np.testing.assert_array_equal(ident.correct, nat.clean_correct)
    assert 0 < nat.accuracy < 1


@pytest.mark.parametrize("broken,match", [
    (lambda x, y, k: x + 0.2, "outside the linf ball|bounds"),
    (lambda x, y, k: jnp.clip(x + 0.2, 0, 1), "outside the linf ball"),
    (lambda x, y, k: x * 0 - 0.01, "bounds"),
    (lambda x, y, k: x + jnp.nan, "NaN"),
    (lambda x, y, k: x[:, :2], "shape"),
    (lambda x, y, k: x.astype(jnp.bfloat16), "dtype"),
])
def test_broken_attacks_are_caught(toy, broken, match):
    x, y, f = toy
    with pytest.raises(InvalidAdversarialError, match=match):
        robust_accuracy(f, x, y, broken, eps=0.1, batch_size=10)


def test_l2_ball_is_checked_in_l2(toy):
    x, y, f = toy
    xs = np.clip(x, 0.2, 0.8)  # room to move inside the bounds
    step = lambda a, b, k: a + 0.05  # noqa: E731  L2 distance 0.05 * 4 = 0.2
    assert robust_accuracy(f, xs, y, step, eps=0.2, norm="l2").accuracy >= 0
    with pytest.raises(InvalidAdversarialError, match="l2 ball"):
        robust_accuracy(f, xs, y, step, eps=0.19, norm="l2")


@pytest.mark.parametrize("mutate,kwargs,match", [
    (lambda x, y: (x * 255, y), {}, "outside bounds"),
    (lambda x, y: (x - 0.5, y), {}, "outside bounds"),
    (lambda x, y: (np.where(x > 0.5, np.nan, x), y), {}, "NaN"),
    (lambda x, y: (x, y + 3), {}, r"labels in \[0, 3\)"),
    (lambda x, y: (x, y - 1), {}, r"labels in \[0, 3\)"),
    (lambda x, y: (x, y.astype(np.float32)), {}, "integer"),
    (lambda x, y: (x, y[:-1]), {}, "one label per example"),
    (lambda x, y: (x[:, 0, 0, 0], y), {}, "x must be"),
    (lambda x, y: (x, y), dict(eps=-1.0), "eps"),
    (lambda x, y: (x, y), dict(batch_size=0), "batch_size"),
    (lambda x, y: (x, y), dict(norm="l0"), "norm"),
    (lambda x, y: (x, y), dict(attack="pgd"), "attack"),
])
def test_bad_data_and_settings_raise(toy, mutate, kwargs, match):
    x, y, f = toy
    x, y = mutate(x.copy(), y.copy())
    args = dict(eps=0.1, attack=None)
    args.update(kwargs)
    attack = args.pop("attack")
    with pytest.raises(ValueError, match=match):
        robust_accuracy(f, x, y, attack, **args)
