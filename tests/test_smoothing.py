"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019) and its training (Gaussian
noise; SmoothAdv, Salman et al. 2019): the statistics against SciPy, CERTIFY against the
closed form of a linear model, PREDICT's abstention rule, resume, bad input, ART."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from robustjax import smoothing
from robustjax import training as train
from robustjax.data import datasets as data
from robustjax.smoothing import smoothadv
from robustjax.smoothing import stats


def _linear_two_class(w, b):
    """Logits ``[-f, f]`` of ``f(x) = w.x + b``: the smoothed classifier equals the base one
    and the true L2 radius is ``|f(x)| / ||w||`` (Cohen et al., Section 3.3)."""
    w = jnp.asarray(w, jnp.float32)

    def logits_fn(x):
        f = x.reshape(x.shape[0], -1) @ w + b
        return jnp.stack([-f, f], axis=-1)
    return logits_fn


def _threshold_model(cuts):
    """Three classes by where the first coordinate falls among ``cuts`` (a, b)."""
    a, b = cuts

    def logits_fn(x):
        z = x.reshape(x.shape[0], -1)[:, 0]
        cls = (z >= a).astype(jnp.int32) + (z >= b).astype(jnp.int32)
        return 5.0 * jax.nn.one_hot(cls, 3)
    return logits_fn


# ----------------------------------------------------------------------------
# The statistics
# ----------------------------------------------------------------------------

def test_lower_confidence_bound_is_scipys_beta_quantile():
    for n in (1, 2, 10, 100, 1000, 100_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for alpha in (0.001, 0.05):
                got = stats.lower_confidence_bound(k, n, alpha)
                want = 0.0 if k == 0 else sps.beta.ppf(alpha, k, n - k + 1)
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=(k, n))
    with pytest.raises(ValueError, match="counts"):
        stats.lower_confidence_bound(5, 4, 0.01)


def test_p_value_is_scipys_two_sided_binomial_test():
    for n in (1, 7, 20, 101):
        for k in range(n + 1):
            assert stats.binomial_p_value(k, n) == pytest.approx(
                sps.binomtest(k, n, 0.5).pvalue, rel=1e-9), (k, n)
    assert stats.binomial_p_value(0, 0) == 1.0


def test_radius_and_certified_accuracy():
    np.testing.assert_allclose(stats.certified_radius([0.5, 0.4, 0.8413447460685429], 0.5),
                               [0.0, 0.0, 0.5], atol=1e-9)
    acc = stats.certified_accuracy([1, 2, -1, 0], [0.3, 0.0, 0.0, 1.2], [1, 1, -1, 0],
                                   [0, 0.3, 1.0, 2.0])
    np.testing.assert_allclose(acc, [0.5, 0.5, 0.25, 0.0])  # the abstention counts as wrong


# ----------------------------------------------------------------------------
# PREDICT and CERTIFY
# ----------------------------------------------------------------------------

def test_predict_abstains_exactly_when_the_binomial_test_does_not_reject():
    """Inputs placed so that the two top classes are near a tie for some and far apart for
    others; the decision must be the test's, computed by SciPy from the returned counts."""
    f = _threshold_model((0.0, 0.3))
    x = np.zeros((24, 3), np.float32)
    x[:, 0] = np.linspace(-0.2, 0.5, 24)
    alpha = 0.05
    p = smoothing.predict(f, x, jax.random.PRNGKey(0), sigma=0.25, n=200, alpha=alpha, batch=64)
    assert p.counts.shape == (24, 3) and np.all(p.counts.sum(1) == 200)
    decided = 0
    for i in range(24):
        c = p.counts[i]
        top, second = np.argsort(-c, kind="stable")[:2]
        pv = sps.binomtest(int(c[top]), int(c[top] + c[second]), 0.5).pvalue
        assert p.p_value[i] == pytest.approx(pv, rel=1e-9)
        assert p.prediction[i] == (top if pv <= alpha else -1), (i, c, pv)
        decided += pv <= alpha
    assert 0 < decided < 24  # both outcomes occur


def test_certify_on_a_linear_model_matches_the_true_radius():
    """Never above the true radius |f| / ||w|| (up to alpha's tail), and at least the radius
    that a 1e-4-unlucky n_A would give: min(true, what n allows) less the binomial noise."""
    rng = np.random.default_rng(0)
    d, sigma, n, alpha = 16, 0.25, 10_000, 0.001
    w = rng.normal(size=d).astype(np.float32)
    b = 0.05
    x = rng.uniform(-0.15, 0.15, size=(40, d)).astype(np.float32)
    f = x @ w + b
    true = np.abs(f) / np.linalg.norm(w)
    c = smoothing.certify(_linear_two_class(w, b), x, jax.random.PRNGKey(3), sigma=sigma,
                          n0=100, n=n, alpha=alpha, batch=2000)
    certified = c.prediction >= 0
    np.testing.assert_array_equal(c.prediction[certified], (f > 0).astype(int)[certified])
    assert np.sum(c.radius > true + 1e-6) <= 1                    # alpha's tail: 40 x 0.001
    p_true = sps.norm.cdf(true / sigma)
    right = c.selected == (f > 0)       # n0 = 100 may pick the other class near a tie...
    assert np.all(right[p_true > 0.7])  # ...but not when p_A > 0.7 (a 1e-5 event)
    unlucky = sps.binom.ppf(1e-4, n, p_true)
    floor = stats.certified_radius(stats.lower_confidence_bound(unlucky, n, alpha), sigma)
    assert np.all(c.radius[right] >= floor[right] - 1e-6), (c.radius - floor)[right].min()
    allowed = sigma * sps.norm.ppf(alpha ** (1 / n))               # n_A = n
    assert np.all(c.radius <= allowed + 1e-9)
    gap = (np.minimum(true, allowed) - c.radius)[right]
    assert np.median(gap) < 0.03 and gap.max() < 0.1, gap         # close to min(true, allowed)
    assert np.all(c.count <= n) and np.all(c.selection_counts.sum(1) == 100)


def test_counts_do_not_depend_on_the_chunks_or_the_batch_of_examples():
    f = _linear_two_class(np.ones(4, np.float32), 0.0)
    x = np.random.default_rng(1).uniform(-0.1, 0.1, (9, 4)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    whole = smoothing.sampling.sample_counts(f, x, key, sigma=0.5, num=300, batch=64,
                                             stream="estimate", num_classes=2)
    parts = smoothing.sampling.sample_counts(f, x, key, sigma=0.5, num=300, batch=64,
                                             stream="estimate", num_classes=2, chunk=2)
    alone = smoothing.sampling.sample_counts(f, x[4:5], key, sigma=0.5, num=300, batch=64,
                                             stream="estimate", num_classes=2, indices=[4])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole[4:5], alone)
    other = smoothing.sampling.sample_counts(f, x, key, sigma=0.5, num=300, batch=64,
                                             stream="select", num_classes=2)
    assert not np.array_equal(whole, other)  # the streams are independent draws


def test_table_resumes_with_the_same_rows(tmp_path):
    f = _linear_two_class(np.linspace(-1, 1, 8).astype(np.float32), 0.1)
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.3, 0.3, (7, 8)).astype(np.float32)
    y = rng.integers(0, 2, 7)
    kw = dict(sigma=0.25, n0=20, n=400, alpha=0.01, batch=128, indices=np.arange(10, 17))
    key = jax.random.PRNGKey(0)
    whole = smoothing.certify_table(f, x, y, key, chunk=3, **kw)

    class Stop(Exception):
        pass

    def stop_after_first(done, total, rows):
        if done == 3:
            raise Stop
    with pytest.raises(Stop):
        smoothing.certify_table(f, x, y, key, chunk=3, resume_dir=str(tmp_path),
                                progress=stop_after_first, **kw)
    assert os.listdir(tmp_path) == ["chunk0000000.json"]
    resumed = smoothing.certify_table(f, x, y, key, chunk=3, resume_dir=str(tmp_path), **kw)
    drop = ("time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == (
        [{k: v for k, v in r.items() if k not in drop} for r in whole])
    assert [r["index"] for r in whole] == list(range(10, 17))
    s = smoothing.table.summary(whole, [0.0, 0.1])
    assert s["examples"] == 7 and s["certified_accuracy"][0] >= s["certified_accuracy"][1]


def test_bad_input_is_refused_by_name():
    f = _linear_two_class(np.ones(4, np.float32), 0.0)
    x = np.zeros((2, 4), np.float32)
    key = jax.random.PRNGKey(0)
    cases = [(dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"),
             (dict(sigma=float("nan")), "sigma"), (dict(alpha=0.0), "alpha"),
             (dict(alpha=1.0), "alpha"), (dict(n0=0), "n0"), (dict(n=0), "n"),
             (dict(batch=0), "batch"), (dict(n=2.5), "n")]
    for kw, name in cases:
        args = dict(sigma=0.25, n0=10, n=10, alpha=0.01)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            smoothing.certify(f, x, key, **args)
    with pytest.raises(ValueError, match="probabilities"):
        smoothing.certify(lambda z: jax.nn.softmax(f(z)), x, key, sigma=0.25, n0=10, n=10)
    with pytest.raises(ValueError, match="x must"):
        smoothing.predict(f, np.zeros((0, 4), np.float32), key, sigma=0.25, n=10)
    with pytest.raises(ValueError, match="x must"):
        smoothing.predict(f, np.zeros((2, 4), np.int32), key, sigma=0.25, n=10)


# ----------------------------------------------------------------------------
# Training: Gaussian noise and SmoothAdv
# ----------------------------------------------------------------------------

def test_smoothadv_attack_stays_in_the_ball_and_raises_the_smoothed_loss():
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (36, 4))
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 6, 6, 1))
    y = jnp.arange(8) % 4
    eps = 0.5
    x_adv, noise = smoothadv.smoothadv_attack(logits_fn, x, y, jax.random.PRNGKey(2),
                                              sigma=0.25, eps=eps, step_size=0.2, num_steps=5,
                                              num_noise=3)
    assert noise.shape == (3, 8, 6, 6, 1)
    assert float(jnp.std(noise)) == pytest.approx(0.25, rel=0.1)
    norms = jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3)))
    assert float(jnp.max(norms)) <= eps + 1e-5
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0

    def loss(z):
        lp = smoothadv.smooth_log_probs(logits_fn, z, noise)
        return -np.asarray(jnp.take_along_axis(lp, y[:, None], 1))[:, 0]
    assert np.all(loss(x_adv) >= loss(x) - 1e-5) and np.mean(loss(x_adv) > loss(x)) > 0.9


def _tiny(idx_dir, **kw):
    base = dict(data_dir=idx_dir, width=1, steps=2, batch_size=20, attack_steps=2,
                attack_step_size=0.1, lr=1e-3, train_norm="l2", eps=0.5, noise_sigma=0.3)
    base.update(kw)
    return train.TrainConfig(**base)


def _two_steps(cfg, images, labels):
    model, tx = train.build_model(cfg), train.make_optimizer(cfg)
    state = train.create_state(cfg, model, tx, images[:1].astype(jnp.float32))
    step = jax.jit(train.make_train_step(cfg, model, tx))
    for _ in range(2):
        state, metrics = step(state, images, labels)
    return state, metrics


@pytest.mark.slow
def test_noise_objectives_in_the_training_step(idx_dir):
    """Gaussian training sees x + N(0, sigma^2) (not clipped); SmoothAdv at eps 0 with one
    draw is exactly Gaussian training (the same draws); at eps > 0 its update differs."""
    images, labels = data.load("mnist", "train", idx_dir)
    images, labels = jnp.asarray(images[:200]), jnp.asarray(labels[:200])
    cfg = _tiny(idx_dir, objective="gaussian")
    model, tx = train.build_model(cfg), train.make_optimizer(cfg)
    state = train.create_state(cfg, model, tx, images[:1].astype(jnp.float32))
    x, x_noisy, _, _, _ = train.adversarial_batch(cfg, model, state, images, labels)
    d = np.asarray(x_noisy - x)
    assert abs(d.std() - 0.3) < 0.02 and abs(d.mean()) < 0.02
    assert np.asarray(x_noisy).min() < 0 and np.asarray(x_noisy).max() > 1
    gauss, m = _two_steps(cfg, images, labels)
    assert np.isfinite(float(m["loss"][()] if m["loss"].ndim == 0 else m["loss"]))
    at_zero, _ = _two_steps(_tiny(idx_dir, objective="smoothadv", eps=0.0), images, labels)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                   gauss.params, at_zero.params)
    assert max(jax.tree_util.tree_leaves(moved)) < 1e-6
    adv_cfg = _tiny(idx_dir, objective="smoothadv", eps=1.0, smoothadv_samples=2)
    _, x_adv, y_b, _, _ = train.adversarial_batch(adv_cfg, model, state, images, labels)
    assert x_adv.shape[0] == 2 * y_b.shape[0]   # m noisy copies of each example
    adv, _ = _two_steps(adv_cfg, images, labels)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                   gauss.params, adv.params)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-6


def test_noise_objectives_config():
    cfg = train.TrainConfig(objective="gaussian", noise_sigma=0.5)
    assert cfg.to_json()["loss"] == {"objective": "gaussian", "noise_sigma": 0.5}
    assert "train_attack" not in cfg.to_json()["threat"]
    assert "noise_sigma" not in train.TrainConfig().to_json()["loss"]   # old runs unchanged
    with pytest.raises(ValueError, match="train_norm"):
        train.TrainConfig(objective="smoothadv").validate()
    with pytest.raises(ValueError, match="noise_sigma"):
        train.TrainConfig(objective="gaussian", noise_sigma=0.0).validate()
    with pytest.raises(ValueError, match="smoothadv_samples"):
        train.TrainConfig(objective="smoothadv", train_norm="l2", smoothadv_samples=0).validate()


# ----------------------------------------------------------------------------
# Against ART's PyTorchRandomizedSmoothing, on the PyTorch twin of the same weights
# ----------------------------------------------------------------------------

@pytest.mark.slow
def test_certified_accuracy_agrees_with_art(natural_model):
    """Both sides estimate the same p_A with their own noise. Wherever our bound lies
    clearly (6 standard deviations of the estimate) on one side of the threshold of radius r,
    the two must make the same call; the certified accuracies then differ by at most the
    examples left, those within the Monte Carlo noise of the threshold."""
    torch = pytest.importorskip("torch")
    rs = pytest.importorskip("art.estimators.certification.randomized_smoothing")
    pytest.importorskip("statsmodels")
    from benchmarks.torch_port import torch_mnist_cnn

    m = natural_model
    x, y = m.x[:40], m.y[:40]
    sigma, n0, n, alpha = 0.25, 100, 2000, 0.001
    c = smoothing.certify(m.logits_fn, x, jax.random.PRNGKey(0), sigma=sigma, n0=n0, n=n,
                          alpha=alpha, batch=500)
    art = rs.PyTorchRandomizedSmoothing(
        torch_mnist_cnn(m.params), torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
        nb_classes=10, sample_size=n0, scale=sigma, alpha=alpha, clip_values=(0.0, 1.0),
        device_type="cpu")
    np.random.seed(0)
    a_pred, a_rad = art.certify(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), n=n,
                                batch_size=500)
    p_hat = c.count / n
    sd = np.sqrt(p_hat * (1 - p_hat) / n) + 1.0 / n
    checked = 0
    for r in (0.0, 0.25, 0.5):
        ours = (c.prediction == y) & (c.radius >= r)
        theirs = (a_pred == y) & (a_rad >= r)
        threshold = max(0.5, sps.norm.cdf(r / sigma))
        clear = np.abs(c.p_lower - threshold) > 6 * sd
        np.testing.assert_array_equal(ours[clear], theirs[clear], err_msg=f"radius {r}")
        assert abs(ours.mean() - theirs.mean()) <= np.mean(~clear) + 1e-9
        checked += clear.sum()
    assert checked >= 90 and (c.prediction == y).mean() > 0.8
