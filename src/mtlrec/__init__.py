"""mtlrec: multi-task recommendation learning."""

from mtlrec.data.datasets import list_datasets, load_dataset
from mtlrec.models import create_model, list_models
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, NumericFeature, Schema, TaskSpec

__version__ = "0.1.0"

__all__ = [
    "CategoricalFeature",
    "MultiValuedFeature",
    "NumericFeature",
    "Schema",
    "TaskSpec",
    "__version__",
    "create_model",
    "list_datasets",
    "list_models",
    "load_dataset",
]
