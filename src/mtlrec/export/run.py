"""Export a trained run folder: the graph, its ``preprocess.json`` and the parity check against eager PyTorch."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.data.preprocess import EncodedData
from mtlrec.errors import UserError, unknown_name
from mtlrec.export import contract
from mtlrec.export.exporters import SUFFIXES, eager_runner, export_module, load_runner, max_abs_diff
from mtlrec.export.graph import InferenceModule, encoded_inputs, input_specs, output_specs
from mtlrec.export.reduced import accuracy, mean_abs_diff, within
from mtlrec.export.reduced import tolerance as precision_tolerance

TOLERANCE = 1e-5


class ParityError(Exception):
    """The exported graph's scores differ from eager PyTorch by more than the tolerance (exit status 1)."""

    exit_code = 1


def load_run_model(run_dir: str | Path, checkpoint: str = "best"):
    """``(model, info)`` of a run folder, with user-facing errors for a wrong folder or checkpoint name."""
    from mtlrec.experiment import load_run

    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be best or last, got {checkpoint!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise UserError(f"{run_dir}: not a run folder (no run.json); give a folder written by `mtlrec train`")
    if not (run_dir / f"{checkpoint}.pt").exists():
        raise UserError(f"{run_dir}: no {checkpoint}.pt checkpoint in the run folder")
    return load_run(run_dir, checkpoint)


def with_fused_table(model):  # noqa: ANN001, ANN201 - a MultiTaskModel
    """``model`` with a TorchRec backend's tables (any run, also one trained sharded over several processes) put in
    the one fused table holding the same rows, whose lookups trace into ONNX, TorchScript and torch.export graphs
    (TorchRec's jagged ones do not); other models as they are."""
    from mtlrec.layers.torchrec_embedding import TorchRecEmbedding

    if isinstance(getattr(model, "embedding", None), TorchRecEmbedding):
        model.embedding = model.embedding.to_fused()
    return model


def run_split(info: dict[str, Any], split: str) -> EncodedData:
    """A split of the run's data set, reloaded as ``mtlrec evaluate`` does (from the run's recorded load params)."""
    from mtlrec.data.datasets import load_dataset

    meta = info.get("data_meta") or {}
    name, params = meta.get("dataset_name") or info.get("dataset"), meta.get("load_params")
    if params is None:
        raise UserError(f"this run does not record how to reload its data set {name!r} (no data_meta.load_params)")
    bundle = load_dataset(name, **params)
    if split not in bundle.splits:
        raise unknown_name("split", split, bundle.splits, where="--split")
    return bundle.splits[split]


def parity(module: InferenceModule, runner, data: EncodedData, rows: int = 2048) -> float:
    """Max abs difference between ``runner`` and eager PyTorch on the first ``rows`` rows of ``data`` (and on a
    one-row batch, so a batch dimension frozen at export time cannot pass)."""
    return parity_report(module, runner, data, rows)["max_abs_diff"]


def parity_report(module: InferenceModule, runner, data: EncodedData, rows: int = 2048) -> dict[str, float]:
    """:func:`parity`'s ``max_abs_diff``, and ``auc_diff`` (:func:`mtlrec.export.reduced.accuracy`: the largest
    |AUC difference| of a binary task on the labelled rows) where the rows allow it."""
    n = min(rows, len(data))
    if n == 0:
        raise UserError("the parity check needs rows, but the validation split is empty")
    eager = eager_runner(module)
    worst, report = 0.0, {}
    for sl in (slice(0, n), slice(0, 1)):
        feeds = encoded_inputs(data, sl)
        ref, got = eager(feeds), runner(feeds)
        worst = max(worst, max_abs_diff(ref, got))
        if sl.stop == n:
            binary = [t.name for t in module.model.tasks if t.type == "binary"]
            report = {"mean_abs_diff": mean_abs_diff(ref, got), **accuracy(ref, got, data, sl, binary)}
    return {"max_abs_diff": worst, **report}


def describe(module: InferenceModule, info: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The ``preprocess.json`` document of a run's exported module."""
    return contract.build(
        info["preprocessor"],
        module.layout,
        input_specs(module.layout),
        output_specs(module.model),
        [_task_dict(t) for t in module.model.tasks],
        extra,
    )


def _task_dict(t) -> dict[str, Any]:
    d = asdict(t)
    return {k: d[k] for k in ("name", "type", "label", "mask")}


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    *,
    checkpoint: str = "best",
    parity_rows: int = 2048,
    tolerance: float | None = None,
    data: EncodedData | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Export a run to ``out`` in ``precision`` (``fp32``; ``bf16`` for the torch formats, ``int8`` for ONNX, see
    :mod:`mtlrec.export.reduced`) and write ``preprocess.json`` beside it, after the parity check passed on rows
    of the run's validation split (or ``data``): max abs difference from fp32 eager PyTorch within ``tolerance``
    (default: the precision's, 1e-5 for fp32) and, in reduced precision, the AUC difference of every binary task
    within the precision's. Raises :class:`ParityError` when it did not (nothing is written).
    Returns a report: ``path``, ``preprocess``, ``max_abs_diff``, ``auc_diff`` (reduced precision), ``rows``,
    ``exporter``, ``precision``."""
    model, info = load_run_model(run_dir, checkpoint)
    model = with_fused_table(model)
    out = Path(out)
    if out.suffix != SUFFIXES.get(fmt, out.suffix):
        raise UserError(f"--out {out}: a {fmt} export is written to a {SUFFIXES[fmt]} file")
    module = InferenceModule(model)
    if data is None:
        data = run_split(info, "valid")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")  # exporters key on the suffix
    tol = precision_tolerance(precision)
    if tolerance is not None:
        tol["max_abs_diff"] = tolerance
    try:
        used = export_module(module, fmt, tmp, info["model"], precision=precision)
        names = [s.name for s in output_specs(model)]
        report = parity_report(module, load_runner(fmt, tmp, names), data, parity_rows)
        n = min(parity_rows, len(data))
        failed = within(report, tol)
        if failed:
            what = fmt if precision == "fp32" else f"{precision} {fmt}"
            raise ParityError(
                f"parity check failed: {what} export of {info['model']} differs from eager PyTorch (fp32) by "
                f"{failed} on {n} validation rows; nothing written"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    used.setdefault("precision", precision)
    extra = {
        "model": info["model"],
        "run": str(Path(run_dir)),
        "checkpoint": checkpoint,
        "artifact": {"format": fmt, "file": out.name, **used},
        "parity": {
            **report,
            "rows": n,
            "tolerance": tol["max_abs_diff"],
            **({"auc_tolerance": tol["auc_diff"]} if "auc_diff" in tol else {}),
            "split": "valid",
            "reference": "eager PyTorch, fp32",
        },
    }
    doc = describe(module, info, extra)
    pre = out.parent / "preprocess.json"
    pre.write_text(json.dumps(doc, indent=1, default=_json_default))
    return {"path": str(out), "preprocess": str(pre), **report, "rows": n, **used}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
