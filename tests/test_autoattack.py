"""The AutoAttack ensemble (Croce & Hein 2020, Section 5) and its suite rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.attacks import first_order as attacks
from robustjax.evaluation import autoattack, ensemble
from robustjax.evaluation import accuracy as evaluate
from robustjax.evaluation import suite
from robustjax.evaluation.accuracy import InvalidAdversarialError
from robustjax.evaluation.suite import AttackSpec

EPS, N = 0.06, 200  # the pgd_baselines fixture's


def test_chunks_pad_little_and_reuse_few_shapes():
    assert ensemble.chunks(880, 500) == (2, 441)  # 7 x 63
    assert ensemble.chunks(1000, 500) == (2, 500)
    assert ensemble.chunks(3, 500) == (1, 4)
    assert ensemble.chunks(70, 500) == (1, 126)
    sizes = {ensemble.chunks(n, 500)[1] for n in range(1, 2001)}
    assert len(sizes) <= 14
    for n in range(1, 2001):
        k, size = ensemble.chunks(n, 500)
        assert size <= 500 and k * size >= n and k == -(-n // 500)


@pytest.mark.slow
def test_versions_and_bad_input(natural_model):
    m = natural_model
    assert autoattack.version_attacks("standard") == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert autoattack.version_attacks("plus")[:2] == ("apgd-ce", "apgd-dlr")
    assert autoattack.version_attacks("custom", ["square"]) == ("square",)
    x, y = m.x[:4], m.y[:4]
    bad = [(dict(version="fast"), "version"), (dict(version="standard", attacks=["square"]),
                                               "attacks"),
           (dict(version="custom", attacks=["pgd"]), "attacks"),
           (dict(version="custom"), "attacks"), (dict(eps=-0.1), "eps"),
           (dict(num_queries=0), "num_queries"), (dict(num_steps=0), "num_steps"),
           (dict(batch_size=0), "batch_size"), (dict(norm="l0"), "norm")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            autoattack.autoattack(m.logits_fn, x, y, **{"eps": EPS, **kwargs})
    with pytest.raises(ValueError, match="pixels outside bounds"):
        autoattack.autoattack(m.logits_fn, x * 2, y, eps=EPS)


@pytest.fixture(scope="module")
def standard_run(natural_model):
    m = natural_model
    return autoattack.autoattack(m.logits_fn, m.x[:N], m.y[:N], jax.random.PRNGKey(1),
                                 eps=EPS, batch_size=128, num_queries=500)


@pytest.mark.slow
def test_ensemble_on_real_digits(natural_model, standard_run, pgd_baselines):
    """The standard ensemble is at least as strong as PGD-100 x 5 restarts (1% tolerance:
    both are randomised), each stage only removes examples, and every reported
    adversarial example is a valid one that the model misclassifies."""
    m = natural_model
    res = standard_run
    f = m.logits_fn
    pgd = pgd_baselines.pgd100x5
    print(res.accuracy_after, res.seconds, pgd.accuracy)
    assert res.clean_accuracy == pytest.approx(pgd.clean_accuracy)
    np.testing.assert_array_equal(res.clean_correct, pgd.clean_correct)
    assert res.robust_accuracy <= pgd.accuracy + 0.01
    after = list(res.accuracy_after.values())
    assert list(res.accuracy_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a >= b for a, b in zip([res.clean_accuracy] + after, after))
    assert after[-1] == res.robust_accuracy == res.correct.mean()
    assert np.all(res.correct <= res.clean_correct)
    broken = res.clean_correct & ~res.correct
    assert set(res.broken_by[broken]) <= set(res.accuracy_after)
    assert np.all(res.broken_by[~res.clean_correct] == "clean")
    assert np.all(res.broken_by[res.correct] == "")
    pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
    assert np.all(pred[broken] != m.y[:N][broken])
    np.testing.assert_array_equal(res.x_adv[res.correct], m.x[:N][res.correct])
    assert float(attacks.LINF.distance(jnp.asarray(res.x_adv - m.x[:N])).max()) <= EPS + 1e-5


@pytest.mark.slow
def test_each_attack_sees_only_robust_examples(natural_model, monkeypatch):
    """Compaction between attacks and target ranks, and one compilation per shape."""
    m = natural_model
    traced, attacked = [], []
    original = ensemble.stage_attack
    validate = evaluate.validate_checks

    def spying(name, **kw):
        attack, args = original(name, **kw)

        def wrapped(f, x, y, k, arg):
            traced.append((name, x.shape[0]))  # runs once per compiled shape
            return attack(f, x, y, k, arg)
        return wrapped, args

    def recording(checks, **kw):
        attacked.append(set(np.asarray(kw["index"]).tolist()))  # one call per batch
        return validate(checks, **kw)

    monkeypatch.setattr(ensemble, "stage_attack", spying)
    monkeypatch.setattr(evaluate, "validate_checks", recording)
    res = autoattack.autoattack(m.logits_fn, m.x[:N], m.y[:N], jax.random.PRNGKey(1), eps=EPS,
                                version="custom", attacks=["apgd-ce", "apgd-t"], num_steps=5,
                                batch_size=64)
    # Batches of one stage are disjoint; a stage starts where an index comes back.
    stages = []
    for batch in attacked:
        if stages and not (batch & stages[-1]):
            stages[-1] |= batch
        else:
            stages.append(set(batch))
    assert len(stages) == 1 + 9  # APGD-CE, then APGD-T's nine target ranks
    assert stages[0] == set(np.flatnonzero(res.clean_correct).tolist())
    assert all(b <= a for a, b in zip(stages, stages[1:]))
    assert len(stages[1]) == round(res.accuracy_after["apgd-ce"] * N) < len(stages[0])
    assert set(np.flatnonzero(res.correct).tolist()) <= stages[-1]
    # Batches of at most 64, each attack compiled for at most two shapes.
    assert all(len(b) <= 64 for b in attacked)
    for name in ("apgd-ce", "apgd-t"):
        sizes = [s for n, s in traced if n == name]
        assert len(sizes) == len(set(sizes)) <= 2, sizes


@pytest.mark.slow
def test_interrupted_ensemble_resumes_after_the_last_finished_attack(natural_model, tmp_path):
    m = natural_model
    kw = dict(eps=EPS, version="custom", attacks=["apgd-ce", "square"], num_steps=5,
              num_queries=20, batch_size=64)
    stages = tmp_path / "stages"
    straight = autoattack.autoattack(m.logits_fn, m.x[:60], m.y[:60], jax.random.PRNGKey(1),
                                     resume_dir=str(stages), **kw)
    assert sorted(p.name for p in stages.iterdir()) == ["stage00.npz", "stage01.npz"]
    (stages / "stage01.npz").unlink()  # as if killed during Square
    first = (stages / "stage00.npz").stat().st_mtime_ns
    resumed = autoattack.autoattack(m.logits_fn, m.x[:60], m.y[:60], jax.random.PRNGKey(1),
                                    resume_dir=str(stages), **kw)
    assert (stages / "stage00.npz").stat().st_mtime_ns == first  # APGD-CE was not rerun
    assert resumed.accuracy_after == straight.accuracy_after
    np.testing.assert_array_equal(resumed.correct, straight.correct)
    np.testing.assert_array_equal(resumed.x_adv, straight.x_adv)
    assert list(resumed.broken_by) == list(straight.broken_by)
    # Another model (or any other setting) starts from the beginning.
    other = jax.jit(lambda z: m.logits_fn(z) * 2.0)
    autoattack.autoattack(other, m.x[:60], m.y[:60], jax.random.PRNGKey(1),
                          resume_dir=str(stages), **kw)
    assert (stages / "stage00.npz").stat().st_mtime_ns != first


def test_an_invalid_attack_is_caught(natural_model, monkeypatch):
    m = natural_model

    def escaping(name, **kw):
        return (lambda f, x, y, k, arg: jnp.clip(x + 2 * EPS, 0, 1)), [0]

    monkeypatch.setattr(ensemble, "stage_attack", escaping)
    with pytest.raises(InvalidAdversarialError, match="outside the linf ball"):
        autoattack.autoattack(m.logits_fn, m.x[:20], m.y[:20], eps=EPS,
                              version="custom", attacks=["square"])


@pytest.mark.slow
def test_square_warning_on_masked_gradients(natural_model):
    """Gradients cut by stop_gradient: APGD fails, Square does not, and the result says so."""
    m = natural_model
    masked = jax.jit(lambda z: m.logits_fn(jax.lax.stop_gradient(z)))
    res = autoattack.autoattack(masked, m.x[:60], m.y[:60], eps=0.3, version="custom",
                                attacks=["apgd-ce", "square"], num_steps=10, num_queries=200)
    assert res.accuracy_after["square"] < res.accuracy_after["apgd-ce"] - 0.3
    assert any("Square" in w and "gradient masking" in w for w in res.warnings)


@pytest.mark.slow
def test_rand_version_calls_a_randomised_model(natural_model):
    m = natural_model
    calls = []

    def noisy(z, key):
        calls.append(1)
        return m.logits_fn(jnp.clip(z + 0.02 * jax.random.normal(key, z.shape), 0, 1))

    res = autoattack.autoattack(noisy, m.x[:40], m.y[:40], eps=EPS, version="rand",
                                num_steps=5, eot_samples=3, batch_size=40)
    assert calls and list(res.accuracy_after) == ["apgd-ce", "apgd-dlr"]
    assert res.robust_accuracy <= res.clean_accuracy
    assert res.robust_accuracy < 0.9 * res.clean_accuracy


@pytest.mark.slow
def test_suite_rows_for_the_new_attacks(natural_model, standard_run):
    m = natural_model
    x, y = m.x[:40], m.y[:40]
    specs = [AttackSpec("Natural", attack="natural", eps=EPS),
             AttackSpec("PGD", eps=EPS, steps=20, step_size=0.01),
             AttackSpec("APGD-CE", attack="apgd", eps=EPS, steps=20),
             AttackSpec("APGD-T", attack="apgd_t", eps=EPS, steps=10, targets=3),
             AttackSpec("FAB-T", attack="fab_t", eps=EPS, steps=10, targets=2),
             AttackSpec("Square", attack="square", eps=EPS, steps=100),
             AttackSpec("AutoAttack", attack="autoattack", eps=EPS, steps=5)]
    res = suite.run_suite(m.logits_fn, x, y, specs, batch_size=40, key=jax.random.PRNGKey(0))
    rows = {r["name"]: r for r in res.rows}
    assert rows["APGD-CE"] == dict(name="APGD-CE", attack="apgd", norm="linf", eps=EPS,
                                   steps=20, step_size=None, restarts=1, loss="xent",
                                   kappa=None, targeted="none", source="A",
                                   accuracy=rows["APGD-CE"]["accuracy"])
    assert rows["APGD-T"]["loss"] == "dlr" and rows["APGD-T"]["targets"] == 3
    assert rows["Square"]["loss"] == "margin" and rows["Square"]["steps"] == 100
    assert rows["FAB-T"]["loss"] is None and rows["FAB-T"]["targeted"] == "ranked"
    aa = rows["AutoAttack"]
    assert aa["version"] == "standard" and list(aa["after"]) == ["apgd-ce", "apgd-t", "fab-t",
                                                                 "square"]
    assert aa["accuracy"] == min(aa["after"].values())
    # The worst case covers the AutoAttack row, per example.
    np.testing.assert_array_equal(res.worst_case_correct, res.correct.all(0))
    assert res.worst_case_accuracy <= aa["accuracy"]
    md = suite.markdown_table(res.rows)
    assert "| AutoAttack | 0.06 | 5 | - | - | A |" in md and "after fab-t" in md
    assert AttackSpec("A", attack="apgd").steps == 100
    assert AttackSpec("S", attack="square").steps == 5000
    assert AttackSpec("P").steps == 40 and AttackSpec("P").loss == "xent"


@pytest.mark.parametrize("spec,match", [
    (AttackSpec("X", attack="apgd", loss="margin"), "loss"),
    (AttackSpec("X", attack="square", loss="dlr"), "loss"),
    (AttackSpec("X", attack="fab_t", loss="xent"), "takes no loss"),
    (AttackSpec("X", attack="apgd", targeted="all"), "targeted"),
    (AttackSpec("X", attack="apgd_t", targets=0), "targets"),
    (AttackSpec("X", attack="square", restarts=2), "restarts"),
    (AttackSpec("X", attack="autoattack", version="rand"), "version"),
    (AttackSpec("X", attack="autoattack", source="B"), "white-box"),
    (AttackSpec("X", attack="square", steps=0), "steps")])
def test_bad_specs_name_the_field(spec, match):
    with pytest.raises(ValueError, match=match):
        spec.validate()


def test_size_planner_reuses_a_compiled_size_when_compiling_costs_more():
    """Late stages on a few robust examples reuse a compiled size; expensive models do not."""
    cheap = ensemble.SizePlanner(500, 1, adaptive=True)
    assert cheap.plan(1000) == ensemble.chunks(1000, 500)  # nothing measured yet
    cheap.record(500, 10.0)   # first call: compilation + run
    cheap.record(500, 2.0)    # second call: run only -> 0.004 s per example, compile ~8 s
    assert cheap.plan(100) == (1, 500)
    assert cheap.plan(480) == (1, 500)
    costly = ensemble.SizePlanner(500, 1, adaptive=True)
    costly.record(500, 100.0)
    costly.record(500, 90.0)  # 0.18 s per example: padding 100 to 500 costs more than 10 s
    assert costly.plan(100) == ensemble.chunks(100, 500)
    fixed = ensemble.SizePlanner(500, 1, adaptive=False)
    fixed.record(500, 10.0)
    fixed.record(500, 2.0)
    assert fixed.plan(100) == ensemble.chunks(100, 500)
