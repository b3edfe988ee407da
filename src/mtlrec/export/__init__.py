"""Ship a trained model: export to ONNX / TorchScript / torch.export with a parity check, the language-neutral
``preprocess.json`` beside it, and streamed batch scoring (``mtlrec export``, ``mtlrec predict``).

See ``docs/export.md`` for the contract (inputs, outputs, the ``preprocess.json`` format, which model exports to
which format).
"""

from mtlrec.export.exporters import FORMATS, ExportUnsupported, export_module, load_runner
from mtlrec.export.graph import InferenceModule, encoded_inputs, input_specs, output_specs
from mtlrec.export.run import ParityError, export_run

__all__ = [
    "FORMATS",
    "ExportUnsupported",
    "InferenceModule",
    "ParityError",
    "encoded_inputs",
    "export_module",
    "export_run",
    "input_specs",
    "load_runner",
    "output_specs",
]
