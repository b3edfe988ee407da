"""Sub-commands of ``mtlrec`` that live outside ``cli.py``.

Each module in this package exposes ``register(app)``, which adds its command(s) to the typer app; ``cli.py``
discovers and registers every module here, so adding a command is adding a module (no list to edit).
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(app)
