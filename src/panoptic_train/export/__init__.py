"""Export to ONNX and TensorRT, and runners with `predict` for the exported files.

Names are imported lazily: `OnnxPredictor` then runs without PyTorch ever being imported, and
the CLI loads nothing heavy.

    export_onnx(model, out, ...)        -> Path   (also model.export_onnx)
    export_tensorrt(model, out, ...)    -> Path   (also model.export_tensorrt)
    OnnxPredictor(path).predict(...)    numpy results, no torch needed
    TensorRTPredictor(path).predict(...) torch results, needs a CUDA GPU and tensorrt
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "export_onnx": "panoptic_train.export.onnx",
    "verify_onnx": "panoptic_train.export.onnx",
    "ExportError": "panoptic_train.export.onnx",
    "export_tensorrt": "panoptic_train.export.tensorrt",
    "GPUUnavailableError": "panoptic_train.export.tensorrt",
    "OnnxPredictor": "panoptic_train.export.onnx_predictor",
    "TensorRTPredictor": "panoptic_train.export.tensorrt_predictor",
    "ExportMetadata": "panoptic_train.export.metadata",
}

__all__ = [
    "ExportError",
    "ExportMetadata",
    "GPUUnavailableError",
    "OnnxPredictor",
    "TensorRTPredictor",
    "export_onnx",
    "export_tensorrt",
    "verify_onnx",
]

if TYPE_CHECKING:
    from panoptic_train.export.metadata import ExportMetadata
    from panoptic_train.export.onnx import ExportError, export_onnx, verify_onnx
    from panoptic_train.export.onnx_predictor import OnnxPredictor
    from panoptic_train.export.tensorrt import GPUUnavailableError, export_tensorrt
    from panoptic_train.export.tensorrt_predictor import TensorRTPredictor


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'panoptic_train.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
