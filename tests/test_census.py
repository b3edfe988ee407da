"""Census-Income (KDD) reader: the MMoE/PLE protocol split, label rates, and that labels never leak into inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mtlrec
from mtlrec.data.datasets.census_income import COLUMNS, file_columns
from mtlrec.schema import SchemaError
from tests.conftest import SHARED_DATA, needs_shared_data

SAMPLE = SHARED_DATA / "samples" / "census-income.sample"
LABEL_SOURCES = {"income_50k", "marital_stat", "instance_weight"}


def load_sample(cache_dir: Path):
    """The 200-row Census-Income sample through the real reader, as both train and test file (no cache)."""
    return mtlrec.load_dataset(
        "census_income",
        data_dir=SAMPLE.parent,
        train_file=SAMPLE.name,
        test_file=SAMPLE.name,
        cache_dir=str(cache_dir),
        use_cache=False,
    )


def feature_names(bundle) -> set[str]:
    layout = bundle.layout.to_dict()
    names = {c[0] for c in layout["categorical"]} | set(layout["numeric"])
    return names | {c[0] if isinstance(c, list) else c for c in layout["multi_valued"]}


@needs_shared_data("census-income")
def test_census_group1_protocol_split_and_rates():
    b = mtlrec.load_dataset("census_income", data_dir=SHARED_DATA, group=1, split_seed=0)
    assert (len(b.train), len(b.valid), len(b.test)) == (199_523, 49_881, 49_881)
    assert [t.name for t in b.tasks] == ["income", "marital"]
    rates = np.asarray(b.train.labels).mean(0)
    assert rates[0] == pytest.approx(0.062, abs=0.002)
    assert rates[1] == pytest.approx(0.434, abs=0.003)
    held_out = np.concatenate([np.asarray(b.valid.labels), np.asarray(b.test.labels)]).mean(0)
    assert held_out[0] == pytest.approx(0.062, abs=0.003)
    assert held_out[1] == pytest.approx(0.434, abs=0.005)
    names = feature_names(b)
    assert not names & (LABEL_SOURCES | {"income_label", "marital_label", "education_label"})
    assert "education" in names  # a feature in group 1
    assert len(names) == len(COLUMNS) - 3  # 42 columns less income, marital status, instance weight


@needs_shared_data("census-income")
def test_census_group2_drops_education():
    b = mtlrec.load_dataset("census_income", data_dir=SHARED_DATA, group=2, split_seed=0)
    assert [t.name for t in b.tasks] == ["education", "marital"]
    names = feature_names(b)
    assert "education" not in names and "marital_stat" not in names and "instance_weight" not in names
    assert np.asarray(b.train.labels)[:, 0].mean() == pytest.approx(0.148, abs=0.01)


@needs_shared_data("census-income")
def test_census_split_seed_changes_valid_test_only():
    a = mtlrec.load_dataset("census_income", data_dir=SHARED_DATA, group=1, split_seed=0)
    b = mtlrec.load_dataset("census_income", data_dir=SHARED_DATA, group=1, split_seed=1)
    assert np.array_equal(np.asarray(a.train.labels), np.asarray(b.train.labels))
    assert not np.array_equal(np.asarray(a.valid.labels), np.asarray(b.valid.labels))


@needs_shared_data("samples/census-income.sample")
def test_census_sample_through_the_same_reader(tmp_path: Path):
    assert file_columns(SAMPLE)[0] == "row_id"  # the sample carries a leading row index
    b = load_sample(tmp_path)
    assert (len(b.train), len(b.valid) + len(b.test)) == (200, 200)
    names = feature_names(b)
    assert "row_id" not in names and not names & LABEL_SOURCES
    labels = np.asarray(b.train.labels)
    assert set(np.unique(labels)) <= {0.0, 1.0}
    # the row index must not shift the columns: labels match the raw text of the last and marital fields
    lines = SAMPLE.read_text().splitlines()
    assert labels[:, 0].sum() == sum(line.rstrip().endswith("50000+.") for line in lines) > 0
    assert labels[:, 1].sum() == sum(line.split(",")[8].strip() == "Never married" for line in lines) > 0
    assert np.isfinite(np.asarray(b.train.num)).all()


def test_census_rejects_wrong_field_count(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(SchemaError, match="3 comma-separated fields"):
        file_columns(bad)


def test_synthetic_default_config_file_mirrors_builtin_default():
    from mtlrec.experiment import DEFAULT_CONFIG, load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "synthetic_default.yaml"
    assert load_config(path) == DEFAULT_CONFIG


def test_census_benchmark_config_is_valid():
    import yaml

    from mtlrec.experiment import train_config

    path = Path(__file__).resolve().parents[1] / "configs" / "census_income.yaml"
    cfg = yaml.safe_load(path.read_text())
    train_config(cfg["train"], 0)  # unknown train settings raise
    assert {m["name"] for m in cfg["models"]} <= set(mtlrec.list_models())
    assert cfg["data"]["params"].get("numeric_transform", "auto") in {"auto", "standardize", "log", "quantile"}


def test_census_protocols_choose_the_inputs():
    from mtlrec.data.datasets.census_income import PROTOCOLS, census_schema
    from mtlrec.errors import UserError

    def inputs(group, protocol):
        return {f.name for f in census_schema(group, protocol=protocol).features}

    assert "education" in inputs(1, "mtlrec_v0")  # today's default keeps education in group 1
    for group in (1, 2):
        paper = inputs(group, "paper")
        assert not paper & {"education", "marital_stat", "instance_weight", "income_50k"}
        assert "det_hh_fam_stat" in paper  # kept, as in the papers' data (spells out "never married")
    assert inputs(2, "paper") == inputs(2, "mtlrec_v0")
    assert inputs(1, "mtlrec_v0") - inputs(1, "paper") == {"education"}
    assert set(PROTOCOLS) == {"paper", "mtlrec_v0"}
    with pytest.raises(UserError, match="did you mean 'paper'"):
        census_schema(1, protocol="papers")
    with pytest.raises(UserError, match="group must be 1 or 2"):
        census_schema(3)


@needs_shared_data("samples/census-income.sample")
def test_census_paper_protocol_on_the_sample(tmp_path: Path):
    b = mtlrec.load_dataset(
        "census_income",
        data_dir=SAMPLE.parent,
        train_file=SAMPLE.name,
        test_file=SAMPLE.name,
        use_cache=False,
        protocol="paper",
    )
    names = feature_names(b)
    assert "education" not in names and "marital_stat" not in names
    assert len(names) == len(COLUMNS) - 4
    assert b.name == "census_income_g1_paper"
