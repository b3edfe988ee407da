"""benchmarks/claims.py on a synthetic results file: verdicts from paired tests, pending rows on partial results."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import claims as C  # noqa: E402

SEEDS = [0, 1, 2, 3, 4]


def _row(model, task, values, dataset="group1", metric="auc", seeds=SEEDS):
    return {"model": model, "dataset": dataset, "task": task, "metric": metric, "split": "test",
            "mean": sum(values) / len(values), "values": values, "seeds": seeds[: len(values)]}  # fmt: skip


def _payload(rows, done):
    models = {f"group1/{m}": {"best_epochs": [4] * 5, "epochs_run": [7] * 5} for m in ("dephn", "mmoe", "ple")}
    return {"benchmark": "claims_census", "quick": False, "complete": False, "cells_done": done,
            "cells_total": 130, "rows": rows, "models": models}  # fmt: skip


def test_claims_table_on_partial_results(tmp_path):
    base = [0.950, 0.951, 0.949, 0.952, 0.950]
    rows = [
        _row("dephn", "income", [v + 0.002 + 0.0001 * i for i, v in enumerate(base)]),  # better, significant
        _row("mmoe", "income", base),
        _row("ple", "income", [v + 0.0005 * (-1) ** i for i, v in enumerate(base)]),  # no significant difference
        _row("mmoe_wide", "income", [v + 0.003 + 0.0001 * i for i, v in enumerate(base)]),  # beats dephn
        _row("ple_wide", "income", [v - 0.01 for v in base]),
    ]
    path = tmp_path / "claims_census.json"
    path.write_text(json.dumps(_payload(rows, 12)))
    configs = ROOT / "configs" / "bench"
    grids = {name: C.load_grid(name, {C.CENSUS: path}, configs, fallback=False) for name in C.GRIDS}
    assert grids[C.CENSUS].total == 130 and grids[C.VG].payload is None
    mine = [
        C.Claim("DEPHN", "ablation", "q", C.CENSUS, "group1", "income", pairs=[("dephn", "mmoe")]),
        C.Claim("DEPHN", "order", "q", C.CENSUS, "group1", "income", pairs=[("dephn", "mmoe"), ("mmoe", "ple")]),
        C.Claim("issue", "size", "–", C.CENSUS, "group1", "income", pairs=[("dephn", "mmoe_wide")]),
        C.Claim("DEPHN", "missing model", "q", C.CENSUS, "group1", "income", pairs=[("dephn", "dephn-no_vg")]),
        C.Claim("DEPHN", "majority", "q", C.CENSUS, "group1", "income", kind="majority",
                pairs=[("dephn", "mmoe"), ("dephn", "ple_wide"), ("mmoe_wide", "dephn")]),
        C.Claim("DEPHN", "VG", "q", C.VG, "mix0", "mean", pairs=[("add_sqrt-pearson@adam", "no_vg@adam")]),
        C.Claim("DEPHN", "WeChat", "q", None, why="no data"),
    ]  # fmt: skip
    md = C.claims_markdown(grids, mine)
    lines = {line.split(" | ")[2]: line for line in md.splitlines() if line.startswith("| ") and " | " in line}
    assert "| reproduced |" in lines["ablation"] and "dephn 0.9526 ± 0.0012" in lines["ablation"]
    assert "5 seeds" in lines["ablation"] and "selected epoch 4.0 (run ≤ 7)" in lines["ablation"]
    assert "not reproduced (mmoe vs ple: no significant difference" in lines["order"]
    assert "not reproduced (dephn vs mmoe_wide reversed, p < 0.001)" in lines["size"]
    assert "pending: grid incomplete (12 of 130 runs)" in lines["missing model"]
    assert "reproduced (3 of 3 significantly better)" in lines["majority"]
    assert "pending: grid not run (0 of 850 runs)" in lines["VG"]
    assert "not testable here: no data" in lines["WeChat"]
    assert "| claims_census | 12 of 130 |" in md


def test_every_claim_names_a_grid_entry_it_can_find():
    from mtlrec.bench import plan_grid, prepare_config

    labels = {}
    for name in C.GRIDS:
        cells = plan_grid(prepare_config(ROOT / "configs" / "bench" / f"{name}.yaml"))
        labels[name] = {(c.dataset, c.label) for c in cells}
    rows = C.claims()
    assert len(rows) > 30
    for c in rows:
        if c.grid is None:
            assert c.why
            continue
        for a, b in c.pairs:
            for m in (a, b):
                assert (c.dataset, m) in labels[c.grid], (c.claim, m)
        if c.kind == "trend":
            assert (c.dataset2, c.pairs[0][0]) in labels[c.grid]


def test_main_writes_the_table(tmp_path, capsys):
    out, quick = tmp_path / "claims.md", tmp_path / "quick.json"
    quick.write_text(json.dumps({**_payload([_row("dtn", "income", [0.9] * 5, None)], 8), "quick": True}))
    assert C.main(["--out", str(out), "--results", f"{C.DTN}={quick}"]) == 0
    text = out.read_text()
    assert text.startswith("# Claims table") and "not testable here" in text
    assert "| claims_census_dtn | not run |" in text  # a quick run is no evidence
    assert "claims_census_dtn" in capsys.readouterr().out


def test_vg_rows_show_the_measured_label_pearson(tmp_path):
    rows = [
        _row(m, t, [0.80 + d + 0.001 * i for i in range(5)], "mix0")
        for m, d in (("add_sqrt-pearson@adam", 0.01), ("no_vg@adam", 0.0))
        for t in ("task1", "task2")
    ]
    payload = {**_payload(rows, 20), "datasets": {"mix0": {"labels": {"label_pearson": 0.0153}}}}
    path = tmp_path / "vg.json"
    path.write_text(json.dumps(payload))
    grid = C.load_grid(C.VG, {C.VG: path}, ROOT / "configs" / "bench", fallback=False)
    claim = C.Claim("DEPHN", "VG", "q", C.VG, "mix0", "mean", pairs=[("add_sqrt-pearson@adam", "no_vg@adam")])
    ours, verdict, _ = C.evaluate_claim(claim, {C.VG: grid})
    assert verdict == "reproduced" and "mix0 label Pearson 0.015" in ours and "add_sqrt-pearson@adam 0.8120" in ours


def test_an_incomplete_grid_shows_interim_figures_on_the_seeds_finished(tmp_path):
    base = [0.950, 0.951, 0.949, 0.952, 0.950]
    better = [v + 0.002 + 0.0001 * i for i, v in enumerate(base)]
    rows = [
        _row("dephn", "income", better[:3]),  # seeds 0-2 finished
        _row("mmoe", "income", base[:4]),  # seeds 0-3: the claim uses the three both have
        _row("ple", "income", base[:2]),  # two seeds: too few to show
    ]
    path = tmp_path / "claims_census.json"
    path.write_text(json.dumps(_payload(rows, 9)))
    grid = C.load_grid(C.CENSUS, {C.CENSUS: path}, ROOT / "configs" / "bench", fallback=False)
    grids = {C.CENSUS: grid}
    ours, verdict, _ = C.evaluate_claim(C.Claim("D", "c", "q", C.CENSUS, "group1", "income", pairs=[("dephn", "mmoe")]),
                                     grids)  # fmt: skip
    assert ours.startswith("interim, 3 of 5 seeds: dephn 0.9521 ± 0.0010; mmoe 0.9500") and "3 seeds" in ours
    assert verdict == "pending: grid incomplete (9 of 130 runs); so far: reproduced"
    ours, verdict, _ = C.evaluate_claim(C.Claim("D", "c", "q", C.CENSUS, "group1", "income", pairs=[("mmoe", "ple")]),
                                     grids)  # fmt: skip
    assert (ours, verdict) == ("–", "pending: grid incomplete (9 of 130 runs)")


def test_readme_block_replaces_the_text_between_the_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{C.README_BEGIN}\nold table\n{C.README_END}\nafter\n")
    assert C.main(["--out", str(tmp_path / "claims.md"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n" + C.README_BEGIN)
    assert text.endswith(C.README_END + "\nafter\n") and "| # | paper | claim | verdict |" in text
    assert "not testable here" in text and "Runs done: claims_census" in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit) as e:
        C.main(["--out", str(tmp_path / "claims.md"), "--readme", str(readme)])
    assert e.value.code == 2 and "no claims markers" in capsys.readouterr().err


def test_grid_tables_in_the_readme_come_from_the_grid_json(tmp_path):
    base = [0.950, 0.951, 0.949, 0.952, 0.950]
    rows = [_row("dephn", "income", [v + 0.002 for v in base]), _row("mmoe", "income", base),
            _row("dephn", "marital", [0.99] * 5), _row("mmoe", "marital", [0.99] * 5),
            {**_row("dephn", "income", [0.002] * 5), "metric": "auc_diff_vs_mmoe", "p_value": 0.0004}]  # fmt: skip
    payload = {**_payload(rows, 130), "baseline": "mmoe"}
    payload["models"]["group1/dephn"].update(num_parameters=550002, train_seconds_mean=354.2)
    path = tmp_path / "claims_census.json"
    path.write_text(json.dumps(payload))
    grids = {name: C.load_grid(name, {C.CENSUS: path}, ROOT / "configs" / "bench", fallback=False) for name in C.GRIDS}
    readme = tmp_path / "README.md"
    marker = "<!-- grid table: claims_census/group1 -->"
    readme.write_text(f"{C.README_BEGIN}\n{C.README_END}\n\n{marker}\nold\n<!-- grid table end -->\nafter\n")
    C.update_readme(readme, C.readme_block(grids), grids)
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- grid table end -->\nafter\n")
    assert (
        "| model | parameters | income AUC | marital AUC | income Δ vs mmoe (p) | selected epoch, mean (epochs run) |"
        in text
    )
    assert "| dephn | 550,002 | 0.9524 ± 0.0011 | 0.9900 ± 0.0000 | +0.0020 (< 0.001) | 4.0 (7–7) | 354 |" in text
    assert "| mmoe | – | 0.9504 ± 0.0011 | 0.9900 ± 0.0000 | – |" in text and "Seeds 0, 1, 2, 3, 4 (complete)" in text
    readme.write_text(f"{C.README_BEGIN}\n{C.README_END}\n<!-- grid table: nope -->\nx\n<!-- grid table end -->\n")
    with pytest.raises(ValueError, match="unknown grid 'nope'"):
        C.update_readme(readme, C.readme_block(grids), grids)


def _written_grid(tmp_path, name, payload):
    """``payload`` as grid ``name``'s bench JSON, loaded as claims.py loads it."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**payload, "benchmark": name}))
    return C.load_grid(name, {name: path}, ROOT / "configs" / "bench", fallback=False)


def test_the_dml_table_pairs_each_variant_with_its_plain_backbone(tmp_path):
    from scipy import stats

    auc, mse = [0.810, 0.812, 0.811, 0.813, 0.809], [0.760, 0.758, 0.761, 0.757, 0.759]
    gain = [0.001, 0.002, 0.0, 0.001, 0.001]
    dml_auc, dml_mse = (
        [a + g for a, g in zip(auc, gain, strict=True)],
        [m - 2 * g for m, g in zip(mse, gain, strict=True)],
    )
    rows = [_row("mmoe", "like", auc, dataset="ml1m_half"),
            _row("mmoe", "rating", mse, dataset="ml1m_half", metric="mse"),
            _row("mmoe+dml", "like", dml_auc, dataset="ml1m_half"),
            _row("mmoe+dml", "rating", dml_mse, dataset="ml1m_half", metric="mse")]  # fmt: skip
    payload = {**_payload(rows, 60), "cells_total": 60, "baseline": None}
    table = C.grid_table(_written_grid(tmp_path, C.DML, payload), "ml1m_half")
    assert "| model | parameters | like AUC | rating MSE | like Δ vs plain (p) | rating Δ vs plain (p) |" in table
    assert "| mmoe | – | 0.8110 ± 0.0016 | 0.7590 ± 0.0016 | – | – |" in table
    p = stats.ttest_rel(dml_auc, auc).pvalue  # the same p for the rating column: its differences are -2x these
    sd = f"{statistics.stdev(dml_mse):.4f}"
    assert f"| mmoe+dml | – | 0.8120 ± 0.0019 | 0.7570 ± {sd} | +0.0010 ({p:.3f}) | -0.0020 ({p:.3f}) |" in table


@pytest.mark.parametrize(
    ("label", "reference"),
    [
        ("mmoe-add_sqrt-pearson@sgd", "mmoe-no_vg@sgd"),
        ("add_abs-cosine@adam", "no_vg@adam"),
        ("no_vg@sgd", "no_vg@sgd"),
        ("ple-no_vg@adam", "ple-no_vg@adam"),
    ],  # fmt: skip
)
def test_vg_rows_are_paired_with_the_no_vg_row_of_their_optimizer(label, reference):
    assert C.TABLE_REFERENCES[C.VG].of(label) == reference == C.TABLE_REFERENCES[C.GATES].of(label)


def test_vg_grid_tables_show_the_measured_gamma_of_the_first_and_last_epoch(tmp_path):
    def cell(label, seed, gammas):
        stats = [{"epoch": i + 1, "vg": {"gamma_mean": {"y1": g, "y2": g + 0.02}}} for i, g in enumerate(gammas)]
        return {"label": label, "dataset_label": "corr0", "seed": seed, "epoch_stats": stats}

    rows = [_row(m, t, [0.02, 0.021, 0.019, 0.02, 0.022], dataset="corr0", metric="mse")
            for m in ("mmoe-no_vg@sgd", "mmoe-add_sqrt-pearson@sgd") for t in ("y1", "y2")]  # fmt: skip
    cells = [cell("mmoe-no_vg@sgd", s, [1.8, 1.7, 1.6]) for s in (0, 1)]
    cells += [cell("mmoe-add_sqrt-pearson@sgd", 0, [1.5, 1.2]), cell("mmoe-add_sqrt-pearson@sgd", 1, [1.7, 1.4])]
    payload = {**_payload(rows, 20), "cells": cells, "baseline": "mmoe-no_vg@adam"}
    table = C.grid_table(_written_grid(tmp_path, C.GATES, payload), "corr0")
    assert "| y1 Δ vs no VG (p) | y2 Δ vs no VG (p) | Γ mean, epoch 1 → last |" in table
    assert "| mmoe-no_vg@sgd | – | 0.0204 ± 0.0011 | 0.0204 ± 0.0011 | – | – | 1.81 → 1.61 |" in table
    assert "| +0.0000 (1.000) | +0.0000 (1.000) | 1.61 → 1.31 |" in table  # equal values: no difference


def test_a_single_finished_seed_shows_no_spread():
    assert C._mean_std([0.8152]) == "0.8152 (1 seed)"
    assert C._mean_std([0.81, 0.83]) == "0.8200 ± 0.0141"
