"""configs/bench/*.yaml: every config plans a grid of registered models with valid train settings; the settings
reproduce those of the former benchmark scripts, as recorded in the committed benchmarks/results JSON (params per
row, train settings, data, quick); every census row builds and runs on the Census-Income sample; the script
wrappers (DTN's importance on its run folder, DML's pairing with the plain backbone) work on the harness."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

import mtlrec
from mtlrec.bench import paired_rows, plan_grid, prepare_config
from mtlrec.data.batches import BatchIterator
from mtlrec.experiment import train_config
from mtlrec.models.registry import create_model
from mtlrec.train.weighting import list_weightings
from tests.conftest import needs_shared_data
from tests.test_census import SAMPLE, load_sample

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "bench"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def script(name: str):
    return importlib.import_module(name)


def committed(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def cells_by_label(name: str, **kw):
    cells = plan_grid(prepare_config(CONFIGS / f"{name}.yaml", **kw))
    return cells, {c.label: c for c in cells if c.seed == cells[0].seed and c.dataset == cells[0].dataset}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bench_config_plans_registered_models_with_valid_train_settings(path: Path):
    for quick in (False, True):
        cells = plan_grid(prepare_config(path, quick=quick))
        assert cells
        for c in cells:
            assert c.model in mtlrec.list_models(), c.key
            train_config(c.train, c.seed)  # unknown train settings raise


def test_census_income_reproduces_the_committed_settings():
    old = committed("census_income")
    cells, by = cells_by_label("census_income")
    assert set(by) == set(old["models"]) and {c.seed for c in cells} == set(range(5))
    for label, info in old["models"].items():
        assert by[label].params == info["params"], label
        assert by[label].train == old["train"], label
    assert by["mmoe"].data == {"name": "census_income", "params": old["protocol"]["data_params"]}
    _, quick = cells_by_label("census_income", quick=True)
    q = quick["mmoe"]
    assert q.seed == 0 and q.train_rows == 40_000 and q.train == {**old["train"], "epochs": 1, "batch_size": 512}


def test_census_dephn_reproduces_the_committed_settings_per_group():
    cells, by = cells_by_label("census_dephn")
    assert {c.dataset for c in cells} == {"group1", "group2"}
    for name in ("census_dephn", "census_dephn_group2"):
        old = committed(name)
        for label, info in old["models"].items():
            params = dict(info["params"])
            assert params.pop("model", label) == by[label].model == info["registry_model"], label
            assert by[label].params == params, label
        # the train settings, with selection on the trainer's default monitor: the group's main task's AUC
        assert {k: v for k, v in by["dephn"].train.items() if k != "monitor"} == old["train"]
        assert by["dephn"].train["monitor"] is None
        for g, info in old["protocol"]["groups"].items():
            group = next(c for c in cells if c.dataset == f"group{g}")
            assert group.data["params"] == {**old["protocol"]["data_params"], "group": int(g), "split_seed": 0}
            assert info["tasks"][0] == info["main_task"]


def test_census_dtn_baselines_reproduces_the_committed_settings():
    old = committed("census_dtn_baselines")
    _, by = cells_by_label("census_dtn_baselines")
    assert set(by) == set(old["models"])
    for label, info in old["models"].items():
        params = dict(info["params"])
        assert params.pop("model", label) == by[label].model, label
        assert by[label].params == params, label
        assert by[label].train == {**old["train"], **(info.get("train_overrides") or {})}, label
    weightings = sorted(label.split("+", 1)[1] for label in by if label.startswith("mmoe+"))
    assert weightings == sorted(w for w in list_weightings() if w != "fixed")


def test_movielens_dml_reproduces_the_committed_settings():
    old = committed("movielens_dml")
    ml = script("movielens_dml")
    cells, by = cells_by_label("movielens_dml", overrides=["train.epochs=5"])
    assert set(by) == {ml.label(m, v) for m in ml.MODELS for v in ml.VARIANTS}
    for m in ml.MODELS:
        assert by[ml.label(m, "dml")].params == old["protocol"]["params"][m]
        plain = dict(old["protocol"]["params"][m])
        plain.pop("dml")
        assert by[m].params == plain
        assert by[ml.label(m, "ctfm")].params == {**plain, "dml": {"variant": "ctfm"}}
    assert by["mmoe"].train == old["protocol"]["train"]
    assert by["mmoe"].data == {"name": "movielens_1m", "params": old["protocol"]["data"]}
    quick = plan_grid(prepare_config(CONFIGS / "movielens_dml.yaml", quick=True))
    assert {c.seed for c in quick} == {0, 1} and quick[0].data["params"]["max_ratings"] == 10_000


def test_the_train_config_of_movielens_dml_matches_the_bench_config():
    from mtlrec.experiment import load_config

    cfg = load_config(ROOT / "configs" / "movielens_dml.yaml")
    if not isinstance(cfg.get("models"), list):
        pytest.skip("configs/movielens_dml.yaml is not in the list format")
    _, by = cells_by_label("movielens_dml")
    for spec in cfg["models"]:
        label = spec.get("label", spec["name"])
        assert {**cfg["model_defaults"], **spec["params"]} == by[label].params, label
    assert cfg["train"] == by["mmoe"].train


def test_dml_variants_pair_with_their_plain_backbone():
    ml = script("movielens_dml")

    def q(model, values):
        return {"model": model, "task": "like", "metric": "auc", "split": "test", "values": values, "seeds": [0, 1]}

    summary = [q("mmoe", [0.80, 0.79]), q("mmoe+dml", [0.81, 0.81]), q("ple", [0.7, 0.7]), q("ple+gkd", [0.72, 0.71])]
    rows = {r["model"]: r for r in paired_rows(summary, ml.backbone)}
    assert set(rows) == {"mmoe+dml", "ple+gkd"}
    assert rows["mmoe+dml"]["reference"] == "mmoe" and rows["mmoe+dml"]["values"] == pytest.approx([0.01, 0.02])
    assert rows["ple+gkd"]["metric"] == "auc_diff_vs_ple"


def _census_sample_cells(name: str, tmp_path: Path):
    cfg = prepare_config(CONFIGS / f"{name}.yaml")
    cells = plan_grid(cfg, seeds=[0])
    return [c for c in cells if c.dataset in (None, "group1")], load_sample(tmp_path)


@needs_shared_data("samples/census-income.sample")
@pytest.mark.parametrize("name", ["census_income", "census_dephn", "census_dtn_baselines"])
def test_every_census_row_builds_and_runs_on_the_census_sample(name: str, tmp_path: Path):
    cells, bundle = _census_sample_cells(name, tmp_path)
    batch = next(iter(BatchIterator(bundle.train, 32)))
    for c in cells:
        out = create_model(c.model, bundle.layout, bundle.tasks, **c.params)(batch)
        assert set(out.logits) == {"income", "marital"}, c.label


@needs_shared_data("samples/census-income.sample")
def test_dtn_importance_from_its_run_folder(tmp_path: Path):
    from mtlrec.bench import run_grid

    dtn = script("census_dtn_baselines")
    data = {
        "name": "census_income",
        "params": {
            "data_dir": str(SAMPLE.parent),
            "train_file": SAMPLE.name,
            "test_file": SAMPLE.name,
            "cache_dir": str(tmp_path / "cache"),
            "use_cache": False,
        },
    }
    cfg = prepare_config(CONFIGS / "census_dtn_baselines.yaml", overrides=["train.epochs=1", "train.batch_size=64"])
    cfg["data"] = data
    cfg["models"][0]["params"]["num_buckets"] = 1000
    cells = plan_grid(cfg, seeds=[0], models=["dtn"])
    res = run_grid(cells, tmp_path / "runs", echo=lambda _m: None)
    assert res.complete
    imp = dtn.dtn_importance(tmp_path / "runs" / "dtn" / "seed0", data, {"n_repeats": 1, "max_rows": 100})
    assert set(imp) == {"income", "marital"} and "education" in imp["income"]
    field, table = dtn.write_importance(imp, tmp_path / "x.json", {"n_repeats": 1, "max_rows": 100})
    assert (tmp_path / "x_importance.png").exists() and field["plot"] == "x_importance.png" and "education" in table


def test_vg_study_config_is_the_scripts_generator_study():
    vg = script("vg_study")
    old = committed("vg_study")
    cells, by = cells_by_label("vg_study")
    configs = vg.configurations(list(vg.VARIANTS), list(vg.RELEVANCE))
    assert list(by) == [label.replace("/", "-") for label, _, _ in configs]
    for label, variant, relevance in configs:
        assert by[label.replace("/", "-")].params == vg.vg_params("dephn", variant, relevance), label
    assert by["no_vg"].train == {k: v for k, v in old["protocol"]["train"].items() if k != "progress"}
    assert {c.seed for c in cells} == set(range(old["protocol"]["sizes"]["seeds"]))
    sizes = old["protocol"]["sizes"]
    for c in cells:
        rel = old["protocol"]["data"][c.dataset]["relation"]
        assert c.data == {
            "name": "criteo_ru",
            "params": {"relation": rel, "rows": sizes["rows"], "max_vocab": sizes["max_vocab"], "seed": 0},
        }
