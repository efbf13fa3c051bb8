"""The model behind `panoptic-train serve`: anything `load_model` accepts, run by PyTorch, or an
exported `.onnx` file run by `OnnxPredictor`. Both `predict` alike, so the server treats them
the same; this module adds what `/info` reports and the per-batch call the batcher makes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from panoptic_train._types import InferencePrecision, PathLike
from panoptic_train.errors import ConfigError, require
from panoptic_train.runtime.postprocess import PostprocessConfig


class Predictor(Protocol):
    """What `PanopticSegmentationModel` and `OnnxPredictor` share and the server uses."""

    model_name: str
    classes: dict[int, str]
    is_thing: dict[int, bool]
    image_size: tuple[int, int]
    postprocess: PostprocessConfig

    def predict(
        self,
        image: Any,
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        batch_size: int = 8,
    ) -> Any: ...


@dataclass(frozen=True)
class ServedModel:
    """A predictor with the facts `/info` reports.

    runtime: "pytorch" or "onnxruntime"; device: where the network runs ("cpu", "cuda", ...);
    precision: "fp32", "fp16" or "bf16".
    """

    predictor: Predictor
    runtime: str
    device: str
    precision: str

    def predict_batch(
        self, images: Sequence[np.ndarray], config: PostprocessConfig
    ) -> list[Mapping[str, Any]]:
        """One forward pass over `images` ((H, W, 3) uint8 arrays) with the given thresholds."""
        return self.predictor.predict(
            list(images),
            threshold=config.threshold,
            mask_threshold=config.mask_threshold,
            overlap_threshold=config.overlap_threshold,
            batch_size=len(images),
        )

    def warm_up(self) -> None:
        """Run one blank image so the first request does not pay for lazy initialisation."""
        blank = np.zeros((*self.predictor.image_size, 3), dtype=np.uint8)
        self.predict_batch([blank], self.predictor.postprocess)


def load_served_model(
    source: PathLike, device: str | None = None, precision: InferencePrecision = "auto"
) -> ServedModel:
    """`load_model(source, device, precision=...)`, or `OnnxPredictor` for a `.onnx` file."""
    if Path(source).suffix.lower() == ".onnx":
        return _load_onnx(Path(source), device, precision)
    from panoptic_train.inference.model import load_model

    model = load_model(source, device=device, precision=precision)
    return ServedModel(model, "pytorch", str(model.device), model.precision)


def _load_onnx(path: Path, device: str | None, precision: str) -> ServedModel:
    ort = require("onnxruntime", "onnx", "Serving an ONNX model")
    from panoptic_train.export.onnx_predictor import OnnxPredictor

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(
            f"--device {device!r} is not available for an ONNX model: use 'cpu' or 'cuda' "
            "(onnxruntime's CUDA provider, from the onnxruntime-gpu package)."
        )
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            "--device cuda was asked for, but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(ort.get_available_providers())}). Install onnxruntime-gpu "
            "or use --device cpu."
        )
    use_cuda = device == "cuda" or (device is None and has_cuda)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else None
    predictor = OnnxPredictor(path, providers=providers)
    graph_precision = predictor.metadata.precision
    if precision not in ("auto", graph_precision):
        raise ConfigError(
            f"--precision {precision} was given, but '{path}' is an {graph_precision} graph: an "
            "ONNX file's precision is fixed when it is exported. Drop --precision, or export "
            "again with `panoptic-train export MODEL --format onnx --precision fp32|fp16`."
        )
    runs_on = predictor.session.get_providers()[0]
    return ServedModel(
        predictor,
        "onnxruntime",
        "cuda" if runs_on == "CUDAExecutionProvider" else "cpu",
        graph_precision,
    )
