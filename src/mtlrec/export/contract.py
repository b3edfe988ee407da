"""``preprocess.json``: how to turn raw rows into the exported graph's inputs, in plain language-neutral JSON.

The document (``"format": "mtlrec.preprocess"``, ``"version": 1``) is described field by field in
``docs/export.md``. It is built from the run's fitted preprocessor state (vocabularies and statistics fitted on the
training split) and the graph's input/output specs; nothing in it needs Python to apply.
"""

from __future__ import annotations

import re
from typing import Any

from mtlrec.data.layout import FeatureLayout
from mtlrec.data.vocab import FNV_OFFSET, FNV_PRIME
from mtlrec.export.graph import TensorSpec
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, Schema

FORMAT = "mtlrec.preprocess"
VERSION = 1

_INT_TEXT = re.compile(r"^-?(0|[1-9][0-9]*)$")
_DIGITS = re.compile(r"^[0-9]+$")

HASH_SPEC = {
    "algorithm": "fnv1a_64",
    "input": "the value's text (as the vocabulary compares it), as bytes; zero bytes are skipped; a null is the "
    "text 'None'",
    "offset_basis": FNV_OFFSET,
    "prime": FNV_PRIME,
    "index": "1 + (hash mod buckets), with 64-bit wrap-around multiplication",
}


def value_type(vocab: list[str]) -> dict[str, Any]:
    """How the training values were written: ``integer`` (every entry a canonical integer), else ``string``, with
    ``zero_padded_width`` when every entry is a digit string of one width and some start with 0 (``"021"``)."""
    if not vocab:
        return {"value_type": "string"}
    if all(_INT_TEXT.match(v) for v in vocab):
        return {"value_type": "integer"}
    out: dict[str, Any] = {"value_type": "string"}
    widths = {len(v) for v in vocab}
    if len(widths) == 1 and all(_DIGITS.match(v) for v in vocab) and any(v.startswith("0") for v in vocab):
        out["zero_padded_width"] = widths.pop()
    return out


def build(
    state: dict[str, Any],
    layout: FeatureLayout,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    tasks: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``preprocess.json`` document for a run's preprocessor ``state`` and its exported graph."""
    schema = Schema.from_dict(state["schema"])
    vocabs: dict[str, list[str]] = state.get("vocabularies", {})
    stats: dict[str, dict[str, Any]] = state.get("numeric_stats", {})
    cat_pos = {name: j for j, (name, _) in enumerate(layout.categorical)}
    num_pos = {name: j for j, name in enumerate(layout.numeric)}
    features = []
    for f in schema.features:
        d: dict[str, Any] = {"name": f.name, "column": f.source, "kind": f.kind}
        if isinstance(f, CategoricalFeature):
            d["input"], d["position"] = "categorical_ids", cat_pos[f.name]
            if f.hash_buckets:
                d["encoding"] = "hash"
                d["hash"] = {**HASH_SPEC, "buckets": f.hash_buckets}
            else:
                d["encoding"] = "vocabulary"
                d["vocabulary"] = vocabs[f.name]
                d.update(value_type(vocabs[f.name]))
                d["index"] = "1 + position of the value's text in vocabulary; null, empty or unlisted -> 0"
        elif isinstance(f, MultiValuedFeature):
            d.update(
                input=f"multi_ids__{f.name}",
                separator=f.separator,
                max_len=f.max_len,
                pooling=f.pooling,
                encoding="vocabulary",
                vocabulary=vocabs[f.name],
                index="split the text on separator (null -> empty text); each item: 1 + position in vocabulary, "
                "empty or unlisted -> 0; keep the first max_len items, pad with 0 to max_len",
            )
            d.update(value_type(vocabs[f.name]))
        else:
            st = stats[f.name]
            d["transform"] = f.transform
            d["fill"] = st["fill"]
            if f.transform == "quantile":
                d.update(input="categorical_ids", position=cat_pos[f.name], boundaries=st["boundaries"])
                d["index"] = "missing -> 0; else 1 + number of boundaries <= value"
            else:
                d.update(input="numeric_values", position=num_pos[f.name])
                if f.transform == "log":
                    d["shift"] = st["shift"]
                if f.transform != "none":
                    d["mean"], d["std"] = st["mean"], st["std"]
                d["value"] = {
                    "standardize": "(x - mean) / std",
                    "log": "(log1p(max(x - shift, 0)) - mean) / std",
                    "none": "x",
                }[f.transform] + " where x = the value, or fill when missing; computed in float64, fed as float32"
            if f.missing_indicator:
                d["missing_indicator"] = {
                    "input": "numeric_values",
                    "position": num_pos[f"{f.name}__missing"],
                    "value": "1.0 when missing, else 0.0",
                }
        features.append(d)
    return {
        "format": FORMAT,
        "version": VERSION,
        **(extra or {}),
        "missing": "a numeric value is missing when it is null, NaN or infinite; a categorical value when null",
        "inputs": [{**s.to_dict(), "fields": _fields_of(s.name, layout)} for s in inputs],
        "outputs": [{**s.to_dict(), **_output_kind(s.name, tasks)} for s in outputs],
        "features": features,
        "tasks": tasks,
        "schema": state["schema"],
    }


def _fields_of(input_name: str, layout: FeatureLayout) -> list[str]:
    if input_name == "categorical_ids":
        return [n for n, _ in layout.categorical]
    if input_name == "numeric_values":
        return list(layout.numeric)
    return [input_name.removeprefix("multi_ids__")]


def _output_kind(name: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    for t in tasks:
        if t["name"] == name:
            kind = "probability" if t.get("type", "binary") == "binary" else "value"
            return {"task": name, "kind": kind}
    return {"task": None, "kind": "probability"}
