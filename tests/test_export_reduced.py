"""Reduced-precision export and scoring: int8 ONNX, bf16 TorchScript / torch.export, the torch.compile engine;
parity within each precision's tolerance, one-line errors for combinations that are not offered."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import mtlrec.export.reduced as reduced
from mtlrec.cli import app
from mtlrec.data.bundle import encode_tables
from mtlrec.errors import UserError
from mtlrec.experiment import seed_everything
from mtlrec.export.exporters import export_module, load_runner
from mtlrec.export.graph import InferenceModule, output_specs
from mtlrec.export.reduced import TOLERANCES, within
from mtlrec.export.run import parity_report
from mtlrec.export.scoring import predict_file, predict_split
from mtlrec.models.registry import create_model
from tests.conftest import make_table, tiny_schema

needs_bf16 = pytest.mark.skipif(not reduced.bf16_native(), reason="this CPU has neither avx512_bf16 nor AMX")


@pytest.fixture(scope="module")
def bundle():
    full = make_table(700, seed=4)
    tables = {"train": full.slice(0, 300), "valid": full.slice(300, 300), "test": full.slice(600, 100)}
    return encode_tables("tiny", tiny_schema(with_regression=True), tables, {"seed": 0})


@pytest.fixture(scope="module", params=["mmoe", "esmm"])
def module(request, bundle):
    seed_everything(0)
    model = create_model(request.param, bundle, embedding_dim=8, tower_hidden=[16])
    with torch.no_grad():  # spread the scores as training would (an untrained model's are all ~0.5, so the AUC
        for p in model.parameters():  # of its near-ties moves with any rounding)
            p.mul_(3.0)
    return InferenceModule(model.eval())


def _check(module, bundle, fmt, precision, path):
    used = export_module(module, fmt, path, "m", precision=precision)
    assert used["precision"] == precision
    names = [s.name for s in output_specs(module.model)]
    runner = load_runner(fmt, path, names)
    rep = parity_report(module, runner, bundle.valid, rows=300)
    # the AUC bound is for a trained model (test_export_command_quantize_int8): on random weights and labels a
    # few hundred near-tied rows swap places under any rounding
    tol = {k: v for k, v in TOLERANCES[precision].items() if k != "auc_diff"}
    assert within(rep, tol) is None, rep
    assert rep["max_abs_diff"] > 0  # really computed in less precision
    out = runner({k: v[:5] for k, v in _feeds(bundle).items()})
    assert list(out) == names and all(v.dtype == np.float32 and v.shape == (5,) for v in out.values())
    return used, rep


def _feeds(bundle):
    from mtlrec.export.graph import encoded_inputs

    return encoded_inputs(bundle.valid)


def test_int8_onnx_within_tolerance(module, bundle, tmp_path):
    used, rep = _check(module, bundle, "onnx", "int8", tmp_path / "m.onnx")
    assert used["quantization"]["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert "mean_abs_diff" in rep and "auc_diff" not in rep  # 300 rows: fewer than MIN_AUC_ROWS
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    assert not list(tmp_path.glob(".*"))  # the fp32 intermediate is gone


@needs_bf16
@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".pt"), ("torch_export", ".pt2")])
def test_bf16_torch_formats_within_tolerance(module, bundle, tmp_path, fmt, suffix):
    _check(module, bundle, fmt, "bf16", tmp_path / f"m{suffix}")
    if fmt == "torchscript":  # the bf16 weights alone are saved, not the fp32 model beside them
        floats = [
            v.dtype for v in torch.jit.load(str(tmp_path / "m.pt")).state_dict().values() if v.is_floating_point()
        ]
        assert floats and set(floats) == {torch.bfloat16}


@pytest.mark.parametrize(
    "fmt,precision,match",
    [
        ("onnx", "bf16", "--precision bf16 is not offered by --format onnx .*no bf16 kernels"),
        ("torchscript", "int8", "--precision int8 is not offered by --format torchscript .*use --format onnx"),
        ("onnx", "fp8", "--precision must be one of fp32, bf16, int8, got 'fp8'"),
    ],
)
def test_unsupported_combinations(module, tmp_path, fmt, precision, match):
    with pytest.raises(UserError, match=match):
        export_module(module, fmt, tmp_path / "m", "m", precision=precision)


def test_bf16_refused_without_native_bf16(module, tmp_path, monkeypatch):
    monkeypatch.setattr(reduced, "bf16_native", lambda: False)
    with pytest.raises(UserError, match="neither avx512_bf16 nor AMX"):
        export_module(module, "torchscript", tmp_path / "m.pt", "m", precision="bf16")


# ---- the commands on a trained run -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.test_predict import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("reduced"))


def test_export_command_quantize_int8(run_dir, tmp_path):
    out = tmp_path / "m.int8.onnx"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--format", "onnx", "--quantize", "int8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "int8" in res.output and "mean abs diff" in res.output
    doc = json.loads((tmp_path / "preprocess.json").read_text())
    assert doc["artifact"]["precision"] == "int8"
    assert doc["parity"]["tolerance"] == TOLERANCES["int8"]["max_abs_diff"]
    assert doc["parity"]["auc_tolerance"] == TOLERANCES["int8"]["auc_diff"]
    assert "auc_diff" not in doc["parity"]  # 82 validation rows: too few for an AUC comparison


def test_export_command_bad_quantize(run_dir, tmp_path):
    res = CliRunner().invoke(
        app, ["export", str(run_dir), "--format", "torchscript", "--quantize", "int8", "--out", str(tmp_path / "m.pt")]
    )
    assert isinstance(res.exception, UserError) or res.exit_code == 2
    assert "not offered by --format torchscript" in (str(res.exception) + res.output)


def test_predict_int8_engine(run_dir, tmp_path):
    ref = predict_split(run_dir, "valid", tmp_path / "a.parquet")
    rep = predict_split(run_dir, "valid", tmp_path / "b.parquet", engine="onnx", precision="int8", batch_rows=64)
    assert rep["precision"] == "int8" and (run_dir / "export" / "best.int8.onnx").exists()
    assert within(rep["parity"], TOLERANCES["int8"]) is None
    a, b = pq.read_table(ref["out"]), pq.read_table(rep["out"])
    assert np.abs(a.column("score_click").to_numpy() - b.column("score_click").to_numpy()).mean() <= 0.01
    with pytest.raises(UserError, match="--precision bf16 is not offered by --engine onnx"):
        predict_split(run_dir, "valid", tmp_path / "c.parquet", engine="onnx", precision="bf16")


def test_predict_bf16_and_compile_engines(run_dir, tmp_path):
    rows = make_table(150, seed=5).drop_columns(["click", "purchase", "rating"])
    src = tmp_path / "rows.parquet"
    pq.write_table(rows, src)
    ref = pq.read_table(predict_file(run_dir, src, tmp_path / "a.parquet")["out"])
    precision = "bf16" if reduced.bf16_native() else "fp32"
    runs = [("compile", precision)] + ([("torch", "bf16")] if precision == "bf16" else [])
    for engine, prec in runs:
        # batch 64: the last batch (22 rows) is padded to the compiled size, not compiled again
        rep = predict_file(run_dir, src, tmp_path / f"{engine}.parquet", engine=engine, precision=prec, batch_rows=64)
        got = pq.read_table(rep["out"])
        assert rep["rows"] == 150 and rep["precision"] == prec and rep["parity"]
        assert within(rep["parity"], TOLERANCES[prec]) is None
        d = np.abs(ref.column("score_click").to_numpy() - got.column("score_click").to_numpy())
        assert d.max() <= TOLERANCES[prec]["max_abs_diff"]
    with pytest.raises(UserError, match="--precision int8 is not offered by --engine compile"):
        predict_file(run_dir, src, tmp_path / "x.parquet", engine="compile", precision="int8")


def test_auc_check_needs_enough_labelled_rows(bundle):
    from mtlrec.export.reduced import MIN_AUC_ROWS, accuracy

    data = bundle.valid
    n = len(data)
    rng = np.random.default_rng(0)
    ref = {"click": rng.random(n).astype(np.float32)}
    worse = {"click": np.where(rng.random(n) < 0.5, ref["click"], rng.random(n)).astype(np.float32)}
    assert accuracy(ref, worse, data, slice(0, n), ["click"]) == {}  # 300 rows < MIN_AUC_ROWS: no AUC figure
    big = type(data)(
        cat=np.tile(data.cat, (10, 1)),
        num=np.tile(data.num, (10, 1)),
        multi={k: np.tile(v, (10, 1)) for k, v in data.multi.items()},
        labels=np.tile(data.labels, (10, 1)),
        masks=np.tile(data.masks, (10, 1)),
        layout=data.layout,
        task_names=data.task_names,
    )
    assert 10 * n >= MIN_AUC_ROWS
    ref = {"click": rng.random(10 * n).astype(np.float32)}
    assert accuracy(ref, ref, big, slice(0, 10 * n), ["click"]) == {"auc_diff": 0.0}
    noisy = {"click": ref["click"] + rng.normal(0, 0.3, 10 * n).astype(np.float32)}
    assert accuracy(ref, noisy, big, slice(0, 10 * n), ["click"])["auc_diff"] > 0.002


# ---- the inference form of the experts (one GEMM chain per expert without autograd) ----------------------------
def test_experts_each_matches_forward():
    from mtlrec.layers.experts import BatchedExperts
    from mtlrec.layers.gates import mix, mix_each

    torch.manual_seed(0)
    ex = BatchedExperts(3, 7, [5, 4])
    x, w = torch.randn(6, 7), torch.softmax(torch.randn(6, 3), -1)
    stacked, each = ex(x), ex.each(x)
    assert len(each) == 3 and all(e.is_contiguous() and e.shape == (6, 4) for e in each)
    torch.testing.assert_close(torch.stack(each), stacked, rtol=0, atol=1e-6)
    torch.testing.assert_close(mix_each(w, each), mix(w, stacked), rtol=0, atol=1e-6)


def test_mmoe_inference_form_equals_training_form(bundle):
    from mtlrec.export.graph import encoded_inputs, to_batch
    from mtlrec.layers.experts import use_inference_form

    seed_everything(0)
    model = create_model("mmoe", bundle, embedding_dim=8, tower_hidden=[16]).eval()
    assert not model.experts.inference_form  # the trainer's evaluation keeps the one-GEMM form
    inputs = tuple(torch.from_numpy(v) for v in encoded_inputs(bundle.valid).values())
    batch = to_batch(model.layout, len(model.task_names), inputs)
    with torch.no_grad():
        training_form = model(batch).logits
        use_inference_form(model)
        inference_form = model(batch).logits
        with torch.enable_grad():  # with autograd the one-GEMM form again
            torch.testing.assert_close(model(batch).logits["click"].detach(), training_form["click"], rtol=0, atol=0)
    for t in training_form:
        torch.testing.assert_close(inference_form[t], training_form[t], rtol=0, atol=1e-5)
    assert InferenceModule(create_model("mmoe", bundle, embedding_dim=8)).model.experts.inference_form
