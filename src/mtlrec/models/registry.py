"""Model registry: ``create_model(name, layout, tasks, **params)`` and ``list_models()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from mtlrec.data.layout import FeatureLayout
from mtlrec.errors import UserError, unknown_name
from mtlrec.models.capabilities import DefaultPlugins
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
        raise unknown_name("model", name, _REGISTRY)
    e = _REGISTRY[name]
    doc = inspect.getdoc(e["cls"]) or ""
    return {"name": name, "family": e["family"], "paper": e["paper"], "summary": doc.split("\n")[0], "cls": e["cls"]}


def model_params(name: str) -> set[str]:
    """The hyper-parameter names ``create_model(name, ...)`` accepts (the plug-in keys included)."""
    return _accepted_params(model_info(name)["cls"]) | set(_PLUGINS)


def create_model(
    name: str, layout: FeatureLayout | Any, tasks: Sequence[TaskSpec] | Schema | None = None, **params: Any
):
    """Build a registered model.

    ``layout``: the :class:`FeatureLayout` of the encoded data (or any object with a ``.layout``, such as a
    loaded data set). ``tasks``: the task specs (a :class:`Schema` gives its tasks; default: the data set's).
    ``params``: the model's hyper-parameters; an unknown name raises a :class:`~mtlrec.errors.UserError` naming
    the model, the parameter and the nearest valid name.

    Plug-ins: ``dml=...`` and ``virtual_gradient=...`` are attached after construction, all through one path:
    first the model's own defaults (a model implementing
    :class:`~mtlrec.models.capabilities.DefaultPlugins`, such as DEPHN's VG settings), the caller's spec merged over
    them (a dict over a dict; ``False`` switches a default off). What was attached is recorded in
    ``model.plugin_specs``.
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
    _ensure_loaded()
    plugin_specs = {k: params.pop(k) for k in list(params) if k in _PLUGINS}
    cls = info["cls"]
    valid = _accepted_params(cls)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise unknown_name("parameter", unknown[0], valid | set(_PLUGINS), where=f"model {name!r}")
    model = cls(layout, list(tasks), **params)
    attach_plugins(model, plugin_specs)
    return model


def attach_plugins(model: Any, specs: dict[str, Any]) -> Any:
    """Attach the plug-ins of ``specs`` (key → spec) and the model's declared defaults, in registration order."""
    _ensure_loaded()
    defaults = model.default_plugins() if isinstance(model, DefaultPlugins) else {}
    unknown = sorted((set(specs) | set(defaults)) - set(_PLUGINS))
    if unknown:
        raise unknown_name("plug-in", unknown[0], _PLUGINS)
    attached = getattr(model, "plugin_specs", None)
    attached = attached if isinstance(attached, dict) else {}
    for key, (attach, normalize) in _PLUGINS.items():
        spec = _merge_spec(normalize, defaults.get(key), specs.get(key))
        if spec is not None:
            attach(model, spec)
            attached[key] = spec
    if isinstance(model, nn.Module):
        model.plugin_specs = attached
    return model


def _merge_spec(normalize: Callable[[Any], dict], default: Any, given: Any) -> dict | None:
    """The caller's spec over the model's default: ``None``/``False``/empty → nothing (a default stays unless the
    caller passed ``False``); ``True``/a variant name/a dict → a dict merged over the default's dict."""
    if given is False:
        return None
    base = normalize(default) if default not in (None, False) else None
    if given is None or given == {}:
        return base
    return {**(base or {}), **normalize(given)}


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


def plugin_spec(spec: Any) -> dict[str, Any]:
    """The common spec forms of a plug-in: ``True`` → ``{}``, a name → ``{"variant": name}``, a dict → a copy."""
    if spec is True:
        return {}
    if isinstance(spec, str):
        return {"variant": spec}
    if isinstance(spec, dict):
        return dict(spec)
    raise UserError(f"a plug-in spec must be true, a variant name or a mapping, got {type(spec).__name__}")


# key -> (callable(model, spec dict) attaching a plug-in, normaliser of the user's spec); filled by mtlrec.plugins
_PLUGINS: dict[str, tuple[Callable, Callable[[Any], dict]]] = {}


def register_plugin(key: str, normalize: Callable[[Any], dict] = plugin_spec) -> Callable:
    """Register ``fn(model, spec)`` as the plug-in ``key`` of ``create_model(..., key=spec)``; ``normalize`` turns
    the user's spec (``True``, a variant name, a dict) into a dict."""

    def deco(fn: Callable) -> Callable:
        _PLUGINS[key] = (fn, normalize)
        return fn

    return deco
