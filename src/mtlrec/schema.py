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

from mtlrec.errors import UserError, did_you_mean

NumericTransform = Literal["standardize", "log", "quantile", "none"]
Pooling = Literal["mean", "sum"]
TaskType = Literal["binary", "regression"]


class SchemaError(UserError, ValueError):
    """A schema or a data file does not fit together; the message names the file, column and expectation.

    A :class:`~mtlrec.errors.UserError` (the CLI prints it on one line, exit status 2) and, for older callers, a
    ``ValueError``."""


_TRANSFORMS = ("standardize", "log", "quantile", "none")
_POOLINGS = ("mean", "sum")


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SchemaError(
            f"{where}.{key}: unknown value {value!r}{did_you_mean(str(value), allowed)}; "
            f"expected one of: {', '.join(allowed)}"
        )


def _positive_int(where: str, key: str, value: Any, *, optional: bool = False, minimum: int = 1) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or null" if optional else ""
        raise SchemaError(f"{where}.{key}: expected an integer >= {minimum}{extra}, got {value!r}")


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{kind}: every entry needs a non-empty string 'name', got {name!r}")
    return f"{kind}.{name}"


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

    def __post_init__(self) -> None:
        where = _check_name("features", self.name)
        _positive_int(where, "min_count", self.min_count)
        _positive_int(where, "hash_buckets", self.hash_buckets, optional=True)

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

    def __post_init__(self) -> None:
        where = _check_name("features", self.name)
        _choice(where, "transform", self.transform, _TRANSFORMS)
        _positive_int(where, "n_buckets", self.n_buckets, minimum=2)

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

    def __post_init__(self) -> None:
        where = _check_name("features", self.name)
        _choice(where, "pooling", self.pooling, _POOLINGS)
        _positive_int(where, "max_len", self.max_len)
        _positive_int(where, "min_count", self.min_count)
        if not isinstance(self.separator, str) or not self.separator:
            raise SchemaError(f"{where}.separator: expected a non-empty string, got {self.separator!r}")

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
        where = _check_name("tasks", self.name)
        _choice(where, "type", self.type, ("binary", "regression"))
        if self.loss is not None:
            _choice(where, "loss", self.loss, ("bce", "mse"))
        if self.metrics is not None and (
            not isinstance(self.metrics, list | tuple) or not all(isinstance(m, str) for m in self.metrics)
        ):
            raise SchemaError(f"{where}.metrics: expected a list of metric names, got {self.metrics!r}")
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
    def from_dict(cls, data: dict[str, Any], source: str = "schema") -> Schema:
        """Build and validate a schema from plain data; every error is one line naming the key path
        (``features.price.transform``) and the allowed values. ``source`` (a file name) prefixes the message."""
        try:
            return cls._from_dict(data)
        except SchemaError as exc:
            if source == "schema":
                raise
            raise SchemaError(f"{source}: {exc}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> Schema:
        if not isinstance(data, dict):
            raise SchemaError(f"expected a mapping with 'features' and 'tasks', got {type(data).__name__}")
        unknown_top = set(data) - {"features", "tasks"}
        if unknown_top:
            key = sorted(unknown_top)[0]
            raise SchemaError(
                f"unknown key {key!r}{did_you_mean(key, ['features', 'tasks'])}; expected features, tasks"
            )
        raw_feats, raw_tasks = data.get("features") or [], data.get("tasks") or []
        if not raw_feats or not raw_tasks:
            raise SchemaError("an empty schema: 'features' and 'tasks' each need at least one entry")
        feats: list[Feature] = []
        for i, raw in enumerate(raw_feats):
            feats.append(_build(f"features[{i}]", raw, _FEATURE_KINDS))
        tasks = [_build(f"tasks[{i}]", raw, {"": TaskSpec}) for i, raw in enumerate(raw_tasks)]
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
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SchemaError(
                f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}".replace("\n", " ")
            ) from None
        return cls.from_dict(data, source=str(path))


def _build(where: str, raw: Any, kinds: dict[str, type]) -> Any:
    """One feature (``kinds`` by ``kind``) or task (``kinds == {"": TaskSpec}``) from a mapping, unknown keys
    refused with the nearest valid key."""
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: expected a mapping, got {raw!r}")
    raw = dict(raw)
    if "" in kinds:
        klass = kinds[""]
    else:
        kind = raw.pop("kind", "categorical")
        if kind not in kinds:
            raise SchemaError(
                f"{where}.kind: unknown value {kind!r}{did_you_mean(str(kind), kinds)}; "
                f"expected one of: {', '.join(kinds)}"
            )
        klass = kinds[kind]
    allowed = [f.name for f in fields(klass) if f.name != "kind"]
    for key in raw:
        if key not in allowed:
            name = raw.get("name")
            at = f"{where.split('[')[0]}.{name}" if isinstance(name, str) and name else where
            raise SchemaError(
                f"{at}: unknown key {key!r}{did_you_mean(str(key), allowed)}; expected one of: {', '.join(allowed)}"
            )
    if "name" not in raw:
        raise SchemaError(f"{where}: missing 'name'")
    return klass(**raw)
