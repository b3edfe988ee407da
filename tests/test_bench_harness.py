"""mtlrec.bench: the grid runs (in worker processes), a rerun skips finished cells, an interrupted cell continues
from its last.pt to the uninterrupted result, a failed cell is recorded while the others finish, --quick merges
the quick overrides, the summary's paired test and MTL gain on known numbers, thresholds and the exit code."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlrec import metrics as M
from mtlrec.bench import check_expected, paired_rows, plan_grid, prepare_config, run_grid, summarize_cells
from mtlrec.bench.grid import parse_seeds
from mtlrec.bench.run import run_bench
from mtlrec.errors import RunInterrupted, UserError
from mtlrec.train import trainer as trainer_mod

TINY = {
    "name": "tiny",
    "data": {"name": "synthetic", "params": {"n": 400, "correlation": 0.5, "task_type": "binary"}},
    "model_defaults": {"numeric_mode": "dense", "tower_hidden": [4]},
    "models": [
        {"name": "single_task", "params": {"bottom_hidden": [8]}},
        {"name": "mmoe", "params": {"num_experts": 2, "expert_hidden": [8]}},
    ],
    "train": {"epochs": 2, "batch_size": 100, "patience": 3},
    "seeds": [0, 1],
    "bench": {
        "baseline": "mmoe",
        "single_task": "single_task",
        "expected": {"mmoe": {"y1.auc": 0.0, "y2.logloss": 0.0}},
        "quick": {"seeds": [3], "train": {"epochs": 1}, "bench": {"train_rows": 150}},
    },
}


def _quiet(_msg: str) -> None:
    pass


def test_grid_runs_in_workers_and_writes_the_benchmarks_json(tmp_path: Path):
    run = run_bench(TINY, out=tmp_path, jobs=2, threads=1, echo=_quiet, command="test")
    p = json.loads((tmp_path / "bench.json").read_text())
    assert p == json.loads(json.dumps(run.payload, default=str))
    for key in ("benchmark", "command", "created", "mtlrec_version", "git_commit", "machine", "quick", "rows"):
        assert key in p, key
    assert set(p["machine"]) >= {"cpu", "cpu_flags", "threads", "torch"}
    assert p["complete"] is True and p["cells_done"] == 4 and p["quick"] is False
    auc = [r for r in p["rows"] if r["model"] == "mmoe" and r["task"] == "y1" and r["metric"] == "auc"]
    assert {r["split"] for r in auc} == {"test", "valid"} and all(r["seeds"] == [0, 1] for r in auc)
    metrics = {r["metric"] for r in p["rows"]}
    assert {"auc_diff_vs_mmoe", "mtl_gain_auc", "mtl_gain_logloss"} <= metrics
    assert p["models"]["mmoe"]["best_epochs"] and all(1 <= e <= 2 for e in p["models"]["mmoe"]["best_epochs"])
    # y2.logloss <= 0 cannot hold: a failed threshold on a complete, non-quick run exits 1
    assert [e["passed"] for e in p["expected"]] == [True, False] and run.exit_code == 1
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r["selected_epoch"] == r["best_epoch"] for r in rows)  # counted in log.jsonl; both 1-based
    assert all(r["git_commit"] == p["git_commit"] for r in rows + p["cells"])  # each cell names its code
    assert sorted(r["key"] for r in rows) == ["mmoe/seed0", "mmoe/seed1", "single_task/seed0", "single_task/seed1"]
    for r in rows:
        assert {"run.json", "log.jsonl", "result.json", "last.pt", "best.pt"} <= {
            f.name for f in (tmp_path / r["key"]).iterdir()
        }
    # the same grid in one process gives the same numbers
    again = run_bench(TINY, out=tmp_path / "seq", jobs=1, echo=_quiet)
    assert [r["values"] for r in again.payload["rows"]] == [r["values"] for r in run.payload["rows"]]


def test_a_rerun_skips_finished_cells_and_refuses_changed_settings(tmp_path: Path):
    cells = plan_grid(prepare_config(TINY, overrides=["train.epochs=1"]))
    first = run_grid(cells, tmp_path, echo=_quiet)
    assert first.complete and first.ran == 4
    lines = []
    again = run_grid(cells, tmp_path, echo=lines.append)
    assert again.ran == 0 and again.skipped == 4 and again.complete
    assert "4 already done, 0 to run" in lines[0]
    assert [r["test"] for r in again.rows] == [r["test"] for r in first.rows]
    changed = plan_grid(prepare_config(TINY, overrides=["train.lr=0.01", "train.epochs=1"]))
    with pytest.raises(UserError, match="other settings"):
        run_grid(changed, tmp_path, echo=_quiet)
    redo = run_grid(changed, tmp_path, echo=_quiet, redo_changed=True)
    assert redo.ran == 4 and redo.complete


def test_a_ledger_carries_finished_cells_to_a_fresh_out_folder(tmp_path: Path):
    cells = plan_grid(prepare_config(TINY, overrides=["train.epochs=1"]))
    ledger = tmp_path / "committed" / "grid.jsonl"
    first = run_grid(cells[:3], tmp_path / "machine1", ledger=ledger, echo=_quiet)  # a session ends after 3 cells
    assert first.ran == 3 and len(ledger.read_text().splitlines()) == 3
    lines = []
    second = run_grid(cells, tmp_path / "machine2", ledger=ledger, echo=lines.append)  # a new machine: no out folder
    assert second.ran == 1 and second.skipped == 3 and second.complete
    assert any("3 finished cells taken from the ledger" in line for line in lines)
    assert [r["test"] for r in second.rows[:3]] == [r["test"] for r in first.rows]
    assert len((tmp_path / "machine2" / "results.jsonl").read_text().splitlines()) == 4
    # a call planning fewer cells keeps the others' rows in the ledger; other settings are not taken from it
    run_grid(cells[:1], tmp_path / "machine3", ledger=ledger, echo=_quiet)
    assert len(ledger.read_text().splitlines()) == 4
    changed = plan_grid(prepare_config(TINY, overrides=["train.lr=0.01", "train.epochs=1"]))
    redo = run_grid(changed[:1], tmp_path / "machine4", ledger=ledger, echo=_quiet)
    assert redo.ran == 1
    with pytest.raises(UserError, match="a folder"):
        run_grid(cells, tmp_path / "machine5", ledger=tmp_path, echo=_quiet)
    ledger.write_text(ledger.read_text() + "{not json\n")
    with pytest.raises(UserError, match=r"grid.jsonl:5: not a JSON line"):
        run_grid(cells, tmp_path / "machine6", ledger=ledger, echo=_quiet)


def test_an_interrupted_cell_continues_from_last_pt_to_the_uninterrupted_result(tmp_path: Path, monkeypatch):
    cfg = prepare_config(TINY, overrides=["seeds=[0]", "train.epochs=2"])
    cells = plan_grid(cfg, models=["mmoe"])
    reference = run_grid(cells, tmp_path / "ref", echo=_quiet).rows[0]

    original = trainer_mod.Trainer.train_step
    calls = {"n": 0}

    def interrupting(self, batch, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C mid-epoch: the trainer finishes this step, saves last.pt and stops
            signal.raise_signal(signal.SIGINT)
        return original(self, batch, *args)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", interrupting)
    with pytest.raises(RunInterrupted, match="resumes"):
        run_grid(cells, tmp_path / "int", echo=_quiet)
    assert (tmp_path / "int" / "mmoe" / "seed0" / "last.pt").exists()
    assert not (tmp_path / "int" / "results.jsonl").exists() or not (tmp_path / "int" / "results.jsonl").read_text()
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    lines: list[str] = []
    resumed = run_grid(cells, tmp_path / "int", echo=lines.append)
    row = resumed.rows[0]
    assert row["resumed"] is True and "(resumed)" in lines[1]
    assert row["test"] == reference["test"] and row["valid"] == reference["valid"]
    assert row["best_epoch"] == reference["best_epoch"]


def test_a_failed_cell_is_recorded_and_the_others_finish(tmp_path: Path):
    cfg = prepare_config(TINY, overrides=["seeds=[0]", "train.epochs=1"])
    # a config that validates but whose model cannot be built (names are validated before any cell runs)
    cfg["models"].append({"name": "mmoe", "label": "broken", "params": {"expert_hidden": []}})
    out = run_bench(cfg, out=tmp_path, jobs=2, threads=1, echo=_quiet)
    p = out.payload
    assert p["complete"] is False and p["cells_done"] == 2 and p["cells_total"] == 3
    assert [f["key"] for f in p["failed"]] == ["broken/seed0"] and "hidden layer" in p["failed"][0]["error"]
    assert {r["model"] for r in p["rows"]} == {"single_task", "mmoe"}
    assert out.exit_code == 0  # incomplete: thresholds are not enforced
    # a rerun retries only the failed cell
    again = run_grid(plan_grid(cfg), tmp_path, echo=_quiet)
    assert again.ran == 1 and again.skipped == 2 and len(again.failed) == 1


def test_quick_merges_the_quick_overrides_and_sets_can_override_them():
    cfg = prepare_config(TINY, quick=True)
    cells = plan_grid(cfg)
    assert {c.seed for c in cells} == {3} and all(c.train["epochs"] == 1 and c.train_rows == 150 for c in cells)
    assert cfg["train"]["batch_size"] == 100  # untouched keys stay
    cfg = prepare_config(TINY, quick=True, overrides=["train.epochs=2", "bench.train_rows=null"])
    assert all(c.train["epochs"] == 2 and c.train_rows is None for c in plan_grid(cfg))


def test_quick_run_trains_on_the_subset(tmp_path: Path):
    run = run_bench(TINY, out=tmp_path, quick=True, echo=_quiet)
    assert run.payload["quick"] is True and run.exit_code == 0  # thresholds are not enforced on quick runs
    rows = json.loads((tmp_path / "single_task" / "seed3" / "run.json").read_text())
    assert rows["train"]["epochs"] == 1


def test_grid_order_models_and_train_overrides():
    cfg = prepare_config(TINY)
    cfg["models"].append({"name": "mmoe", "label": "mmoe+equal", "train": {"weighting": "equal"}})
    cells = plan_grid(cfg, seeds=[5, 6], models=["mmoe", "mmoe+equal"])
    assert [c.key for c in cells] == ["mmoe/seed5", "mmoe+equal/seed5", "mmoe/seed6", "mmoe+equal/seed6"]
    assert cells[1].train["weighting"] == "equal" and "weighting" not in cells[0].train
    assert cells[1].params == {"numeric_mode": "dense", "tower_hidden": [4]}
    with pytest.raises(UserError, match="did you mean 'mmoe'"):
        plan_grid(cfg, models=["mmeo"])
    cfg["bench"]["datasets"] = [{"label": "a", "name": "synthetic"}, {"label": "b", "name": "synthetic"}]
    assert [c.key for c in plan_grid(cfg, seeds=[0], models=["mmoe"])] == ["a/mmoe/seed0", "b/mmoe/seed0"]
    picked = plan_grid(cfg, seeds=[0], models=["mmoe"], datasets=["b"])
    assert [c.key for c in picked] == ["b/mmoe/seed0"]
    assert picked[0].fingerprint() == plan_grid(cfg, seeds=[0], models=["mmoe"])[1].fingerprint()
    with pytest.raises(UserError, match="--datasets.*'c'"):
        plan_grid(cfg, datasets=["c"])
    with pytest.raises(UserError, match="one data set"):
        plan_grid(prepare_config(TINY), datasets=["a"])


def test_parse_seeds():
    assert parse_seeds("5") == [0, 1, 2, 3, 4] and parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3,") == [3]
    assert parse_seeds(None) is None
    with pytest.raises(UserError):
        parse_seeds("x")


def _q(model, values, seeds, metric="auc", task="t"):
    return {
        "model": model,
        "task": task,
        "metric": metric,
        "split": "test",
        "mean": sum(values) / len(values),
        "values": values,
        "seeds": seeds,
        "std": 0.0,
    }


def test_paired_test_and_mtl_gain_on_known_numbers():
    summary = [
        _q("single", [0.80, 0.81, 0.82], [0, 1, 2]),
        _q("mmoe", [0.83, 0.83, 0.86, 0.99], [0, 1, 2, 3]),  # seed 3 has no single-task partner
        _q("single", [0.30, 0.32], [0, 1], metric="logloss"),
        _q("mmoe", [0.28, 0.31], [0, 1], metric="logloss"),
    ]
    gains = {r["metric"]: r for r in paired_rows(summary, "single", gain=True)}
    g = gains["mtl_gain_auc"]
    assert g["seeds"] == [0, 1, 2] and g["values"] == pytest.approx([0.03, 0.02, 0.04])
    assert g["mean"] == pytest.approx(0.03) and g["std"] == pytest.approx(0.01)
    assert g["p_value"] == pytest.approx(M.paired_test([0.83, 0.83, 0.86], [0.80, 0.81, 0.82])["p_value"])
    assert gains["mtl_gain_logloss"]["values"] == pytest.approx([0.02, 0.01])  # lower is better: single − mmoe
    diffs = {r["metric"]: r for r in paired_rows(summary, "single")}
    assert diffs["logloss_diff_vs_single"]["values"] == pytest.approx([-0.02, -0.01])
    by_fn = paired_rows(summary, lambda label: "single" if label != "single" else None)
    assert [r["model"] for r in by_fn] == ["mmoe", "mmoe"]


def test_summary_orders_values_by_seed_and_skips_failed_cells():
    rows = [
        {"label": "m", "seed": 1, "status": "ok", "test": {"t": {"auc": 0.7}}},
        {"label": "m", "seed": 0, "status": "ok", "test": {"t": {"auc": 0.6}}},
        {"label": "m", "seed": 2, "status": "failed", "error": "x"},
    ]
    (s,) = summarize_cells(rows, splits=("test",))
    assert s["seeds"] == [0, 1] and s["values"] == [0.6, 0.7] and s["mean"] == pytest.approx(0.65)
    assert check_expected([s], {"m": {"t.auc": 0.66}})[0]["passed"] is False
    assert check_expected([s], {"m": {"t.auc": 0.64}})[0]["passed"] is True
    assert check_expected([s], {"other": {"t.auc": 0.5}})[0]["passed"] is None


def test_cli_bench_runs_and_a_rerun_skips(tmp_path: Path):
    import yaml

    from mtlrec.cli import app

    cfg = prepare_config(TINY, overrides=["seeds=[0]", "train.epochs=1", "bench.expected=null"])
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    args = ["bench", str(path), "--out", str(tmp_path / "o"), "--models", "mmoe,single_task", "--seeds", "0,1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "[4/4]" in res.output and "ETA" in res.output and "MTL gain" in res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "4 already done, 0 to run" in res.output
