"""Model registry: ``create_model(name, layout, tasks, **params)`` and ``list_models()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from mtlrec.data.layout import FeatureLayout
from mtlrec.schema import Schema, TaskSpec

_REGISTRY: dict[str, dict[str, Any]] = {}


def register_model(name: str, *, family: str, paper: str = "", multi_task: bool = True) -> Callable:
    """Class decorator adding a model to the registry under ``name``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = {"cls": cls, "family": family, "paper": paper, "multi_task": multi_task}
        cls.registry_name = name
        return cls

    return deco


def _ensure_loaded() -> None:
    """Importing the model and plug-in packages registers every model and plug-in."""
    import importlib
    import pkgutil

    import mtlrec.models  # noqa: F401
    import mtlrec.plugins

    for mod in pkgutil.iter_modules(mtlrec.plugins.__path__, prefix="mtlrec.plugins."):
        importlib.import_module(mod.name)


def list_models(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if family is None or e["family"] == family)


def model_info(name: str) -> dict[str, Any]:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    e = _REGISTRY[name]
    doc = inspect.getdoc(e["cls"]) or ""
    return {"name": name, "family": e["family"], "paper": e["paper"], "summary": doc.split("\n")[0], "cls": e["cls"]}


def create_model(
    name: str, layout: FeatureLayout | Any, tasks: Sequence[TaskSpec] | Schema | None = None, **params: Any
):
    """Build a registered model.

    ``layout``: the :class:`FeatureLayout` of the encoded data (or any object with a ``.layout``, such as a
    loaded data set). ``tasks``: the task specs (a :class:`Schema` gives its tasks; default: the data set's).
    ``params``: the model's hyper-parameters; unknown names raise a ``TypeError`` listing the valid ones.
    Plug-ins: ``dml={...}`` and ``virtual_gradient={...}`` are attached after construction where available.
    """
    info = model_info(name)
    if not isinstance(layout, FeatureLayout):
        if tasks is None and hasattr(layout, "tasks"):
            tasks = layout.tasks
        layout = layout.layout
    if isinstance(tasks, Schema):
        tasks = tasks.tasks
    if tasks is None:
        raise ValueError("create_model needs the task specs")
    plugin_specs = {k: params.pop(k) for k in list(params) if k in _PLUGINS}
    cls = info["cls"]
    valid = _accepted_params(cls)
    unknown = set(params) - valid
    if unknown:
        raise TypeError(f"model {name!r} does not take {sorted(unknown)}; it takes {sorted(valid)}")
    model = cls(layout, list(tasks), **params)
    for key, spec in plugin_specs.items():
        if spec:
            _PLUGINS[key](model, spec)
    return model


def _accepted_params(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__:
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind == p.KEYWORD_ONLY or (
                    p.kind == p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "layout", "tasks")
                ):
                    names.add(p.name)
    return names


# name -> callable(model, spec) attaching a plug-in; filled by mtlrec.plugins
_PLUGINS: dict[str, Callable] = {}


def register_plugin(key: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        _PLUGINS[key] = fn
        return fn

    return deco
