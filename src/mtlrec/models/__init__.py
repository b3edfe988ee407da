"""Every model family; importing this package registers them all."""

from mtlrec.models import moe, shared_bottom  # noqa: F401
from mtlrec.models.base import EmbeddedInputs, ModelOutput, MultiTaskModel, TowerPlugin
from mtlrec.models.registry import create_model, list_models, model_info, register_model

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
