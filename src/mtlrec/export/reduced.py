"""Reduced-precision inference: bf16 weights for the torch engines, int8 dynamic quantization for onnxruntime.

fp32 cannot go much past the fp32 GEMM rate (MMoE's forward is about 2.3 MFLOP a row, almost all of it in the
experts' matrix products), so the fast engines compute in less precision:

* ``bf16`` (TorchScript, ``torch.export``, ``--engine torch`` / ``compile``): the whole module (weights and
  embedding tables) cast to bfloat16 once (:class:`CastModule`), so no per-operator casts happen at run time as
  under autocast; float inputs are cast to bf16 inside the graph and the scores come out as float32, so the graph's
  contract (inputs, outputs, dtypes) is the fp32 one. The logits are turned into probabilities in fp32
  (:class:`~mtlrec.export.graph.InferenceModule` upcasts them first). Offered only where the CPU has native bf16
  arithmetic (avx512_bf16 or AMX): elsewhere it is emulated and slower than fp32.
* ``int8`` (ONNX): ``onnxruntime.quantization.quantize_dynamic`` of the graph's ``MatMul`` / ``Gemm`` weights
  (signed int8, one scale per tensor; the activations are quantized per batch at run time, uint8), run by
  onnxruntime's integer kernels (VNNI where the CPU has it). The embedding tables stay fp32. On a CPU without
  VNNI the weights use 7 bits (``reduce_range``) so the integer products cannot saturate.

Reduced precision must not change results silently: every export and engine is checked against fp32 eager PyTorch
on real rows, with its own tolerance (:data:`TOLERANCES`): the largest absolute difference of the scores, and for
binary tasks the AUC difference on the labelled rows (:func:`accuracy`); reduced precisions also bound the mean
absolute difference.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlrec.data.preprocess import EncodedData
from mtlrec.errors import UserError

PRECISIONS = ("fp32", "bf16", "int8")

#: what each precision's scores may differ from fp32 eager PyTorch by: max abs difference of any score, and
#: (reduced precisions) the largest |AUC difference| of a binary task on the labelled check rows
#: (measured on a Census-Income MMoE, 49,881 validation rows: bf16 max 0.010, mean 2e-4, AUC 2.5e-5; int8 max 0.112,
#: mean 0.0035, AUC 1e-4: int8 quantizes each batch's activations with one scale, so rows far from the batch's
#: range lose most; the mean and the AUC are its real guard)
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-5},
    "bf16": {"max_abs_diff": 0.02, "mean_abs_diff": 0.002, "auc_diff": 0.002},
    "int8": {"max_abs_diff": 0.2, "mean_abs_diff": 0.01, "auc_diff": 0.002},
}

#: the precisions each export format (and scoring engine) offers
FORMAT_PRECISIONS = {
    "onnx": ("fp32", "int8"),
    "torchscript": ("fp32", "bf16"),
    "torch_export": ("fp32", "bf16"),
}


def bf16_native() -> bool:
    from mtlrec.train.precision import bf16_supported

    return bf16_supported()


def vnni_native() -> bool:
    from mtlrec.train.precision import cpu_flags

    return bool({"avx512_vnni", "amx_int8"} & set(cpu_flags())) or _avx_vnni()


def _avx_vnni() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx_vnni " in text


def check_precision(
    where: str, precision: str, allowed: tuple[str, ...], *, option: str = "--precision", device: str = "cpu"
) -> str:
    """``precision`` if ``where`` (a format or engine) offers it on this CPU (or CUDA ``device``), else a one-line
    :class:`UserError`."""
    if precision not in PRECISIONS:
        raise UserError(f"{option} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision not in allowed:
        hint = {
            "bf16": "onnxruntime's CPU provider has no bf16 kernels for these graphs; use int8 there, or bf16 with "
            "--format torchscript / --engine torch",
            "int8": "int8 is onnxruntime's dynamic quantization; use --format onnx / --engine onnx",
        }.get(precision, "")
        raise UserError(
            f"{option} {precision} is not offered by {where} (it offers {', '.join(allowed)})"
            + (f": {hint}" if hint else "")
        )
    if precision == "bf16" and device.startswith("cuda"):
        if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported():
            raise UserError(f"{option} bf16: this GPU (or this torch build) has no bf16 support; use fp32")
        return precision
    if precision == "bf16" and not bf16_native():
        raise UserError(
            f"{option} bf16: this CPU has neither avx512_bf16 nor AMX, so bf16 would be emulated and slower than "
            "fp32; use fp32 (or int8 with onnx)"
        )
    return precision


def tolerance(precision: str) -> dict[str, float]:
    return dict(TOLERANCES[precision])


class CastModule(nn.Module):
    """An :class:`~mtlrec.export.graph.InferenceModule` with every parameter and buffer cast to ``dtype`` once.

    Same contract as the module it wraps: float inputs are cast to ``dtype`` here, integer ids pass unchanged, and
    the scores come out as float32.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).to(dtype).eval()
        self.dtype = dtype
        self.layout = module.layout
        # the fp32 model, for its output names and tasks only: kept out of the module's state (not a submodule),
        # so an export holds the bf16 weights alone
        self.__dict__["model"] = module.model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ins = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        return tuple(o.float() for o in self.inner(*ins))


def cast(module: nn.Module, precision: str) -> nn.Module:
    """The module to run or export in ``precision`` (``fp32``: ``module`` itself; ``bf16``: a :class:`CastModule`)."""
    if precision == "bf16":
        return CastModule(module, torch.bfloat16)
    return module


def quantize_onnx(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the int8 dynamic quantization of the fp32 ONNX graph ``src`` to ``dst``; returns what was used."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce_range = not vnni_native()
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint at WARNING
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=reduce_range,
        )
    finally:
        logging.getLogger().setLevel(level)
    return {
        "quantization": {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "ops": ["MatMul", "Gemm"],
            "weights": "int8, one scale per tensor" + (", 7-bit range (no VNNI)" if reduce_range else ""),
            "activations": "uint8, quantized per batch at run time",
        }
    }


#: labelled rows a task needs before its AUC difference is checked (on fewer, one swapped pair of near-tied rows
#: moves the AUC by more than the tolerance)
MIN_AUC_ROWS = 1000


def accuracy(
    reference: dict[str, np.ndarray], got: dict[str, np.ndarray], data: EncodedData, rows: slice, binary: list[str]
) -> dict[str, float]:
    """``auc_diff``: the largest |AUC(got) - AUC(reference)| over the ``binary`` tasks on the labelled ``rows`` of
    ``data`` (tasks with fewer than :data:`MIN_AUC_ROWS` labelled rows, or one class only, are skipped); absent
    when no task could be scored."""
    from mtlrec.metrics import auc

    worst = None
    names = list(data.task_names)
    for t in binary:
        if t not in names:
            continue
        j = names.index(t)
        y, m = data.labels[rows, j], data.masks[rows, j] > 0
        y = y[m]
        if len(y) < MIN_AUC_ROWS or len(np.unique(y)) < 2:
            continue
        d = abs(auc(y, got[t][m]) - auc(y, reference[t][m]))
        worst = d if worst is None else max(worst, d)
    return {} if worst is None else {"auc_diff": float(worst)}


def mean_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The mean absolute difference over every output's scores (NaN where either is not finite)."""
    d = [np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).ravel() for k in a]
    return float(np.concatenate(d).mean()) if d else 0.0


def within(report: dict[str, float], tol: dict[str, float]) -> str | None:
    """``None`` when every figure of ``report`` is within ``tol``; else the first failure, as text."""
    for key, limit in tol.items():
        if key in report and not report[key] <= limit:
            label = {"max_abs_diff": "max abs", "mean_abs_diff": "mean abs", "auc_diff": "AUC difference"}[key]
            return f"{label} {report[key]:.3g} > {limit:g}"
    return None
