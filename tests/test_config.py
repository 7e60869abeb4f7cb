"""The sectioned configuration (issue 32): sections, flat names, old config.json files."""

import dataclasses
import json
import pathlib
import warnings

import pytest

from robustjax.training import config as cfgmod
from robustjax.training import workdir as _workdir
from robustjax.training.config import SECTIONS, RunConfig, ThreatConfig, TrainConfig

DATA = pathlib.Path(__file__).parent / "data"


def test_sections_partition_the_fields_and_flat_names_are_unique():
    names = [f.name for _, f in TrainConfig.fields()]
    assert len(names) == len(set(names)) == 44  # 42 + noise_sigma, smoothadv_samples (issue 35)
    assert list(SECTIONS) == ["data", "model", "threat", "loss", "optim", "evaluation", "run"]
    c = TrainConfig(steps=7, eps=0.1, objective="trades")
    assert (c.run.steps, c.threat.eps, c.loss.objective) == (7, 0.1, "trades")
    assert c == TrainConfig(run=RunConfig(steps=7), threat=ThreatConfig(eps=0.1),
                            objective="trades")
    assert dataclasses.replace(c, steps=9).run.steps == 9
    assert dataclasses.replace(c, steps=9).threat == c.threat
    with pytest.raises(TypeError, match="no field 'stpes'"):
        TrainConfig(stpes=3)
    with pytest.raises(TypeError, match="section 'run' must be a RunConfig"):
        TrainConfig(run=ThreatConfig())


def test_flat_reads_still_work_and_warn_once():
    c = TrainConfig(steps=11)
    cfgmod._deprecated_reads.discard("steps")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert c.steps == 11 and c.steps == 11
    assert len(caught) == 1 and "config.run.steps" in str(caught[0].message)
    with pytest.raises(AttributeError):
        c.no_such_field  # noqa: B018


@pytest.mark.parametrize("name", ["config_0.1_ibp.json", "config_0.1_trades.json"])
def test_an_old_flat_config_json_loads_into_the_sections(name):
    """Files written by robustjax 0.1 (flat; the IBP one from a real run's workdir)."""
    flat = json.loads((DATA / name).read_text())
    c = TrainConfig.from_json(flat)
    c.validate()
    for key, value in flat.items():
        section = getattr(c, cfgmod._SECTION_OF[key])
        want = tuple(value) if isinstance(value, list) else value
        assert getattr(section, key) == want, key
    assert c.to_flat_json() == flat
    assert TrainConfig.from_json(c.to_json()) == c            # the sectioned form round-trips
    assert set(c.to_json()) == set(SECTIONS)


def test_a_workdir_with_an_old_config_json_resumes(tmp_path):
    """A rerun on a workdir of 0.1 accepts its flat config.json (and rewrites it in
    sections); a changed setting is still refused, naming it."""
    old = json.loads((DATA / "config_0.1_trades.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(old))
    c = TrainConfig.from_json(old)
    assert _workdir.write_config(str(tmp_path), dataclasses.replace(c, steps=5000))
    assert set(json.loads((tmp_path / "config.json").read_text())) == set(SECTIONS)
    with pytest.raises(ValueError, match="trades_beta"):
        _workdir.write_config(str(tmp_path), dataclasses.replace(c, trades_beta=1.0))


@pytest.mark.parametrize("field,value,msg", [
    ("eps", -0.1, "eps must be a finite number >= 0"), ("lr", 0.0, "lr must be a finite"),
    ("width", 0, "width must be an integer >= 1"), ("augment_flip", 1, "augment_flip"),
    ("kappa_end", 1.5, "kappa_end must be a number in"), ("dataset", "svhn", "dataset"),
    ("eval_examples", 0, "eval_examples"), ("train_eps", -0.5, "train_eps")])
def test_each_section_checks_its_fields(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**{field: value}).validate()
