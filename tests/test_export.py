"""Export: every registered model to ONNX and TorchScript with a parity check, preprocess.json, the command."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from mtlrec.data.bundle import encode_tables
from mtlrec.errors import UserError
from mtlrec.experiment import seed_everything
from mtlrec.export.exporters import ExportUnsupported, eager_runner, export_module, load_runner
from mtlrec.export.graph import InferenceModule, encoded_inputs, output_specs
from mtlrec.export.run import parity
from mtlrec.models.registry import create_model, list_models
from tests.conftest import make_table, tiny_schema

SMALL = {"embedding_dim": 4, "tower_hidden": [8]}
# models whose graph a format cannot express, with the reason the error must name
UNSUPPORTED = {
    ("memonet", "onnx"): "float32 bits",
    ("memonet", "torchscript"): "float32 bits",
    ("dtn", "onnx"): "float32 bits",
    ("dtn", "torchscript"): "float32 bits",
}


@pytest.fixture(scope="module")
def bundle():
    full = make_table(500, seed=3)
    tables = {"train": full.slice(0, 300), "valid": full.slice(300, 100), "test": full.slice(400, 100)}
    return encode_tables("tiny", tiny_schema(with_regression=True), tables, {"seed": 0})


_MODELS: dict[str, InferenceModule] = {}


def module_for(name: str, bundle) -> InferenceModule:
    if name not in _MODELS:
        seed_everything(0)
        try:
            model = create_model(name, bundle, **SMALL)
        except ValueError:  # AITM: binary tasks only (same features and layout, without the regression task)
            model = create_model(name, bundle.layout, bundle.tasks[:2], **SMALL)
        with torch.no_grad():  # random heads and biases: make the scores spread, not all ~0.5
            for p in model.parameters():
                p.mul_(3.0)
        _MODELS[name] = InferenceModule(model.eval())
    return _MODELS[name]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_with_parity(name, fmt, bundle, tmp_path):
    module = module_for(name, bundle)
    path = tmp_path / f"m.{fmt}"
    if (name, fmt) in UNSUPPORTED:
        with pytest.raises(
            ExportUnsupported, match=rf"model '{name}' cannot be exported to {fmt}: .*" + UNSUPPORTED[(name, fmt)]
        ):
            export_module(module, fmt, path, name)
        return
    export_module(module, fmt, path, name)
    names = [s.name for s in output_specs(module.model)]
    runner = load_runner(fmt, path, names)
    assert parity(module, runner, bundle.valid, rows=100) <= 1e-5
    out = runner(encoded_inputs(bundle.valid, slice(0, 7)))  # another batch size than the export example
    assert list(out) == names and all(v.shape == (7,) for v in out.values())
    if name == "esmm":
        assert names == ["click", "purchase", "rating", "ctcvr"]
        np.testing.assert_allclose(out["ctcvr"], out["click"] * out["purchase"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["mmoe", "esmm", "memonet"])
def test_torch_export_format(name, bundle, tmp_path):
    module = module_for(name, bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_module(module, "torch_export", tmp_path / "m.pt2", name)
    runner = load_runner("torch_export", tmp_path / "m.pt2", [s.name for s in output_specs(module.model)])
    assert parity(module, runner, bundle.valid, rows=100) <= 1e-5


def test_onnx_output_names_are_task_names(bundle, tmp_path):
    import onnx

    export_module(module_for("mmoe", bundle), "onnx", tmp_path / "m.onnx", "mmoe")
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [o.name for o in g.output] == ["click", "purchase", "rating"]
    assert [i.name for i in g.input] == ["categorical_ids", "numeric_values", "multi_ids__genres"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param  # a named dynamic batch dimension


def test_unknown_format(bundle, tmp_path):
    with pytest.raises(UserError, match="--format must be one of onnx, torchscript, torch_export"):
        export_module(module_for("mmoe", bundle), "tflite", tmp_path / "m.x", "mmoe")


def test_eager_runner_matches_predict(bundle):
    from mtlrec.train.trainer import predict

    module = module_for("ple", bundle)
    got = eager_runner(module)(encoded_inputs(bundle.valid))
    ref = predict(module.model, bundle.valid)
    for t in ref:
        np.testing.assert_allclose(got[t], ref[t], rtol=0, atol=1e-6)


# ---- the command on a trained run folder ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained by `mtlrec train` on the files data set (so the data set can be reloaded)."""
    from tests.test_predict import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("exp"))


def test_export_command_onnx(run_dir, tmp_path):
    from typer.testing import CliRunner

    from mtlrec.cli import app

    res = CliRunner().invoke(app, ["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "max abs diff" in res.output and "validation rows" in res.output
    doc = json.loads((tmp_path / "preprocess.json").read_text())
    assert doc["format"] == "mtlrec.preprocess" and doc["artifact"]["format"] == "onnx"
    assert [o["name"] for o in doc["outputs"]] == ["click", "purchase"]
    assert doc["parity"]["max_abs_diff"] <= 1e-5
    kinds = {f["name"]: f for f in doc["features"]}
    assert kinds["user"]["encoding"] == "vocabulary" and kinds["user"]["vocabulary"]
    assert kinds["price"]["transform"] == "log" and {"shift", "mean", "std", "fill"} <= set(kinds["price"])


def test_export_command_parity_failure_exits_1(run_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import mtlrec.export.run as run_mod
    from mtlrec.cli import app

    monkeypatch.setattr(run_mod, "max_abs_diff", lambda a, b: 0.25)
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--format", "torchscript", "--out", str(out)])
    assert res.exit_code == 1
    assert "parity check failed" in res.output and "0.25 > 1e-05" in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_command_errors(run_dir, tmp_path):
    from typer.testing import CliRunner

    from mtlrec.cli import app

    res = CliRunner().invoke(app, ["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert "not a run folder" in user_error(res)
    res = CliRunner().invoke(app, ["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.pt")])
    assert "a onnx export is written to a .onnx file" in user_error(res)


def user_error(res) -> str:
    """The one-line message of a UserError the command raised (exit 2 once main() prints it, or the exception)."""
    if isinstance(res.exception, UserError):
        return str(res.exception)
    assert res.exit_code == 2, res.output
    return res.output


# ---- preprocess.json is enough to encode raw rows (an independent, plain-Python reading of docs/export.md) ------
def _encode_row_by_contract(doc: dict, row: dict) -> dict[str, list]:
    import math

    feeds = {i["name"]: [0.0 if i["dtype"] == "float32" else 0] * (i["shape"][1]) for i in doc["inputs"]}
    for f in doc["features"]:
        v = row.get(f["column"])
        if f["kind"] == "categorical":
            index = {t: j + 1 for j, t in enumerate(f["vocabulary"])}
            feeds[f["input"]][f["position"]] = 0 if v is None else index.get(str(v), 0)
        elif f["kind"] == "multi_valued":
            index = {t: j + 1 for j, t in enumerate(f["vocabulary"])}
            items = ("" if v is None else str(v)).split(f["separator"])
            ids = [index.get(t, 0) for t in items][: f["max_len"]]
            feeds[f["input"]] = ids + [0] * (f["max_len"] - len(ids))
        else:
            missing = v is None or not math.isfinite(v)
            x = f["fill"] if missing else float(v)
            if f["transform"] == "quantile":
                feeds[f["input"]][f["position"]] = 0 if missing else 1 + sum(b <= x for b in f["boundaries"])
                continue
            if f["transform"] == "log":
                x = math.log1p(max(x - f["shift"], 0.0))
            if f["transform"] != "none":
                x = (x - f["mean"]) / f["std"]
            feeds[f["input"]][f["position"]] = x
            if "missing_indicator" in f:
                feeds[f["input"]][f["missing_indicator"]["position"]] = 1.0 if missing else 0.0
    return feeds


def test_preprocess_json_alone_reproduces_predict(run_dir, tmp_path):
    import onnxruntime as ort
    import pyarrow.parquet as pq

    from mtlrec.export.run import export_run
    from mtlrec.export.scoring import predict_file

    raw = make_table(200, seed=11).drop_columns(["click", "purchase", "rating"])
    pq.write_table(raw, tmp_path / "rows.parquet")
    predict_file(run_dir, tmp_path / "rows.parquet", tmp_path / "scores.parquet")
    export_run(run_dir, "onnx", tmp_path / "m.onnx")
    doc = json.loads((tmp_path / "preprocess.json").read_text())
    rows = [_encode_row_by_contract(doc, r) for r in raw.to_pylist()]
    dtypes = {i["name"]: np.int64 if i["dtype"] == "int64" else np.float32 for i in doc["inputs"]}
    feeds = {name: np.array([r[name] for r in rows], dtype=dt) for name, dt in dtypes.items()}
    sess = ort.InferenceSession(str(tmp_path / doc["artifact"]["file"]), providers=["CPUExecutionProvider"])
    names = [o["name"] for o in doc["outputs"]]
    got = dict(zip(names, sess.run(names, feeds), strict=True))
    want = pq.read_table(tmp_path / "scores.parquet")
    for n in names:
        assert np.abs(got[n] - want.column(f"score_{n}").to_numpy()).max() <= 1e-5


def test_hash_spec_matches_the_encoder():
    import pyarrow as pa

    from mtlrec.data.preprocess import hash_strings
    from mtlrec.export.contract import HASH_SPEC

    values = ["a", "user_42", "", "7", None]  # ASCII: hash_strings cannot encode other text yet
    buckets = 97

    def fnv(text: str) -> int:
        h = HASH_SPEC["offset_basis"]
        for byte in text.encode():
            if byte:
                h = ((h ^ byte) * HASH_SPEC["prime"]) % 2**64
        return 1 + h % buckets

    expected = [fnv("None" if v is None else v) for v in values]
    assert hash_strings(pa.chunked_array([pa.array(values, pa.string())]), buckets).tolist() == expected
