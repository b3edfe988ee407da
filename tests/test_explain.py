"""`mtlrec explain`: readable names, labelled plots, VG surfaces only with VG, a one-line answer for a model with
nothing to explain, and the permutation importance reachable from the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlrec.cli import app
from mtlrec.errors import UserError
from mtlrec.explain.gates import first_batch, gate_values, readable_name
from mtlrec.explain.report import explain_model, has_virtual_gradient
from mtlrec.models.registry import create_model
from mtlrec.seeding import seed_everything

SMALL = {"embedding_dim": 4, "tower_hidden": [8]}


def test_readable_structure_names(tiny_bundle):
    ple = create_model("ple", tiny_bundle, **SMALL, num_levels=2)
    assert readable_name(ple, "levels.1.task_gates.0") == "click: task gate, level 2"
    assert readable_name(ple, "levels.0.shared_gate") == "shared gate, level 1"
    ml = create_model("ml_mmoe", tiny_bundle, **SMALL)
    assert readable_name(ml, "gates.1.1") == "purchase: gate, level 2"
    phn = create_model("phn", tiny_bundle, embedding_dim=4)
    assert readable_name(phn, "blocks.0.ssg") == "click: ssg"
    mmoe = create_model("mmoe", tiny_bundle, **SMALL)
    gates = gate_values(mmoe, first_batch(tiny_bundle.test, 64))
    assert list(gates) == ["click: gate", "purchase: gate"]
    assert gates["click: gate"]["slots"][0] == "expert 1" and gates["click: gate"]["module"] == "gates.0"


def test_nothing_to_explain_writes_nothing(tiny_bundle, tmp_path):
    esmm = create_model("esmm", tiny_bundle, **SMALL)
    rep = explain_model(esmm, tiny_bundle.test, tmp_path / "esmm")
    assert rep["files"] == [] and "nothing to explain" in rep["nothing"]
    assert not (tmp_path / "esmm").exists()


def test_vg_is_recorded_where_attached(tiny_bundle):
    assert not has_virtual_gradient(create_model("mmoe", tiny_bundle, **SMALL))
    assert has_virtual_gradient(create_model("mmoe", tiny_bundle, **SMALL, virtual_gradient=True))
    dephn = create_model("dephn", tiny_bundle, embedding_dim=4, num_dnn_experts=2, dnn_hidden=[8])
    assert has_virtual_gradient(dephn)
    assert not has_virtual_gradient(create_model("dephn", tiny_bundle, embedding_dim=4, use_vg=False))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny training run each of MMoE (no VG) and ESMM, through the CLI."""
    root = tmp_path_factory.mktemp("explain")
    cfg = root / "exp.yaml"
    cfg.write_text(
        "name: tiny\n"
        "data: {name: synthetic, params: {n: 800, task_type: binary, dim: 4}}\n"
        "model_defaults: {embedding_dim: 4, tower_hidden: [8]}\n"
        "models: [{name: mmoe, params: {num_experts: 2, expert_hidden: [8]}}, {name: esmm}]\n"
        "train: {epochs: 1, batch_size: 256}\n"
        "seeds: [0]\n"
    )
    seed_everything(0)
    res = CliRunner().invoke(app, ["train", str(cfg), "--out", str(root / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    return root


def test_cli_explain_without_vg_and_with_importance(runs):
    out = runs / "mmoe_ex"
    args = ["explain", str(runs / "runs" / "mmoe" / "seed0"), "--out", str(out), "--importance"]
    res = CliRunner().invoke(app, [*args, "--repeats", "2", "--max-rows", "300"])
    assert res.exit_code == 0, res.output
    files = json.loads(res.output.strip().splitlines()[-1])["files"]
    assert "vg_surfaces.png" not in files and not (out / "vg_surfaces.json").exists()
    for f in ("gates.png", "explain.json", "importance.json", "importance.md", "importance.png"):
        assert f in files and (out / f).stat().st_size > 0, f
    imp = json.loads((out / "importance.json").read_text())
    assert 0 < imp["rows"] <= 300 and imp["n_repeats"] == 2 and len(imp["spearman"]) == 1
    assert "Spearman rank correlation" in (out / "importance.md").read_text()
    assert set(json.loads((out / "explain.json").read_text())["gates"]) == {
        f"{t}: gate" for t in json.loads((out / "explain.json").read_text())["tasks"]
    }


def test_cli_explain_esmm_says_nothing_to_explain(runs):
    out = runs / "esmm_ex"
    res = CliRunner().invoke(app, ["explain", str(runs / "runs" / "esmm" / "seed0"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().count("\n") == 0 and "nothing to explain" in res.output
    assert not (out / "explain.json").exists()


def test_cli_explain_needs_a_run_or_vg_only(tmp_path):
    res = CliRunner().invoke(app, ["explain", "--out", str(tmp_path / "bad")])
    assert res.exit_code != 0


def test_cli_explain_device(runs):
    run = str(runs / "runs" / "mmoe" / "seed0")
    res = CliRunner().invoke(app, ["explain", run, "--out", str(runs / "on_cpu"), "--device", "cpu", "--importance"])
    assert res.exit_code == 0, res.output
    assert "gates.png" in json.loads(res.output.strip().splitlines()[-1])["files"]
    res = CliRunner().invoke(app, ["explain", run, "--out", str(runs / "bad_device"), "--device", "tpu"])
    assert isinstance(res.exception, UserError)  # exit 2 with the line once main() prints it
    assert "--device: expected one of auto, cpu, cuda, cuda:N, got 'tpu'" in str(res.exception)
    assert not (runs / "bad_device").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cli_explain_on_cuda_gives_the_cpu_figures(runs):
    run = str(runs / "runs" / "mmoe" / "seed0")
    for dev in ("cpu", "cuda"):
        res = CliRunner().invoke(app, ["explain", run, "--out", str(runs / f"ex_{dev}"), "--device", dev])
        assert res.exit_code == 0, res.output
    gates = [json.loads((runs / f"ex_{d}" / "explain.json").read_text())["gates"] for d in ("cpu", "cuda")]
    for name, g in gates[0].items():
        assert np.allclose(g["values"], gates[1][name]["values"], atol=1e-5), name
