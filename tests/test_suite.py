"""Attack suites (paper Tables 1 and 2): worst case, orderings, transfer, validation, outputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import first_order as attacks
from robustjax.evaluation import suite
from robustjax.evaluation.accuracy import InvalidAdversarialError
from robustjax.evaluation.suite import AttackSpec

from conftest import shared_natural

# On the naturally trained model, eps 0.3 breaks everything; at eps 0.06 the
# attacks land in between, so orderings between rows are informative.
EPS = 0.06
N = 200


@pytest.fixture(scope="module")
def source_a_prime(digits, tmp_path_factory):
    """An independently trained copy (another seed) of the natural model: source A'."""
    return shared_natural(tmp_path_factory, digits, "natural_seed1", seed=1, epochs=2)


@pytest.mark.slow
def test_suite_orderings_on_a_natural_model(natural_model, source_a_prime, pgd_baselines):
    m = natural_model
    x, y = m.x[:N], m.y[:N]
    pgd = dict(eps=EPS, step_size=0.01)
    specs = [AttackSpec("Natural", attack="natural", eps=EPS),
             AttackSpec("FGSM", attack="fgsm", eps=EPS),
             AttackSpec("PGD", steps=40, **pgd),
             AttackSpec("CW", steps=40, loss="cw", **pgd),
             AttackSpec("CW+", steps=40, loss="cw", cw_kappa=50.0, **pgd),
             AttackSpec("PGD", steps=40, source="A'", **pgd),
             AttackSpec("Targeted", steps=40, targeted="all", **pgd)]
    res = suite.run_suite(m.logits_fn, x, y, specs, sources={"A'": source_a_prime.logits_fn},
                          batch_size=100, key=jax.random.PRNGKey(3))
    acc = {i: r["accuracy"] for i, r in enumerate(res.rows)}
    print({r["name"] + str(r["steps"]) + r["source"]: r["accuracy"] for r in res.rows})
    assert res.correct.shape == (len(specs), N)
    # The worst case is exactly "every row failed", hence <= every row.
    np.testing.assert_array_equal(res.worst_case_correct, res.correct.all(axis=0))
    assert res.rows[-1]["attack"] == "worst_case"
    assert all(res.worst_case_accuracy <= a for a in list(acc.values())[:-1])
    assert res.worst_case_accuracy == acc[len(specs)]
    # Every robust example was clean-correct.
    assert np.all(res.correct <= res.correct[0])
    assert 0.1 < acc[2] < 0.9, "eps should put PGD-40 between the extremes"
    # PGD-100 x 5 (the shared baseline: the same digits, eps and step) is at least as
    # strong as PGD-40 x 1. Random starts differ, so an example PGD-40 broke can in
    # principle survive all 5 longer runs; allow 1% (2 of 200) for that.
    assert pgd_baselines.n == N and pgd_baselines.eps == EPS
    assert pgd_baselines.pgd100x5.accuracy <= acc[2] + 0.01
    # Transfer from an independently trained copy is weaker than white-box.
    assert acc[5] >= acc[2]
    # CW+ (kappa 50) keeps pushing past the decision boundary, CW stops at it.
    assert acc[4] <= acc[3] + 0.01
    # Targeted towards every wrong class: at least as strong as FGSM here, and an
    # example counts as broken as soon as one target run is misclassified.
    assert acc[6] <= acc[1]


@pytest.mark.slow
def test_targeted_all_matches_separate_runs(natural_model):
    """targeted='all' == 'broken if any of the 9 targeted runs is misclassified'."""
    m = natural_model
    x, y = jnp.asarray(m.x[:100]), jnp.asarray(m.y[:100])
    spec = AttackSpec("Targeted", steps=10, step_size=0.01, eps=EPS, targeted="all")
    key = jax.random.PRNGKey(5)
    # batch_size 900 = 100 examples x 9 targets per call: one batch, key as below.
    res = suite.run_suite(m.logits_fn, x, y, [spec], batch_size=900, key=key)
    batch_key = jax.random.fold_in(jax.random.fold_in(key, 0), 0)  # row 0, batch 0
    keys = jax.random.split(batch_key, 9)
    broken = np.zeros(100, bool)
    for t in range(1, 10):
        x_adv = attacks.pgd(m.logits_fn, x, (y + t) % 10, keys[t - 1], eps=EPS,
                            step_size=0.01, num_steps=10, targeted=True)
        broken |= np.asarray(jnp.argmax(m.logits_fn(x_adv), -1) != y)
    expected = (np.asarray(jnp.argmax(m.logits_fn(x), -1)) == np.asarray(y)) & ~broken
    # vmapping the 9 runs reorders float sums; a near-zero gradient coordinate can
    # flip sign (see test_attacks), so allow 2 of 100 examples to differ.
    assert np.mean(res.correct[0] != expected) <= 0.02


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["random", "least_likely"])
def test_single_target_modes(natural_model, mode):
    m = natural_model
    spec = AttackSpec("T", steps=20, step_size=0.01, eps=EPS, targeted=mode)
    attack = suite.make_attack(spec, m.logits_fn, m.logits_fn, 10)
    x, y = jnp.asarray(m.x[:100]), jnp.asarray(m.y[:100])
    key = jax.random.PRNGKey(0)
    x_adv = attack(x, y, key)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= EPS + 1e-6
    # The attack used the target make_attack drew (the first half of the key split),
    # never the label, and descended the cross-entropy towards it for almost all.
    t = suite._targets(spec, m.logits_fn, x, y, jax.random.split(key)[0], 10)
    clean_ok = np.asarray(jnp.argmax(m.logits_fn(x), -1)) == np.asarray(y)
    assert np.all(np.asarray(t)[clean_ok] != np.asarray(y)[clean_ok])
    before = attacks.xent_loss(m.logits_fn(x), t)
    after = attacks.xent_loss(m.logits_fn(x_adv), t)
    assert np.mean(np.asarray(after < before)) > 0.95


def test_broken_attack_is_caught(natural_model, monkeypatch):
    m = natural_model

    def escapes(spec, src, tgt, k):
        return lambda x, y, key: jnp.clip(x + 2 * spec.eps, 0, 1)
    monkeypatch.setattr(suite, "make_attack", escapes)
    with pytest.raises(InvalidAdversarialError, match="outside the linf ball"):
        suite.run_suite(m.logits_fn, m.x[:20], m.y[:20], [AttackSpec("PGD", eps=0.1)])


def test_bad_specs_name_the_field(natural_model):
    m = natural_model
    x, y = m.x[:5], m.y[:5]
    with pytest.raises(ValueError, match="attack"):
        suite.run_suite(m.logits_fn, x, y, [AttackSpec("X", attack="deepfool")])
    with pytest.raises(ValueError, match="unknown source 'B'"):
        suite.run_suite(m.logits_fn, x, y, [AttackSpec("PGD", source="B")])
    with pytest.raises(ValueError, match="eps"):
        suite.run_suite(m.logits_fn, x, y, [AttackSpec("PGD", eps=-0.1)])
    with pytest.raises(ValueError, match="targeted"):
        AttackSpec("T", targeted="everything").validate()
    with pytest.raises(ValueError, match="FGSM rows are untargeted L-inf"):
        suite.make_attack(AttackSpec("F", attack="fgsm", norm="l2"), m.logits_fn,
                          m.logits_fn, 10)
    with pytest.raises(ValueError, match="specs"):
        suite.run_suite(m.logits_fn, x, y, [])


def test_outputs_field_by_field(tmp_path):
    """A fixed tiny run on a linear model: JSON rows and the markdown, exactly."""
    w = jnp.asarray([[1.0, -1.0], [-1.0, 1.0]])  # class = which of two pixels is brighter

    def f(z):
        return z.reshape(z.shape[0], -1) @ w
    x = np.asarray([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.3, 0.7]],
                   np.float32).reshape(4, 1, 2, 1)
    y = np.asarray([0, 1, 0, 0], np.int32)  # the last one is misclassified clean
    specs = [AttackSpec("Natural", attack="natural", eps=0.2),
             AttackSpec("FGSM", attack="fgsm", eps=0.2),
             AttackSpec("PGD", eps=0.2, steps=5, step_size=0.1, restarts=2)]
    res = suite.run_suite(f, x, y, specs, key=jax.random.PRNGKey(0),
                          save_dir=str(tmp_path / "adv"))
    # Optimum of the linear model: move both pixels 0.2 against the label. Examples 0
    # and 1 have margin 0.8 and 0.6 > 0.4 and survive; example 2 (margin 0.1) breaks.
    np.testing.assert_array_equal(res.correct, [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    assert res.rows == [
        dict(name="Natural", attack="natural", norm="linf", eps=0.0, steps=0, step_size=0.0,
             restarts=1, loss=None, kappa=None, targeted="none", source="A", accuracy=0.75),
        dict(name="FGSM", attack="fgsm", norm="linf", eps=0.2, steps=1, step_size=0.2,
             restarts=1, loss="xent", kappa=None, targeted="none", source="A", accuracy=0.5),
        dict(name="PGD", attack="pgd", norm="linf", eps=0.2, steps=5, step_size=0.1,
             restarts=2, loss="xent", kappa=None, targeted="none", source="A", accuracy=0.5),
        dict(name="Worst case", attack="worst_case", norm="linf", eps=0.2, steps=None,
             step_size=None, restarts=None, loss=None, kappa=None, targeted=None,
             source="all", accuracy=0.5)]
    assert sorted(p.name for p in (tmp_path / "adv").iterdir()) == [
        "row00.npy", "row01.npy", "row02.npy"]
    np.testing.assert_allclose(np.load(tmp_path / "adv" / "row01.npy")[0, 0, :, 0], [0.7, 0.3],
                               atol=1e-6)
    out = tmp_path / "results.json"
    suite.write_results(str(out), dict(rows=res.rows))
    assert json.loads(out.read_text()) == dict(rows=res.rows)
    assert (tmp_path / "results.md").read_text() == (
        "| Method | eps | Steps | Step size | Restarts | Source | Accuracy |\n"
        "|---|---:|---:|---:|---:|---|---:|\n"
        "| Natural | 0 | - | - | - | - | 75.00% |\n"
        "| FGSM | 0.2 | - | - | - | A | 50.00% |\n"
        "| PGD | 0.2 | 5 | 0.1 | 2 | A | 50.00% |\n"
        "| Worst case | 0.2 | - | - | - | all | 50.00% |\n")
