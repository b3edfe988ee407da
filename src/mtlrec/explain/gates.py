"""What a trained gated model learned: SSG gate values (DEPHN Fig. 3a), the public/private share of the logit
(Fig. 3b) and the learned expert-gate values per task. Functions return numpy arrays / dicts; nothing is plotted."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mtlrec.data.batches import Batch, BatchIterator
from mtlrec.layers.gates import Gate


def ssg_gate_values(model: nn.Module) -> dict[str, np.ndarray]:
    """``{structure: G (F, D)}`` for every soft-selection-gating module of ``model`` (prefixed by its module path
    when the model has several, e.g. one PHN per task)."""
    found = [(n, m) for n, m in model.named_modules() if hasattr(m, "gate_values") and hasattr(m, "structures")]
    out: dict[str, np.ndarray] = {}
    for name, m in found:
        with torch.no_grad():
            g = m.gate_values().detach().cpu().numpy()
        for i, s in enumerate(m.structures):
            out[s if len(found) == 1 else f"{name}/{s}"] = g[i]
    return out


def _batches(data: Any, batch_size: int, max_rows: int):
    seen = 0
    for batch in BatchIterator(data, batch_size):
        if seen >= max_rows:
            break
        yield batch
        seen += len(batch)


def logit_shares(model: nn.Module, data: Any, *, batch_size: int = 1024, max_rows: int = 20000) -> dict[str, Any]:
    """Fig. 3b: per task, the mean over rows of ``|logit_pub| / (|logit_pub| + |logit_pri|)`` (before the
    sigmoid, bias excluded), plus the mean absolute public and private parts. Needs ``model.logit_parts``."""
    if not hasattr(model, "logit_parts"):
        raise ValueError(f"{type(model).__name__} has no public/private logit split")
    model.eval()
    acc: dict[str, list[np.ndarray]] = {}
    for batch in _batches(data, batch_size, max_rows):
        for t, (pub, pri) in model.logit_parts(batch).items():
            acc.setdefault(t, []).append(torch.stack([pub.abs(), pri.abs()], 1).double().cpu().numpy())
    out = {}
    for t, chunks in acc.items():
        a = np.concatenate(chunks)
        total = a.sum(1)
        share = np.where(total > 0, a[:, 0] / np.where(total > 0, total, 1.0), 0.5)
        out[t] = {
            "public_share": float(share.mean()),
            "mean_abs_public": float(a[:, 0].mean()),
            "mean_abs_private": float(a[:, 1].mean()),
            "rows": int(len(a)),
        }
    return out


def gate_values(model: nn.Module, batch: Batch | None = None) -> dict[str, dict[str, Any]]:
    """Learned gate values per task.

    Models with ``gate_table`` (MT-PHN, DEPHN) give ``(public expert × mapping)`` tables; for other models every
    :class:`Gate` is read after an eval forward on ``batch`` and averaged over its rows."""
    model.eval()
    if hasattr(model, "gate_table"):
        table = model.gate_table(batch)
        return {
            t: {
                "values": v.detach().cpu().numpy(),
                "experts": list(model.expert_names),
                "mappings": list(model.mapping_names),
            }
            for t, v in table.items()
        }
    if batch is None:
        raise ValueError("reading input-dependent gates needs a batch")
    with torch.no_grad():
        model(batch)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Gate) and m.last_weights is not None:
            w = m.last_weights.detach().cpu().numpy().reshape(-1, m.last_weights.shape[-1]).mean(0)
            out[name] = {"values": w[None, :], "slots": [str(i) for i in range(len(w))]}
    return out


def first_batch(data: Any, rows: int = 2048) -> Batch:
    return next(iter(BatchIterator(data, rows)))


def to_jsonable(obj: Any) -> Any:
    """numpy/tensors → lists, recursively (floats rounded to 6 digits)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return np.round(obj.astype(float), 6).tolist() if obj.dtype.kind == "f" else obj.tolist()
    if isinstance(obj, (np.floating, float)):
        return round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
