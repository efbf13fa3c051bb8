"""Export to ONNX and TensorRT, and runners with `predict` for the exported files.

Names are imported lazily: `OnnxPredictor` then runs without PyTorch ever being imported, and
the CLI loads nothing heavy.

    export_onnx(model, out, ...)        -> Path   (also model.export_onnx)
    export_tensorrt(model, out, ...)    -> Path   (also model.export_tensorrt)
    OnnxPredictor(path).predict(...)    numpy results, no torch needed
    TensorRTPredictor(path).predict(...) torch results, needs a CUDA GPU and tensorrt
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from panoptic_train._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "export_onnx": "panoptic_train.export.onnx",
    "verify_onnx": "panoptic_train.export.onnx",
    "ExportError": "panoptic_train.export.onnx",
    "export_tensorrt": "panoptic_train.export.tensorrt",
    "GPUUnavailableError": "panoptic_train.export.tensorrt_predictor",
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
    from panoptic_train.export.tensorrt import export_tensorrt
    from panoptic_train.export.tensorrt_predictor import GPUUnavailableError, TensorRTPredictor


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
