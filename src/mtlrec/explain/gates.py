"""What a trained gated model learned: SSG gate values (DEPHN Fig. 3a), the public/private share of the logit
(Fig. 3b) and the learned expert-gate values per task. Functions return numpy arrays / dicts; nothing is plotted."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mtlrec.data.batches import Batch, BatchIterator
from mtlrec.layers.gates import Gate
from mtlrec.layers.selection import SoftSelectionGating
from mtlrec.models.capabilities import GateSummary, GateTable, LogitParts
from mtlrec.train.device import model_device, move_batch

_LEVEL_CONTAINERS = {"levels", "layers"}


def readable_name(model: nn.Module, path: str) -> str:
    """A module path such as ``levels.1.task_gates.0`` as a reader would say it: ``click: task gate, level 2``.

    An index into a list of one module per task becomes the task's name; an index into ``levels``/``layers`` (or
    the outer index of a list of lists) becomes ``level k`` (1-based); attribute names lose their underscores and
    plural ``s``; other indices are 1-based ``#k`` (none for a list of one)."""
    task_names = list(getattr(model, "task_names", []))
    parts = path.split(".") if path else []
    task, words, where = None, [], []
    mod: nn.Module | None = model
    for i, part in enumerate(parts):
        child = getattr(mod, part, None) if mod is not None else None
        if part.isdigit():
            k = int(part)
            container = parts[i - 1] if i else ""
            size = len(mod) if isinstance(mod, (nn.ModuleList, nn.Sequential)) else 0
            if container in _LEVEL_CONTAINERS or isinstance(child, nn.ModuleList):
                where.append(f"level {k + 1}")  # a list of lists: the outer index is the level (ML-MMoE)
            elif task_names and size == len(task_names) and task is None:
                task = task_names[k]
                if i < len(parts) - 1 and words:
                    words.pop()  # "blocks.0.ssg" reads "click: ssg"; the list's own name only names a leaf
            elif size > 1:
                where.append(f"#{k + 1}")
        elif i == len(parts) - 1 or part not in _LEVEL_CONTAINERS:
            word = part.replace("_", " ")
            is_list = isinstance(child, (nn.ModuleList, nn.ModuleDict))
            words.append(word[:-1] if is_list and word.endswith("s") else word)
        if isinstance(mod, nn.ModuleDict) and part in task_names and task is None:
            task = part
            words = words[:-1]
        mod = child
    label = " ".join(w for w in words if w) or "gate"
    if where:
        label += ", " + ", ".join(where)
    return f"{task}: {label}" if task else label


def ssg_gate_values(model: nn.Module) -> dict[str, np.ndarray]:
    """``{structure: G (F, D)}`` for every soft-selection-gating module of ``model`` (prefixed by its readable
    owner, such as the task's name, when the model has several, e.g. one PHN per task)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, SoftSelectionGating)]
    out: dict[str, np.ndarray] = {}
    for name, m in found:
        with torch.no_grad():
            g = m.gate_values().detach().cpu().numpy()
        owner = readable_name(model, name.rpartition(".")[0])
        for i, s in enumerate(m.structures):
            out[s if len(found) == 1 else f"{owner} / {s}"] = g[i]
    return out


def _batches(data: Any, batch_size: int, max_rows: int, device: torch.device):
    seen = 0
    for batch in BatchIterator(data, batch_size):
        if seen >= max_rows:
            break
        yield move_batch(batch, device)
        seen += len(batch)


def logit_shares(model: nn.Module, data: Any, *, batch_size: int = 1024, max_rows: int = 20000) -> dict[str, Any]:
    """Fig. 3b: per task, the mean over rows of ``|logit_pub| / (|logit_pub| + |logit_pri|)`` (before the
    sigmoid, bias excluded), plus the mean absolute public and private parts. Needs the
    :class:`~mtlrec.models.capabilities.LogitParts` capability."""
    if not isinstance(model, LogitParts):
        raise ValueError(f"{type(model).__name__} has no public/private logit split")
    model.eval()
    acc: dict[str, list[np.ndarray]] = {}
    for batch in _batches(data, batch_size, max_rows, model_device(model)):
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

    Models with the :class:`~mtlrec.models.capabilities.GateTable` capability (MT-PHN, DEPHN) give
    ``(public expert × mapping)`` tables, keyed by task; :class:`~mtlrec.models.capabilities.GateSummary` models
    (DTN) their mean gate weight per named vector; for other models every :class:`Gate` is read after an eval
    forward on ``batch`` (moved to the model's device), averaged over its rows and keyed by a readable name
    (:func:`readable_name`)."""
    model.eval()
    if batch is not None:
        batch = move_batch(batch, model_device(model))
    if isinstance(model, GateTable):
        table = model.gate_table(batch)
        return {
            t: {
                "values": v.detach().cpu().numpy(),
                "experts": list(model.expert_names),
                "mappings": list(model.mapping_names),
            }
            for t, v in table.items()
        }
    gates = [(n, m) for n, m in model.named_modules() if isinstance(m, Gate)]
    if not gates and not isinstance(model, GateSummary):
        return {}
    if batch is None:
        raise ValueError("reading input-dependent gates needs a batch")
    with torch.no_grad():
        model(batch)
    if isinstance(model, GateSummary):
        names = list(model.vector_names())
        return {
            t: {"values": v.detach().cpu().numpy()[None, :], "slots": names, "slot_label": "vector (branch/module)"}
            for t, v in model.gate_summary().items()
        }
    out = {}
    for name, m in gates:
        if m.last_weights is not None:
            w = m.last_weights.detach().cpu().numpy().reshape(-1, m.last_weights.shape[-1]).mean(0)
            out[readable_name(model, name)] = {
                "values": w[None, :],
                "slots": [f"expert {i + 1}" for i in range(len(w))],
                "module": name,
            }
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
