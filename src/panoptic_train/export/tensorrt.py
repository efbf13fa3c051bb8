"""TensorRT engines built from the ONNX export with the `tensorrt` Python API (TensorRT 10+).

The network is built strongly typed: the precision lives in the ONNX graph (fp16 weights and
arithmetic for precision="fp16"), which is the only mode TensorRT 11 keeps (its BuilderFlag.FP16
is gone). The batch axis gets one optimisation profile (min / opt / max batch). Engines cannot
carry metadata, so it is written beside the engine as `<engine>.json` (`export.metadata`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch

from panoptic_train._io import atomic_write, ensure_output_file
from panoptic_train._types import ExportPrecision, PathLike, is_int, is_number
from panoptic_train._validate import one_of
from panoptic_train.errors import ConfigError
from panoptic_train.export._verify import VerificationReport, compare_logits, example_images
from panoptic_train.export.exportable import ExportableModel
from panoptic_train.export.metadata import (
    INPUT_NAME,
    LOGIT_OUTPUTS,
    METADATA_KEY,
    ExportMetadata,
    sidecar_path,
)
from panoptic_train.export.onnx import ExportError, export_onnx
from panoptic_train.export.tensorrt_predictor import TensorRTEngine, require_tensorrt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EngineOptions:
    precision: ExportPrecision
    workspace_bytes: int
    min_batch_size: int
    opt_batch_size: int
    max_batch_size: int

    @classmethod
    def validate(
        cls,
        precision: str,
        workspace_gb: float,
        min_batch_size: int,
        opt_batch_size: int,
        max_batch_size: int,
    ) -> _EngineOptions:
        one_of(precision, "precision", get_args(ExportPrecision))
        if not is_number(workspace_gb):
            raise ConfigError(f"workspace_gb must be a number, got {workspace_gb!r}.")
        if not workspace_gb > 0:
            raise ConfigError(f"workspace_gb must be positive, got {workspace_gb!r}.")
        batches = (min_batch_size, opt_batch_size, max_batch_size)
        if not all(is_int(b) and b >= 1 for b in batches) or not (
            min_batch_size <= opt_batch_size <= max_batch_size
        ):
            raise ConfigError(
                "Batch sizes must be integers with 1 <= min_batch_size <= opt_batch_size <= "
                f"max_batch_size, got {min_batch_size!r}, {opt_batch_size!r}, {max_batch_size!r}."
            )
        return cls(precision, int(workspace_gb * 2**30), *(int(b) for b in batches))  # type: ignore[arg-type]


def export_tensorrt(
    model: ExportableModel,
    out: PathLike,
    precision: ExportPrecision = "fp32",
    workspace_gb: float = 4.0,
    min_batch_size: int = 1,
    opt_batch_size: int = 1,
    max_batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    verify: bool = True,
) -> Path:
    """Build a TensorRT engine of `model` for this machine's GPU; returns the engine's path.

    The model is first exported to ONNX (`export_onnx`, simplified, logits outputs), then parsed
    and built. Run the engine with `TensorRTPredictor(out)`; its metadata goes to `<out>.json`.

    precision: "fp32" (true fp32: TF32 off) or "fp16" (fp16 weights and arithmetic).
    workspace_gb: scratch memory TensorRT may use while choosing kernels.
    min/opt/max_batch_size: batch range the engine accepts; it is tuned for opt_batch_size.
    height, width: input size (multiples of 16); default the model's image size.
    verify: run the engine and PyTorch (fp32) on the same random images; an ExportError beyond
        `export._verify.TOLERANCE`, and no engine is written.
    """
    options = _EngineOptions.validate(
        precision, workspace_gb, min_batch_size, opt_batch_size, max_batch_size
    )
    trt = require_tensorrt("Building a TensorRT engine")
    path = ensure_output_file(out)  # before minutes of building, not after them
    ensure_output_file(sidecar_path(path))
    with tempfile.TemporaryDirectory(prefix="panoptic_train_trt_") as folder:
        onnx_path = export_onnx(
            model,
            Path(folder) / "model.onnx",
            precision=options.precision,
            batch_size=options.opt_batch_size,
            height=height,
            width=width,
            simplify=True,
            verify=False,
        )
        onnx_bytes = onnx_path.read_bytes()
    metadata = _metadata_of_onnx(onnx_bytes)
    engine = _build_engine(trt, onnx_bytes, metadata.image_size, options)
    if verify:
        _verify_engine(model, engine, metadata, options)
    atomic_write(path, lambda handle: handle.write(engine))
    atomic_write(sidecar_path(path), lambda handle: handle.write(metadata.to_json().encode()))
    logger.info("Wrote %s (%.1f MB) and %s", path, len(engine) / 1e6, sidecar_path(path))
    return path


def _metadata_of_onnx(onnx_bytes: bytes) -> ExportMetadata:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    props = {entry.key: entry.value for entry in proto.metadata_props}
    return ExportMetadata.from_json(props[METADATA_KEY], "The intermediate ONNX model")


def _build_engine(
    trt: Any, onnx_bytes: bytes, image_size: tuple[int, int], options: _EngineOptions
) -> bytes:
    """Parse the ONNX graph into a strongly typed network and build a serialized engine."""
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse the exported ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    shapes = [
        (batch, 3, *image_size)
        for batch in (options.min_batch_size, options.opt_batch_size, options.max_batch_size)
    ]
    profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(profile)
    logger.info("Building the TensorRT engine (%s); this takes minutes", options.precision)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            "TensorRT failed to build the engine (its log above says why). With out-of-memory "
            f"errors, lower max_batch_size ({options.max_batch_size}) or workspace_gb."
        )
    return bytes(serialized)


def _verify_engine(
    model: ExportableModel,
    engine: bytes,
    metadata: ExportMetadata,
    options: _EngineOptions,
) -> None:
    runner = TensorRTEngine(engine, device=torch.device("cuda"))
    count = options.opt_batch_size
    images = example_images(count, metadata.image_size, metadata.mean, metadata.std)
    outputs = runner(images.cuda())
    arrays = {
        name: out.float().cpu().numpy() for name, out in zip(LOGIT_OUTPUTS, outputs, strict=True)
    }
    errors, bounds = compare_logits(model, images, arrays, options.precision)
    report = VerificationReport("TensorRT", options.precision, count, errors, bounds)
    logger.info("%s", report)
    if not report.passed:
        raise ExportError(
            f"{report}. The engine was not written; build with verify=False to keep it anyway."
        )
