"""The inference graph an export contains: encoded tensors in, one score per task out.

:class:`InferenceModule` wraps a trained :class:`~mtlrec.models.base.MultiTaskModel` so that its forward takes
plain tensors (what a serving system can feed) instead of a :class:`~mtlrec.data.batches.Batch`, and returns a
tuple of ``(B,)`` float32 scores in :func:`output_names` order: each task's probability (binary tasks) or value
(regression tasks), then the extras the model defines for prediction (ESMM's ``ctcvr`` probability).

Inputs, all with a dynamic batch dimension ``B`` (see :func:`input_specs`):

* ``cat``: ``(B, F_cat)`` int64, the single-valued categorical ids (quantile-bucketised numeric features
  included), in layout order; 0 = out of vocabulary. Present only when the layout has such fields.
* ``num``: ``(B, F_num)`` float32, the transformed numeric values in layout order. Present only when the layout
  has numeric inputs.
* ``multi__<field>``: ``(B, L)`` int64 per multi-valued field, ids padded with 0 to the field's ``max_len``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.data.preprocess import EncodedData
from mtlrec.layers.experts import use_inference_form

#: extras of :class:`~mtlrec.models.base.ModelOutput` exported as probabilities (sigmoid of the extra logit)
PROBABILITY_EXTRAS = ("ctcvr",)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype (numpy name) and shape (``"batch"`` for the dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def input_specs(layout: FeatureLayout) -> list[TensorSpec]:
    specs = []
    if layout.categorical:
        specs.append(TensorSpec("categorical_ids", "int64", ("batch", len(layout.categorical))))
    if layout.numeric:
        specs.append(TensorSpec("numeric_values", "float32", ("batch", len(layout.numeric))))
    for m in layout.multi_valued:
        specs.append(TensorSpec(f"multi_ids__{m.name}", "int64", ("batch", m.max_len)))
    return specs


def extra_outputs(model: nn.Module) -> list[str]:
    """Prediction extras the model emits (found by one forward on a two-row zero batch)."""
    inputs = example_inputs(model.layout, 2)
    with torch.no_grad():
        out = model(to_batch(model.layout, len(model.task_names), inputs))
    return [k for k in PROBABILITY_EXTRAS if k in out.extras and k not in model.task_names]


def output_specs(model: nn.Module) -> list[TensorSpec]:
    names = list(model.task_names) + extra_outputs(model)
    return [TensorSpec(n, "float32", ("batch",)) for n in names]


def example_inputs(layout: FeatureLayout, rows: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero tensors of the input specs (valid ids: 0 is the OOV / padding index of every field)."""
    out = []
    for s in input_specs(layout):
        shape = (rows, *s.shape[1:])
        out.append(torch.zeros(shape, dtype=torch.int64 if s.dtype == "int64" else torch.float32))
    return tuple(out)


def encoded_inputs(data: EncodedData, rows: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
    """The graph inputs (numpy, by input name) of rows of an encoded split."""

    def arr(a: np.ndarray, dtype) -> np.ndarray:
        a = np.ascontiguousarray(a[rows], dtype=dtype)
        return a if a.flags.writeable else a.copy()  # a slice of a read-only memory map: torch needs writable

    feeds: dict[str, np.ndarray] = {}
    layout = data.layout
    if layout.categorical:
        feeds["categorical_ids"] = arr(data.cat, np.int64)
    if layout.numeric:
        feeds["numeric_values"] = arr(data.num, np.float32)
    for m in layout.multi_valued:
        feeds[f"multi_ids__{m.name}"] = arr(data.multi[m.name], np.int64)
    return feeds


def to_batch(layout: FeatureLayout, num_tasks: int, inputs: tuple[torch.Tensor, ...]) -> Batch:
    """A label-free :class:`Batch` from the graph inputs (absent blocks become ``(B, 0)`` tensors)."""
    it = iter(inputs)
    cat = next(it) if layout.categorical else None
    num = next(it) if layout.numeric else None
    multi = {m.name: next(it) for m in layout.multi_valued}
    ref = inputs[0]
    b = ref.shape[0]
    if cat is None:
        cat = torch.zeros(b, 0, dtype=torch.int64)
    if num is None:
        num = torch.zeros(b, 0, dtype=torch.float32)
    labels = torch.zeros(b, num_tasks, dtype=torch.float32)
    return Batch(cat, num, multi, labels, torch.ones_like(labels))


class InferenceModule(nn.Module):
    """``forward(*inputs) -> tuple`` of ``(B,)`` float32 scores (see the module docstring for the contract)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not input_specs(model.layout):
            raise ValueError("the model's layout has no input fields")
        self.model = use_inference_form(model.eval())
        self.layout = model.layout
        self.num_tasks = len(model.task_names)
        self.extras = extra_outputs(model)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(to_batch(self.layout, self.num_tasks, inputs))
        # a reduced-precision copy (export.reduced) computes the logits in bf16: the sigmoid is taken in fp32
        out.logits = {k: v.float() for k, v in out.logits.items()}
        scores = self.model.predict_proba(out)
        res = [scores[t].float() for t in self.model.task_names]
        res += [torch.sigmoid(out.extras[k].float()) for k in self.extras]
        return tuple(res)
