"""Declarative feature and task schema.

A :class:`Schema` lists the input features (categorical, numeric, multi-valued) and the tasks (labels) of a data
set. It is plain data: it can be written to and read from YAML or JSON, and the preprocessing fits vocabularies
and statistics for it on the training split only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

NumericTransform = Literal["standardize", "log", "quantile", "none"]
Pooling = Literal["mean", "sum"]
TaskType = Literal["binary", "regression"]


class SchemaError(ValueError):
    """A schema or a data file does not fit together; the message names the file, column and expectation."""


@dataclass
class CategoricalFeature:
    """A single-valued categorical column.

    Values seen fewer than ``min_count`` times in the training split, and values never seen there, map to the
    out-of-vocabulary index 0. With ``hash_buckets`` set, the value is hashed into that many buckets instead of
    building a vocabulary (for huge id spaces); index 0 stays reserved.
    """

    name: str
    column: str | None = None
    min_count: int = 1
    hash_buckets: int | None = None
    kind: Literal["categorical"] = "categorical"

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass
class NumericFeature:
    """A numeric column.

    ``transform``: ``standardize`` (z-score with train mean/std), ``log`` (``log1p`` of the value shifted to be
    non-negative, then standardised), ``quantile`` (bucketised into ``n_buckets`` train quantiles, embedded like a
    categorical field) or ``none``. Missing values are filled with the train mean (or their own bucket for
    ``quantile``) and, with ``missing_indicator``, flagged in an extra numeric input.
    """

    name: str
    column: str | None = None
    transform: NumericTransform = "standardize"
    n_buckets: int = 20
    missing_indicator: bool = False
    kind: Literal["numeric"] = "numeric"

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass
class MultiValuedFeature:
    """A list-valued categorical column such as genres ``"a|b|c"``, embedded by pooling (mean or sum)."""

    name: str
    column: str | None = None
    separator: str = "|"
    max_len: int = 8
    pooling: Pooling = "mean"
    min_count: int = 1
    kind: Literal["multi_valued"] = "multi_valued"

    @property
    def source(self) -> str:
        return self.column or self.name


Feature = CategoricalFeature | NumericFeature | MultiValuedFeature
_FEATURE_KINDS: dict[str, type] = {
    "categorical": CategoricalFeature,
    "numeric": NumericFeature,
    "multi_valued": MultiValuedFeature,
}


@dataclass
class TaskSpec:
    """One prediction task.

    ``label``: the label column (after the data set's label derivation). ``type``: ``binary`` (BCE on the logit)
    or ``regression`` (MSE). ``weight``: its loss weight. ``mask``: the name of a label column whose value 1 marks
    the task's sample space (e.g. CVR is defined only where ``click == 1``); loss and metrics use only those rows.
    ``metrics``: evaluated on validation and test; the first one is the default selection metric. ``group``: the
    categorical feature whose ids group the rows for ``gauc`` (e.g. ``user_id``).
    """

    name: str
    type: TaskType = "binary"
    label: str | None = None
    weight: float = 1.0
    mask: str | None = None
    loss: Literal["bce", "mse"] | None = None
    metrics: list[str] | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ("binary", "regression"):
            raise SchemaError(f"task {self.name!r}: type must be 'binary' or 'regression', got {self.type!r}")
        if self.loss is None:
            self.loss = "bce" if self.type == "binary" else "mse"
        if self.metrics is None:
            self.metrics = ["auc", "logloss"] if self.type == "binary" else ["mse", "rmse"]
        if "gauc" in self.metrics and not self.group:
            raise SchemaError(f"task {self.name!r}: metric 'gauc' needs 'group' (a categorical feature, e.g. user_id)")

    @property
    def label_column(self) -> str:
        return self.label or self.name


@dataclass
class Schema:
    """Features and tasks of a data set."""

    features: list[Feature] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"duplicate feature names in schema: {sorted(dup)}")
        task_names = [t.name for t in self.tasks]
        if len(set(task_names)) != len(task_names):
            raise SchemaError(f"duplicate task names in schema: {task_names}")
        cats = {f.name for f in self.features if isinstance(f, CategoricalFeature)}
        for t in self.tasks:
            if t.group and t.group not in cats:
                raise SchemaError(f"task {t.name!r}: group {t.group!r} is not a categorical feature of the schema")

    # ---- views -------------------------------------------------------------------------------------------
    @property
    def categorical(self) -> list[CategoricalFeature]:
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def numeric(self) -> list[NumericFeature]:
        return [f for f in self.features if isinstance(f, NumericFeature)]

    @property
    def multi_valued(self) -> list[MultiValuedFeature]:
        return [f for f in self.features if isinstance(f, MultiValuedFeature)]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r}; tasks are {self.task_names}")

    def source_columns(self) -> list[str]:
        cols = [f.source for f in self.features] + [t.label_column for t in self.tasks]
        cols += [t.mask for t in self.tasks if t.mask and t.mask not in cols]
        return list(dict.fromkeys(cols))

    # ---- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"features": [asdict(f) for f in self.features], "tasks": [asdict(t) for t in self.tasks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        feats: list[Feature] = []
        for raw in data.get("features", []):
            raw = dict(raw)
            kind = raw.pop("kind", "categorical")
            if kind not in _FEATURE_KINDS:
                raise SchemaError(f"feature {raw.get('name')!r}: unknown kind {kind!r}; use {list(_FEATURE_KINDS)}")
            klass = _FEATURE_KINDS[kind]
            allowed = {f.name for f in fields(klass)}
            unknown = set(raw) - allowed
            if unknown:
                raise SchemaError(f"feature {raw.get('name')!r}: unknown keys {sorted(unknown)}")
            feats.append(klass(**raw))
        tasks = [TaskSpec(**dict(t)) for t in data.get("tasks", [])]
        return cls(features=feats, tasks=tasks)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            json.dumps(self.to_dict(), indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(self.to_dict(), sort_keys=False)
        )
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.from_dict(data)
