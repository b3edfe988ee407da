"""The experiment config format (mtlrec.config): every file in configs/ validates; mistakes are one line naming
the key path, the value and the nearest valid name; YAML 1.1 floats; --set validated like the file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mtlrec.config import apply_overrides, validate_config, yaml_load
from mtlrec.errors import UserError
from mtlrec.experiment import DEFAULT_CONFIG, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_file_validates(path):
    exp = validate_config(load_config(path), str(path))
    assert exp.models and exp.seeds and exp.out_dir


def test_census_configs_compare_the_rows_they_name():
    exp = validate_config(load_config(ROOT / "configs" / "census_dtn_baselines.yaml"), "x")
    rows = {m.label: m for m in exp.models}
    assert rows["mmoe+uncertainty"].name == "mmoe" and rows["mmoe+uncertainty"].train == {"weighting": "uncertainty"}
    assert rows["mmoe+uncertainty"].params == rows["mmoe"].params  # model_defaults merged in
    assert exp.out_dir == "runs/census_dtn_baselines" and exp.bench.baseline == "mmoe"


def _bad(change: dict, *overrides: str) -> str:
    from mtlrec.config import deep_update

    cfg = deep_update(copy.deepcopy(DEFAULT_CONFIG), copy.deepcopy(change))
    apply_overrides(cfg, list(overrides))
    with pytest.raises(UserError) as e:
        validate_config(cfg, "x.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("x.yaml")
    return msg


@pytest.mark.parametrize(
    "change, overrides, expected",
    [
        ({}, ["train.epoch=1"], ["'train.epoch'", "did you mean 'train.epochs'"]),
        ({}, ["seed=[5]"], ["'seed'", "did you mean 'seeds'"]),
        ({"nmae": "x"}, [], ["'nmae'", "did you mean 'name'"]),
        ({"models": [{"name": "mmoee"}]}, [], ["models[0].name", "'mmoee'", "did you mean 'mmoe'"]),
        (
            {"models": [{"name": "mmoe"}, {"name": "ple", "params": {"num_expert": 2}}]},
            [],
            ["models[1].params.num_expert", "did you mean"],
        ),
        ({"models": [{"name": "mmoe", "parms": {}}]}, [], ["models[0].parms", "did you mean 'models[0].params'"]),
        ({"data": {"name": "synthetc"}}, [], ["data.name", "did you mean 'synthetic'"]),
        ({"data": {"params": {"nn": 3}}}, [], ["data.params.nn", "did you mean 'n'"]),
        ({}, ["train.lr=abc"], ["train.lr", "expected a number", "'abc'"]),
        ({}, ["train.epochs=2.5"], ["train.epochs", "expected an integer"]),
        ({}, ["train.weighting=uncertanty"], ["train.weighting", "did you mean 'uncertainty'"]),
        ({}, ["train.monitor=y1.acu"], ["train.monitor", "did you mean 'auc'"]),
        ({}, ["train.loggers=[tensorbord]"], ["train.loggers[0]", "did you mean 'tensorboard'"]),
        ({}, ["train.seed=3"], ["train.seed", "seeds: [0, 1, 2]"]),
        ({}, ["seeds=[0,0]"], ["seeds", "twice"]),
        ({"models": {"mmoe": {}}}, [], ["models", "expected a list"]),
        ({"bench": {"baseline": "mmo"}}, [], ["bench.baseline", "did you mean 'mmoe'"]),
        ({"bench": {"expected": {"mmoe": {"mean.acu": 0.5}}}}, [], ["bench.expected.mmoe.mean.acu", "'auc'"]),
        ({"bench": {"quick": {"train": {"epoch": 1}}}}, [], ["bench.quick", "'train.epoch'"]),
    ],
)
def test_mistakes_are_one_line_with_the_key_path(change, overrides, expected):
    msg = _bad(change, *overrides)
    for part in expected:
        assert part in msg, msg


def test_yaml_floats_and_overrides():
    assert yaml_load("lr: 1e-3")["lr"] == pytest.approx(1e-3)
    assert isinstance(yaml_load("x: 2E5")["x"], float) and yaml_load("x: 10")["x"] == 10
    cfg = apply_overrides(copy.deepcopy(DEFAULT_CONFIG), ["train.lr=1e-3", "train.grad_clip=5"])
    exp = validate_config(cfg, "x")
    assert exp.train["lr"] == 1e-3 and exp.train["grad_clip"] == 5.0 and isinstance(exp.train["grad_clip"], float)
    exp = validate_config({**DEFAULT_CONFIG, "train": {"lr": "2e-3"}}, "x")  # a string from YAML 1.1 elsewhere
    assert exp.train["lr"] == 2e-3
    with pytest.raises(UserError, match="expected key.sub=value"):
        apply_overrides({}, ["train.epochs"])


def test_base_inheritance_and_file_errors(tmp_path):
    (tmp_path / "base.yaml").write_text(DEFAULT_CONFIG_TEXT)
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\ntrain: {epochs: 2}\n")
    exp = validate_config(load_config(tmp_path / "child.yaml"), "child.yaml")
    assert exp.name == "child" and exp.train["epochs"] == 2 and exp.train["lr"] == 1e-3
    assert exp.out_dir == "runs/default"  # inherited; without out_dir anywhere: runs/<name>
    assert validate_config({k: v for k, v in DEFAULT_CONFIG.items() if k != "out_dir"}, "x").out_dir == (
        "runs/synthetic_mmoe_vs_shared_bottom"
    )
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML \(line"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "schema.yaml").write_text("features: [{name: a}]\ntasks: [{name: y}]\n")
    with pytest.raises(UserError, match="is a schema, not an experiment config.*name: files, params: {schema:"):
        load_config(tmp_path / "schema.yaml")
    (tmp_path / "code.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):  # configs are data, never code
        load_config(tmp_path / "code.yaml")


DEFAULT_CONFIG_TEXT = (ROOT / "configs" / "synthetic_default.yaml").read_text()


def test_default_config_file_is_the_builtin_default():
    assert load_config(ROOT / "configs" / "synthetic_default.yaml") == DEFAULT_CONFIG


def test_bench_grid_without_top_level_data():
    cfg = {k: v for k, v in DEFAULT_CONFIG.items() if k != "data"}
    cfg["bench"] = {"datasets": [{"label": "a", "name": "synthetic", "params": {"n": 100}}, {"name": "criteo_like"}]}
    exp = validate_config(cfg, "x")
    assert exp.data.name == "synthetic" and [d.label for d in exp.bench.datasets] == ["a", "criteo_like"]


def test_a_missing_tracking_package_names_the_extra(tmp_path, monkeypatch):
    import sys

    from mtlrec.train.loggers import create_loggers

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"pip install 'mtlrec\[tracking\]'"):
        create_loggers(["tensorboard"], tmp_path, experiment="x", run_name="r")
