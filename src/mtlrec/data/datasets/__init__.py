"""Built-in data sets and the generic file loader, registered by name (``mtlrec datasets`` lists them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtlrec.data.bundle import DataBundle, load_files
from mtlrec.errors import unknown_name

_DATASETS: dict[str, dict[str, Any]] = {}


def register_dataset(name: str, *, description: str, source: str) -> Callable:
    """``source``: ``generated`` (no files needed) or a note on the files a user points to."""

    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _DATASETS[name] = {"fn": fn, "description": description, "source": source}
        return fn

    return deco


def _ensure_loaded() -> None:
    """Import every module of this package (each registers its data sets), so a new reader needs no edit here."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__, prefix=__name__ + "."):
        importlib.import_module(mod.name)


def dataset_params(fn: Callable) -> dict[str, Any]:
    """A reader's parameters and their defaults (``inspect.signature``; ``None`` where a parameter is required)."""
    import inspect

    out: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        out[name] = list(default) if isinstance(default, tuple) else default
    return out


def list_datasets() -> dict[str, dict[str, Any]]:
    """``{name: {"description", "source", "params"}}``; ``params`` maps each parameter to its default."""
    _ensure_loaded()
    return {
        k: {"description": v["description"], "source": v["source"], "params": dataset_params(v["fn"])}
        for k, v in sorted(_DATASETS.items())
    }


def load_dataset(name: str, **params: Any) -> DataBundle:
    _ensure_loaded()
    if name not in _DATASETS:
        raise unknown_name("data set", name, _DATASETS)
    bundle = _DATASETS[name]["fn"](**params)
    bundle.meta = {**bundle.meta, "dataset_name": name, "load_params": params}
    return bundle


__all__ = ["DataBundle", "list_datasets", "load_dataset", "load_files", "register_dataset"]
