"""Every model family; importing this package registers them all (each module below ``mtlrec.models`` is
imported, so a new model file needs no edit here)."""

import importlib
import pkgutil

from mtlrec.models.base import EmbeddedInputs, ModelOutput, MultiTaskModel, TowerPlugin
from mtlrec.models.registry import create_model, list_models, model_info, register_model

for _mod in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_mod.name)

__all__ = [
    "EmbeddedInputs",
    "ModelOutput",
    "MultiTaskModel",
    "TowerPlugin",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
