"""Criteo-R / Criteo-UR (DEPHN A.1.1): transforms, the Criteo-shaped generator, the Criteo reader, the data sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from mtlrec.data.datasets import load_dataset
from mtlrec.data.datasets.criteo import (
    CAT_COLUMNS,
    COLUMNS,
    INT_COLUMNS,
    build_criteo_ru,
    criteo_like_synthetic,
    label_report,
    read_criteo,
    related_latent,
    two_task_labels,
    unrelated_latent,
)
from mtlrec.errors import UserError
from mtlrec.recipes.criteo_ru import base_confidence as recipe_base_confidence
from mtlrec.recipes.criteo_ru import main as recipe_main
from mtlrec.recipes.criteo_ru import write_confidence
from mtlrec.schema import SchemaError
from tests.conftest import SHARED_DATA, needs_shared_data

TINY_DNN = {"hidden": (8,), "embedding_dim": 4, "epochs": 1, "batch_size": 256}


@pytest.fixture(scope="module")
def synth():
    return criteo_like_synthetic(4000, seed=3)


def write_criteo_tsv(table: pa.Table, path) -> None:
    """The published Criteo layout: tab-separated, no header, empty field = missing."""
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))


def test_transforms_follow_a11():
    c = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    yr = related_latent(c, noise_std=0.0)
    np.testing.assert_allclose(yr, np.sign(c) * (2 * np.log1p(np.abs(c)) + 0.1 * np.exp(np.abs(c))))
    yur = unrelated_latent(c)
    np.testing.assert_allclose(yur, np.sign(c) * (2 * np.sin(np.abs(c)) + 0.1 * np.cos(np.abs(c))))


def test_generator_shape_and_determinism(synth):
    table, c = synth
    assert table.column_names == COLUMNS and table.num_rows == 4000 and c.shape == (4000,)
    assert all(pa.types.is_integer(table[col].type) for col in ["label", *INT_COLUMNS])
    assert all(pa.types.is_string(table[col].type) for col in CAT_COLUMNS)
    again, c2 = criteo_like_synthetic(4000, seed=3)
    assert again.equals(table) and np.array_equal(c, c2)
    other, c3 = criteo_like_synthetic(4000, seed=4)
    assert not np.array_equal(c, c3)
    assert abs(c.mean() + 1.1) < 0.01 and abs(c.std() - 1.0) < 0.01
    # skewed vocabularies: the most frequent value of a categorical field is far above uniform
    counts = table["C1"].drop_null().value_counts().field("counts").to_numpy()
    assert counts.max() > 5 * counts.mean() or len(counts) < 5


def test_related_and_unrelated_correlations(synth):
    _, c = synth
    rel = two_task_labels(c, "related", seed=0)
    unrel = two_task_labels(c, "unrelated", seed=0)
    r, u = (label_report(c, d["y"], d["task1"], d["task2"]) for d in (rel, unrel))
    assert r["pearson_c_y"] > 0.9 and u["pearson_c_y"] < r["pearson_c_y"] - 0.2
    for d in (rel, unrel):
        assert set(np.unique(d["task1"])) <= {0, 1} and set(np.unique(d["task2"])) <= {0, 1}
    np.testing.assert_array_equal(rel["task1"], (c > 0).astype(np.int8))
    bern = two_task_labels(c, "unrelated", labeling="bernoulli", seed=0)
    assert label_report(c, bern["y"], bern["task1"], bern["task2"])["label_agreement"] < u["label_agreement"]
    with pytest.raises(ValueError, match="relation"):
        two_task_labels(c, "sideways")


def test_criteo_ru_bundle_known_confidence():
    b = load_dataset("criteo_ru", relation="unrelated", rows=3000, seed=1, max_vocab=500)
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 2400, "valid": 300, "test": 300}
    assert b.layout.num_fields == 39 and [t.name for t in b.tasks] == ["task1", "task2"]
    assert set(np.unique(b.train.labels)) <= {0.0, 1.0}
    assert b.meta["confidence"] == "known" and b.meta["split"]["split_seed"] == 1
    assert 0.3 < b.meta["labels"]["pearson_c_y"] < 0.75
    again = load_dataset("criteo_ru", relation="unrelated", rows=3000, seed=1, max_vocab=500)
    assert np.array_equal(again.test.labels, b.test.labels) and np.array_equal(again.test.cat, b.test.cat)


def test_reader_roundtrip_and_dnn_confidence(tmp_path, synth):
    table, _ = synth
    path = tmp_path / "train.txt"
    write_criteo_tsv(table.slice(0, 1500), path)
    back = read_criteo(path)
    assert back.column_names == COLUMNS and back.num_rows == 1500
    assert back["I3"].to_pylist() == table["I3"].slice(0, 1500).to_pylist()
    assert back["C5"].to_pylist() == table["C5"].slice(0, 1500).to_pylist()
    conf = write_confidence(path, tmp_path / "c.npy", dnn=TINY_DNN)
    b = load_dataset("criteo_ru", path=str(path), confidence=str(conf), relation="related")
    assert b.meta["confidence"] == "dnn" and len(b.train) == 1200
    assert abs(b.meta["labels"]["c_mean"] + 1.1) < 0.1
    assert b.meta["labels"]["pearson_c_y"] > 0.9
    # the recipe's one-call form gives the same data set as the confidence file read back
    direct = build_criteo_ru(recipe_base_confidence(path, dnn=TINY_DNN), "related")
    assert direct.meta == {k: v for k, v in b.meta.items() if k not in ("dataset_name", "load_params")}
    assert np.array_equal(direct.test.labels, b.test.labels) and np.array_equal(direct.test.cat, b.test.cat)


def test_criteo_ru_file_needs_the_recipe_confidence(tmp_path, synth):
    table, _ = synth
    path = tmp_path / "train.txt"
    write_criteo_tsv(table.slice(0, 300), path)
    with pytest.raises(UserError, match="mtlrec.recipes.criteo_ru"):
        load_dataset("criteo_ru", path=str(path))
    with pytest.raises(UserError, match="dnn= is a setting of the base-confidence recipe"):
        load_dataset("criteo_ru", path=str(path), dnn=TINY_DNN)
    conf = write_confidence(path, tmp_path / "c.npy", dnn=TINY_DNN)
    assert json.loads(conf.with_suffix(".json").read_text())["rows"] == 300
    with pytest.raises(UserError, match="fitted on split"):
        load_dataset("criteo_ru", path=str(path), confidence=str(conf), split_seed=5)
    with pytest.raises(UserError, match="one per row"):
        load_dataset("criteo_ru", path=str(path), confidence=str(conf), max_rows=100)


def test_recipe_command_line(tmp_path, synth):
    table, _ = synth
    path = tmp_path / "train.txt"
    write_criteo_tsv(table.slice(0, 300), path)
    argv = [str(path), "--out", str(tmp_path / "c"), "--hidden", "8", "--embedding-dim", "4", "--batch-size", "128"]
    assert recipe_main(argv) == 0
    raw = np.load(tmp_path / "c.npy")
    assert raw.shape == (300,) and np.isfinite(raw).all()


def test_data_package_never_trains():
    """Layering (issue 10): no module under data/ imports the trainer, the models, the plug-ins or a recipe."""
    import ast

    root = Path(__file__).resolve().parents[1] / "src" / "mtlrec" / "data"
    banned = ("mtlrec.train", "mtlrec.models", "mtlrec.plugins", "mtlrec.recipes", "mtlrec.experiment")
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n.startswith(banned)]
            assert not bad, f"{f.relative_to(root)} imports {bad}"


def test_reader_rejects_other_formats(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t2\t3\n")
    with pytest.raises(SchemaError, match="expected 40"):
        read_criteo(bad)
    with pytest.raises(FileNotFoundError, match="criteo"):
        read_criteo(tmp_path / "missing.txt")


@needs_shared_data("samples/criteo_sample.txt")
def test_criteo_sample_file():
    path = SHARED_DATA / "samples" / "criteo_sample.txt"
    table = read_criteo(path)
    assert table.num_rows == 200 and table.column_names == COLUMNS
    b = build_criteo_ru(recipe_base_confidence(path, dnn=TINY_DNN), "unrelated")
    assert sum(len(v) for v in b.splits.values()) == 200
    assert set(np.unique(b.train.labels)) <= {0.0, 1.0}
    assert np.isfinite(b.meta["labels"]["pearson_c_y"])


def test_criteo_like_single_task():
    b = load_dataset("criteo_like", rows=1000, seed=2, max_vocab=200)
    assert [t.name for t in b.tasks] == ["click"] and len(b.train) == 800
    assert 0.05 < b.meta["click_rate"] < 0.6


def test_mixed_criteo_labels_span_the_correlation_range():
    kw = {"rows": 6000, "max_vocab": 200, "seed": 0}
    related = load_dataset("criteo_ru", relation="related", **kw)
    pearson = []
    for p in (0.0, 0.5, 1.0):
        b = load_dataset("criteo_ru", relation="mixed", relatedness=p, **kw)
        assert b.meta["relatedness"] == p and b.meta["independent"] == "inputs"
        pearson.append(b.meta["labels"]["label_pearson"])
        rate = b.meta["labels"]["positive_rate_task2"]
        assert abs(rate - related.meta["labels"]["positive_rate_task2"]) < 0.02  # the independent label's rate
    assert abs(pearson[0]) < 0.1 and 0.35 < pearson[1] < 0.65 and pearson[2] == related.meta["labels"]["label_pearson"]
    same = load_dataset("criteo_ru", relation="mixed", relatedness=1.0, **kw)
    assert np.array_equal(same.train.labels, related.train.labels)  # relatedness 1 is Criteo-R
    noise = load_dataset("criteo_ru", relation="mixed", relatedness=0.0, independent="noise", **kw)
    assert abs(noise.meta["labels"]["label_pearson"]) < 0.1
    with pytest.raises(UserError, match="relatedness: expected a probability"):
        load_dataset("criteo_ru", relation="mixed", relatedness=1.5, **kw)
    with pytest.raises(UserError, match="did you mean 'inputs'"):
        load_dataset("criteo_ru", relation="mixed", independent="input", **kw)
