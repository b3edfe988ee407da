"""The experiment config format, as typed classes, validated as a whole before anything runs.

A config is a YAML mapping (``docs/experiments.md`` describes every key)::

    name: census_mmoe                        # default out_dir: runs/<name>
    base: other.yaml                         # optional: inherit that file (path relative to this one)
    description: free text
    data: {name: census_income, params: {group: 1}}
    model_defaults: {embedding_dim: 8}       # parameters given to every model
    models:
      - {name: mmoe, params: {num_experts: 8}}
      - {name: mmoe, label: mmoe+uncertainty, train: {weighting: uncertainty}}   # per-model train overrides
    train: {epochs: 10, lr: 1e-3, monitor: income.auc, loggers: [tensorboard]}
    seeds: [0, 1, 2]
    out_dir: runs/census_mmoe
    bench: {baseline: mmoe, single_task: null, datasets: [...], expected: {...}, quick: {...}}   # mtlrec bench

:func:`validate_config` checks keys, types and names (models and their parameters, data sets and their parameters,
metrics, weighting strategies, monitors, loggers) and raises one :class:`~mtlrec.errors.UserError` line naming the
file, the key path, the value and what is allowed. YAML 1.1 reads ``1e-3`` as a string: :data:`YamlLoader` (used
for config files and ``--set`` values) reads it as a float, and float settings accept such strings too.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mtlrec.errors import UserError, unknown_name
from mtlrec.train.loggers import LOGGERS
from mtlrec.train.trainer import RESUME_MAY_CHANGE

TOP_LEVEL_KEYS = (
    "name",
    "base",
    "description",
    "data",
    "model_defaults",
    "models",
    "train",
    "seeds",
    "out_dir",
    "bench",
)
#: train settings that belong to the experiment rather than to TrainConfig
EXPERIMENT_TRAIN_KEYS = ("loggers",)
#: train settings a ``--resume`` may change (applied and recorded); any other difference is refused
# the trainer's settings a resume may change, plus the experiment-level loggers (one list: the trainer's)
RESUMABLE_TRAIN_KEYS = (*RESUME_MAY_CHANGE, "loggers")

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` / ``2E5`` (no dot) as floats, as YAML 1.2 does."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass: data only, never code


# ---- the typed classes -----------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)  # model_defaults merged under the entry's params
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the experiment's train section


@dataclass
class BenchDataset:
    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    baseline: str | None = None
    single_task: str | None = None
    datasets: list[BenchDataset] = field(default_factory=list)
    expected: dict[str, dict[str, float]] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    train_rows: int | None = None  # train every cell on a fixed random subset of this many training rows


@dataclass
class ExperimentConfig:
    name: str
    data: DataConfig
    models: list[ModelConfig]
    description: str = ""
    model_defaults: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    out_dir: str = ""
    bench: BenchConfig | None = None
    source: str = ""

    def model_train(self, model: ModelConfig) -> dict[str, Any]:
        """The experiment's train settings with the model's overrides laid over them."""
        return {**copy.deepcopy(self.train), **copy.deepcopy(model.train)}


# ---- validation ---------------------------------------------------------------------------------------------
class Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> UserError:
        where = f"{self.source}: {path}" if path else self.source
        return UserError(f"{where}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_shown(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(path, f"keys must be names, got {_shown(k)}")
            if allowed is not None and k not in allowed:
                raise unknown_key(self.source, path, k, allowed)
        return value

    def typed(self, value: Any, tp: Any, path: str) -> Any:
        """``value`` checked against the annotation ``tp`` (int, float, str, bool, None, list[..], dict[..] and
        unions of them); float accepts ints and float-looking strings (YAML 1.1's ``1e-3``)."""
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            options = typing.get_args(tp)
            if value is None and type(None) in options:
                return None
            for opt in (o for o in options if o is not type(None)):
                try:
                    return self.typed(value, opt, path)
                except UserError:
                    continue
            raise self.fail(path, f"expected {_type_name(tp)}, got {_shown(value)}")
        if tp is type(None):
            if value is not None:
                raise self.fail(path, f"expected null, got {_shown(value)}")
            return None
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(path, f"expected true or false, got {_shown(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(path, f"expected an integer, got {_shown(value)}")
            return value
        if tp is float:
            if isinstance(value, str) and _FLOAT.match(value.strip()):
                return float(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(path, f"expected a number, got {_shown(value)}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.fail(path, f"expected a string, got {_shown(value)}")
            return value
        if origin is list or tp is list:
            if not isinstance(value, list):
                raise self.fail(path, f"expected a list, got {_shown(value)}")
            (inner,) = typing.get_args(tp) or (Any,)
            return [self.typed(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin is dict or tp is dict:
            return dict(self.mapping(value, path))
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        raise self.fail(path, f"expected {_type_name(tp)}, got {_shown(value)}")


def unknown_key(source: str, path: str, key: str, allowed: typing.Iterable[str]) -> UserError:
    """One line for a key that is not allowed at ``path``, naming the full key path and the nearest valid one."""
    full = f"{path}.{key}" if path else key
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    near = f" (did you mean {(path + '.' if path else '') + close[0]!r}?)" if close else ""
    return UserError(f"{source}: unknown key {full!r}{near}; expected one of: {', '.join(allowed)}")


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list or tp is list:
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _train_fields() -> dict[str, Any]:
    from mtlrec.train.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def dataset_params(name: str) -> dict[str, Any] | None:
    """``{parameter: default}`` of a data set's reader (``None`` when it takes any keyword); defaults that are
    required are :data:`dataclasses.MISSING`."""
    from mtlrec.data import datasets as D

    info = D.list_datasets()[name]
    if "params" in info and isinstance(info["params"], dict):
        return dict(info["params"])
    fn = D._DATASETS[name]["fn"]
    out: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[p.name] = MISSING if p.default is p.empty else p.default
    return out


def model_params(name: str) -> set[str]:
    """Every keyword a registered model accepts, plug-in keys (``dml``, ``virtual_gradient``) included."""
    from mtlrec.models import registry as R

    return R._accepted_params(R.model_info(name)["cls"]) | set(R._PLUGINS)


def check_data(ck: Checker, raw: Any, path: str) -> DataConfig:
    from mtlrec.data.datasets import list_datasets

    raw = ck.mapping(raw, path, ("name", "params"))
    if "name" not in raw:
        raise ck.fail(path, "needs a data set name, e.g. data: {name: synthetic} (see `mtlrec datasets`)")
    name = ck.typed(raw["name"], str, f"{path}.name")
    known = list_datasets()
    if name not in known:
        raise unknown_name("data set", name, known, where=f"{ck.source}: {path}.name")
    params = ck.mapping(raw.get("params"), f"{path}.params")
    accepted = dataset_params(name)
    if accepted is not None:
        for k in params:
            if k not in accepted:
                raise unknown_name(f"{name} parameter", k, accepted, where=f"{ck.source}: {path}.params.{k}")
        missing = [k for k, d in accepted.items() if d is MISSING and k not in params]
        if missing:
            raise ck.fail(f"{path}.params", f"data set {name!r} needs {', '.join(missing)}")
    return DataConfig(name, dict(params))


def check_metric_name(ck: Checker, metric: str, path: str) -> None:
    from mtlrec import metrics as M

    if metric not in M.HIGHER_IS_BETTER:
        raise unknown_name("metric", metric, M.HIGHER_IS_BETTER, where=f"{ck.source}: {path}")


def check_train(ck: Checker, raw: Any, path: str) -> dict[str, Any]:
    """The train section (or a model's overrides): known keys, typed values, valid names."""
    from mtlrec.train import weighting as W

    tf = _train_fields()
    allowed = tuple(k for k in tf if k != "seed") + tuple(k for k in EXPERIMENT_TRAIN_KEYS if k not in tf)
    if isinstance(raw, dict) and "seed" in raw:
        raise ck.fail(f"{path}.seed", "the seeds of an experiment are its top-level list: seeds: [0, 1, 2]")
    raw = dict(ck.mapping(raw, path, allowed))
    for k, v in list(raw.items()):
        if k in tf:
            raw[k] = ck.typed(v, tf[k], f"{path}.{k}")
    if "loggers" in raw and "loggers" not in tf:
        names = ck.typed(raw["loggers"], list[str], f"{path}.loggers")
        for i, n in enumerate(names):
            if n not in LOGGERS:
                raise unknown_name("logger", n, LOGGERS, where=f"{ck.source}: {path}.loggers[{i}]")
    if raw.get("weighting") is not None and raw["weighting"] not in W._STRATEGIES:
        raise unknown_name(
            "weighting strategy", raw["weighting"], W._STRATEGIES, where=f"{ck.source}: {path}.weighting"
        )
    if raw.get("monitor") is not None:
        task, dot, metric = raw["monitor"].partition(".")
        if not dot or not task:
            raise ck.fail(f"{path}.monitor", f"expected 'task.metric' or 'mean.metric', got {raw['monitor']!r}")
        check_metric_name(ck, metric, f"{path}.monitor")
    return raw


def check_models(ck: Checker, raw: Any, defaults: dict[str, Any]) -> list[ModelConfig]:
    from mtlrec.models.registry import list_models

    if raw is None or raw == []:
        raise ck.fail("models", "needs at least one model, e.g. models: [{name: mmoe}] (see `mtlrec models`)")
    if isinstance(raw, dict):
        raise ck.fail("models", "expected a list of {name, label, params, train} entries, got a mapping")
    if not isinstance(raw, list):
        raise ck.fail("models", f"expected a list, got {_shown(raw)}")
    registered = list_models()
    out, labels = [], set()
    for i, entry in enumerate(raw):
        path = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = ck.mapping(entry, path, ("name", "label", "params", "train"))
        if "name" not in entry:
            raise ck.fail(path, "needs a model name (see `mtlrec models`)")
        name = ck.typed(entry["name"], str, f"{path}.name")
        if name not in registered:
            raise unknown_name("model", name, registered, where=f"{ck.source}: {path}.name")
        label = ck.typed(entry.get("label") or name, str, f"{path}.label")
        if label in labels:
            raise ck.fail(f"{path}.label", f"label {label!r} is used twice; give each entry its own label")
        labels.add(label)
        params = dict(ck.mapping(entry.get("params"), f"{path}.params"))
        accepted = model_params(name)
        for k in params:
            if k not in accepted:
                raise unknown_name(f"{name} parameter", k, accepted, where=f"{ck.source}: {path}.params.{k}")
        for k in defaults:
            if k not in accepted and k not in params:
                raise unknown_name(f"{name} parameter", k, accepted, where=f"{ck.source}: model_defaults.{k}")
        train = check_train(ck, entry.get("train"), f"{path}.train")
        out.append(ModelConfig(name, label, {**copy.deepcopy(defaults), **params}, train))
    return out


def check_bench(ck: Checker, raw: Any, labels: list[str], cfg: dict[str, Any]) -> BenchConfig | None:
    if raw is None:
        return None
    raw = ck.mapping(raw, "bench", tuple(f.name for f in fields(BenchConfig)))
    bench = BenchConfig()
    for key in ("baseline", "single_task"):
        value = ck.typed(raw.get(key), str | None, f"bench.{key}")
        if value is not None and value not in labels:
            raise unknown_name("model label", value, labels, where=f"{ck.source}: bench.{key}")
        setattr(bench, key, value)
    datasets = raw.get("datasets") or []
    if not isinstance(datasets, list):
        raise ck.fail("bench.datasets", f"expected a list, got {_shown(datasets)}")
    seen = set()
    for i, d in enumerate(datasets):
        path = f"bench.datasets[{i}]"
        d = ck.mapping(d, path, ("label", "name", "params"))
        data = check_data(ck, {k: v for k, v in d.items() if k != "label"}, path)
        label = ck.typed(d.get("label") or data.name, str, f"{path}.label")
        if label in seen:
            raise ck.fail(f"{path}.label", f"label {label!r} is used twice")
        seen.add(label)
        bench.datasets.append(BenchDataset(label, data.name, data.params))
    expected = ck.mapping(raw.get("expected"), "bench.expected")
    for label, thresholds in expected.items():
        if label not in labels:
            raise unknown_name("model label", label, labels, where=f"{ck.source}: bench.expected")
        thresholds = ck.mapping(thresholds, f"bench.expected.{label}")
        out = {}
        for key, v in thresholds.items():
            task, dot, metric = key.partition(".")
            if not dot or not task:
                raise ck.fail(f"bench.expected.{label}", f"keys look like 'task.metric', got {key!r}")
            check_metric_name(ck, metric, f"bench.expected.{label}.{key}")
            out[key] = ck.typed(v, float, f"bench.expected.{label}.{key}")
        bench.expected[label] = out
    train_rows = raw.get("train_rows")
    if train_rows is not None:
        bench.train_rows = ck.typed(train_rows, int, "bench.train_rows")
        if bench.train_rows < 1:
            raise ck.fail("bench.train_rows", f"must be >= 1, got {bench.train_rows}")
    quick = ck.mapping(raw.get("quick"), "bench.quick", tuple(k for k in TOP_LEVEL_KEYS if k != "base"))
    if quick:  # the quick variant must be a valid config too (its own bench keys laid over this one's)
        merged = copy.deepcopy(cfg)
        merged["bench"] = {k: v for k, v in (merged.get("bench") or {}).items() if k != "quick"}
        validate_config(deep_update(merged, copy.deepcopy(quick)), f"{ck.source} (bench.quick)")
    bench.quick = dict(quick)
    return bench


def validate_config(cfg: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """The whole config checked (keys, types, names, TrainConfig's own ranges) and returned as typed classes;
    the first mistake raises a one-line :class:`UserError` naming ``source`` and the key path."""
    from mtlrec.train.trainer import TrainConfig

    ck = Checker(source)
    cfg = ck.mapping(cfg, "", TOP_LEVEL_KEYS)
    name = ck.typed(cfg.get("name") or Path(source.split(" ")[0]).stem or "experiment", str, "name")
    description = ck.typed(cfg.get("description") or "", str, "description")
    raw_data = cfg.get("data")
    bench_raw = cfg.get("bench")
    if raw_data is None and isinstance(bench_raw, dict) and isinstance(bench_raw.get("datasets"), list):
        first = bench_raw["datasets"][0] if bench_raw["datasets"] else None
        if isinstance(first, dict):  # a bench grid without top-level data: its first data set
            raw_data = {k: v for k, v in first.items() if k in ("name", "params")}
    data = check_data(ck, raw_data, "data")
    defaults = dict(ck.mapping(cfg.get("model_defaults"), "model_defaults"))
    models = check_models(ck, cfg.get("models"), defaults)
    train = check_train(ck, cfg.get("train"), "train")
    seeds = cfg.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    seeds = ck.typed(seeds, list[int], "seeds")
    if not seeds:
        raise ck.fail("seeds", "expected at least one seed, e.g. seeds: [0]")
    if len(set(seeds)) != len(seeds):
        raise ck.fail("seeds", f"a seed is listed twice: {seeds}")
    out_dir = ck.typed(cfg.get("out_dir") or f"runs/{name}", str, "out_dir")
    bench = check_bench(ck, cfg.get("bench"), [m.label for m in models], cfg)
    exp = ExperimentConfig(name, data, models, description, defaults, train, seeds, out_dir, bench, source)
    known = {f.name for f in fields(TrainConfig)}
    for m in models:  # TrainConfig's own range checks, with the file name in front
        settings = {k: v for k, v in exp.model_train(m).items() if k in known}
        path = "train" if not m.train else f"models[{models.index(m)}].train"
        try:
            checked = TrainConfig(**settings)
            if callable(getattr(checked, "validate", None)):
                checked.validate()
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ck.fail(path, str(e)) from None
    return exp


# ---- files and overrides ------------------------------------------------------------------------------------
def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def read_yaml(path: Path) -> Any:
    """A YAML file read as data (never code); a syntax error is one line naming the file and the line."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a config file")
    if not path.exists():
        raise UserError(f"config file {path} not found")
    try:
        return yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None


def load_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``base:`` chain merged under it (each base relative to the file naming it)."""
    path = Path(path)
    cfg = read_yaml(path)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: an experiment config must be a mapping of keys, got {type(cfg).__name__}")
    if ("features" in cfg or "tasks" in cfg) and not set(cfg) & {"data", "models", "train"}:
        raise UserError(
            f"{path} is a schema, not an experiment config; use it in a config's data section: "
            f"data: {{name: files, params: {{schema: {path}, train: your_data.csv}}}} (or run `mtlrec init DATA_FILE`)"
        )
    base = cfg.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise UserError(f"{path}: base: expected a file name, got {_shown(base)}")
        target = (path.parent / base).resolve()
        if target in _seen:
            raise UserError(f"{path}: base: {base} inherits itself")
        return deep_update(load_config_file(target, (*_seen, path.resolve())), cfg)
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key.sub=value, e.g. --set train.epochs=3")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {item!r}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` strings (value read as YAML, ``1e-3`` a float) set in the config; the result is
    validated by :func:`validate_config` like a file (an unknown key or a wrong type fails there)."""
    for item in overrides:
        parts, value = parse_override(item)
        node = cfg
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                raise UserError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a list; set it whole")
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return cfg
