"""Write an :class:`~mtlrec.export.graph.InferenceModule` in one of three formats, load it back, compare it.

* ``onnx``: ``torch.onnx.export``. The TorchScript-based exporter (``dynamo=False``) is tried first: it exports
  30 of the 32 registered models in about a second each, where the dynamo exporter takes 5-15 s per model (and
  fails on the same two, MemoNet and DTN). Two operators get ONNX definitions here for it: ``aten::logaddexp``
  (ESMM's CTCVR in log space) and ``aten::layer_norm`` over a shape traced from the input (MaskNet). The dynamo
  exporter (``torch.export`` + onnxscript) remains the fallback for any other operator the older one lacks.
  Loaded with onnxruntime.
* ``torchscript``: ``torch.jit.trace`` of the eval-mode graph (``torch.jit.script`` cannot compile the models'
  dataclass batches), loaded with ``torch.jit.load``.
* ``torch_export``: ``torch.export.export`` with a dynamic batch dimension, ``torch.export.save`` / ``load``.

A format that cannot express a model raises :class:`ExportUnsupported` (a ``UserError``) naming the model, the
format and the reason.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mtlrec.errors import UserError
from mtlrec.export.graph import InferenceModule, example_inputs, input_specs, output_specs
from mtlrec.export.reduced import FORMAT_PRECISIONS, cast, check_precision, quantize_onnx

FORMATS = ("onnx", "torchscript", "torch_export")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
ONNX_OPSET = 18

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class ExportUnsupported(UserError):
    """The model cannot be written in the asked format; the message names the model, the format and why."""


# known exporter failures → the reason shown to the user
_REASONS = (
    (
        re.compile(r"aten::view.*isn't a special case|view\.dtype|bitcast", re.I | re.S),
        "it reinterprets float32 bits as int32 (Tensor.view(torch.int32), MemoNet's hash of numeric values), "
        "which torch.jit.trace and ONNX cannot express; use --format torch_export, or train with "
        "numeric_mode: dense",
    ),
)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for pattern, reason in _REASONS:
        if pattern.search(text):
            return reason
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return f"the exporter failed: {first[:300]}"


def _quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _batch_dims(module: InferenceModule):
    batch = torch.export.Dim("batch", min=1)
    return (tuple({0: batch} for _ in input_specs(module.layout)),)


def export_module(
    module: InferenceModule, fmt: str, path: str | Path, model_name: str = "model", precision: str = "fp32"
) -> dict:
    """Write ``module`` to ``path`` in ``fmt`` and ``precision`` (see :mod:`mtlrec.export.reduced`: ``bf16`` for
    the torch formats, ``int8`` for ONNX); returns what was used (``exporter``, ``opset``, ``precision``)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_precision(f"--format {fmt}", precision, FORMAT_PRECISIONS[fmt])
    path = Path(path)
    if precision == "int8":
        fp32 = path.with_name(f".{path.stem}.fp32{path.suffix}")
        try:
            used = export_module(module, fmt, fp32, model_name)
            used.update(quantize_onnx(fp32, path))
        finally:
            fp32.unlink(missing_ok=True)
        return {**used, "precision": precision}
    if precision != "fp32":
        return {**export_module(cast(module, precision), fmt, path, model_name), "precision": precision}
    example = example_inputs(module.layout, 3)
    module.eval()
    try:
        with _quiet(), torch.no_grad():
            if fmt == "torchscript":
                torch.jit.trace(module, example, check_trace=False).save(str(path))
                return {"exporter": "torch.jit.trace"}
            if fmt == "torch_export":
                ep = torch.export.export(module, example, dynamic_shapes=_batch_dims(module))
                torch.export.save(ep, str(path))
                return {"exporter": "torch.export"}
            return _export_onnx(module, example, path)
    except ExportUnsupported:
        raise
    except Exception as exc:  # noqa: BLE001 - every exporter failure becomes one clear line
        raise ExportUnsupported(f"model {model_name!r} cannot be exported to {fmt}: {_reason(exc)}") from exc


def _logaddexp_symbolic(g, a, b):
    """``logaddexp(a, b) = max(a, b) + log(1 + exp(-|a - b|))`` in ONNX operators (ESMM's CTCVR in log space)."""
    one = g.op("Constant", value_t=torch.tensor(1.0))
    tail = g.op("Log", g.op("Add", one, g.op("Exp", g.op("Neg", g.op("Abs", g.op("Sub", a, b))))))
    return g.op("Add", g.op("Max", a, b), tail)


def _layer_norm_symbolic(g, x, normalized_shape, weight, bias, eps, cudnn_enable):
    """``layer_norm`` over the last ``len(normalized_shape)`` axes, also when the shape list was traced from the
    input's own sizes (MaskNet's ``F.layer_norm(E, E.shape[-1:])``, which the built-in symbolic rejects)."""
    from torch.onnx import symbolic_helper as sh

    node = normalized_shape.node()
    if node.kind() == "prim::ListConstruct":
        n = len(list(node.inputs()))
    else:
        n = len(sh._maybe_get_const(normalized_shape, "is"))
    axes = g.op("Constant", value_t=torch.arange(-n, 0, dtype=torch.int64))
    eps = sh._maybe_get_const(eps, "f")
    mean = g.op("ReduceMean", x, axes, keepdims_i=1)
    centred = g.op("Sub", x, mean)
    var = g.op("ReduceMean", g.op("Mul", centred, centred), axes, keepdims_i=1)
    std = g.op("Sqrt", g.op("Add", var, g.op("Constant", value_t=torch.tensor(float(eps)))))
    y = g.op("Div", centred, std)
    if not sh._is_none(weight):
        y = g.op("Mul", y, weight)
    if not sh._is_none(bias):
        y = g.op("Add", y, bias)
    return y


_SYMBOLICS_REGISTERED = False


def _register_symbolics() -> None:
    global _SYMBOLICS_REGISTERED
    if not _SYMBOLICS_REGISTERED:
        torch.onnx.register_custom_op_symbolic("aten::logaddexp", _logaddexp_symbolic, ONNX_OPSET)
        torch.onnx.register_custom_op_symbolic("aten::layer_norm", _layer_norm_symbolic, ONNX_OPSET)
        _SYMBOLICS_REGISTERED = True


def _export_onnx(module: InferenceModule, example: tuple, path: Path) -> dict:
    _register_symbolics()
    ins = [s.name for s in input_specs(module.layout)]
    outs = [s.name for s in output_specs(module.model)]
    axes = {n: {0: "batch"} for n in ins + outs}
    try:
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=ins,
            output_names=outs,
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
        return {"exporter": "torch.onnx.export (TorchScript-based)", "opset": ONNX_OPSET}
    except Exception as first:  # noqa: BLE001 - fall back to the dynamo exporter
        if not _reason(first).startswith("the exporter failed"):
            raise  # a known limit of the graph itself: the dynamo exporter fails on it too, only slower
        try:
            prog = torch.onnx.export(
                module,
                example,
                input_names=ins,
                output_names=outs,
                dynamic_shapes=_batch_dims(module),
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
            prog.save(str(path))
        except Exception as second:  # noqa: BLE001
            raise second from first
        return {"exporter": "torch.onnx.export (dynamo)", "opset": ONNX_OPSET}


def load_runner(
    fmt: str, path: str | Path, output_names: list[str], *, threads: int | None = None, device: str = "cpu"
) -> Runner:
    """A function ``feeds (input name -> numpy) -> outputs (output name -> numpy)`` running the exported file."""
    path = str(path)
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        sess = ort.InferenceSession(path, opts, providers=providers)
        in_names = [i.name for i in sess.get_inputs()]

        def run_onnx(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outs = sess.run(output_names, {k: feeds[k] for k in in_names})
            return dict(zip(output_names, outs, strict=True))

        return run_onnx
    if fmt == "torchscript":
        mod = torch.jit.load(path, map_location=device)
    elif fmt == "torch_export":
        mod = torch.export.load(path).module()
    else:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return _torch_runner(mod, output_names, device)


def eager_runner(module: InferenceModule, device: str = "cpu") -> Runner:
    """The eager PyTorch module behind the same feeds/outputs interface."""
    return _torch_runner(module.to(device), [s.name for s in output_specs(module.model)], device)


def compiled_runner(module: InferenceModule, precision: str = "fp32", device: str = "cpu") -> Runner:
    """``torch.compile`` (inductor) of the module in ``precision`` (``bf16``: the weights cast once, see
    :mod:`mtlrec.export.reduced`), with inductor's ``freezing`` (weights folded into the graph as constants and
    prepacked for oneDNN: inference only). Compiled for one batch size, the first one seen: a smaller batch (the
    last of a file) is padded with rows of zeros and its scores cut back, so it does not compile again."""
    mod = cast(module, precision).to(device).eval()
    compiled = torch.compile(mod, dynamic=False, options={"freezing": True})
    names = [s.name for s in output_specs(module.model)]
    rows: list[int] = []

    def run_compiled(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ins = [torch.from_numpy(v).to(device) for v in feeds.values()]
        n = ins[0].shape[0]
        rows[:] = rows or [n]
        if n < rows[0]:
            ins = [torch.cat([x, x.new_zeros((rows[0] - n, *x.shape[1:]))]) for x in ins]
        with torch.inference_mode():
            out = compiled(*ins)
        return {k: o[:n].float().cpu().numpy() for k, o in zip(names, out, strict=True)}

    return run_compiled


def _torch_runner(mod: Callable, names: list[str], device: str) -> Runner:
    def run_torch(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ins = [torch.from_numpy(v).to(device) for v in feeds.values()]
        with torch.inference_mode():
            out = mod(*ins)
        return {n: o.float().cpu().numpy() for n, o in zip(names, out, strict=True)}

    return run_torch


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over every output (NaN/inf mismatches count as infinite)."""
    worst = 0.0
    for k in a:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        if x.shape != y.shape:
            return float("inf")
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        d = np.where(same, 0.0, np.abs(x - y))
        d = np.where(np.isnan(d), np.inf, d)
        worst = max(worst, float(d.max(initial=0.0)))
    return worst
