"""ONNX export of a trained model: a graph with a dynamic batch axis, optional fp16 weights,
optional baked-in panoptic merge, simplified with onnxslim, checked against PyTorch with
onnxruntime, and carrying the metadata a runner needs (`export.metadata`).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from panoptic_train._io import atomic_write, ensure_output_file
from panoptic_train._types import ExportPrecision, PathLike, is_int
from panoptic_train._validate import one_of
from panoptic_train._version import __version__
from panoptic_train.errors import ConfigError, PanopticTrainError, require
from panoptic_train.export._verify import VerificationReport, compare_logits, example_images
from panoptic_train.export.exportable import ExportableModel
from panoptic_train.export.graph import LogitsGraph, PanopticGraph
from panoptic_train.export.metadata import (
    INPUT_NAME,
    LOGIT_OUTPUTS,
    METADATA_KEY,
    ExportMetadata,
)
from panoptic_train.export.onnx_predictor import metadata_of_session
from panoptic_train.models.dinov3 import PATCH_SIZE
from panoptic_train.runtime.postprocess import panoptic_postprocess

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # LayerNormalization as one op; read by TensorRT 8.6+, onnxruntime, OpenVINO
MAX_OPSET = 20  # the highest opset torch's TorchScript-based exporter writes
_PROTOBUF_LIMIT = 2**31  # bytes; larger ONNX models need external data files


class ExportError(PanopticTrainError, RuntimeError):
    """An exported file that does not reproduce the PyTorch model."""


def export_onnx(
    model: ExportableModel,
    out: PathLike,
    precision: ExportPrecision = "fp32",
    batch_size: int = 1,
    height: int | None = None,
    width: int | None = None,
    simplify: bool = True,
    verify: bool = True,
    opset: int | None = None,
    postprocess: bool = False,
) -> Path:
    """Export `model` to an ONNX file and return its path.

    The graph input `images` is float32 (batch, 3, height, width), normalised as the metadata
    says, with a dynamic batch axis; the outputs are `class_logits` (batch, Q, C+1) and
    `mask_logits` (batch, Q, height/4, width/4), float32.

    precision: "fp32", or "fp16" for fp16 weights and arithmetic (input and outputs stay float32).
    batch_size: images in the example batch the graph is traced with (any batch runs).
    height, width: input size, multiples of 16; default the model's image size.
    simplify: run onnxslim (constant folding, fusions) on the graph.
    verify: compare onnxruntime with PyTorch on random images; an ExportError beyond
        `export._verify.TOLERANCE`, and no file is written. The maximum errors are logged
        (logger `panoptic_train.export`).
    opset: ONNX opset, DEFAULT_OPSET..MAX_OPSET (default DEFAULT_OPSET).
    postprocess: also bake the panoptic merge into the graph (outputs `masks`, `segment_ids`,
        `scores`, `labels` at the input resolution; see `export.graph.PanopticGraph`), for
        deployments that want the whole pipeline in one file.
    """
    options = _ExportOptions.validate(model, precision, batch_size, height, width, opset)
    path = ensure_output_file(out)  # before the tracing and verification, not after them
    onnx = require("onnx", "onnx", "ONNX export")
    if simplify:
        require("onnxslim", "onnx", "Simplifying the exported ONNX graph (simplify=True)")
    if verify:
        require("onnxruntime", "onnx", "Verifying the exported ONNX graph (verify=True)")
    metadata = ExportMetadata(
        model_name=model.model_name,
        classes=model.class_mapping,
        image_size=options.image_size,
        mean=model.mean,
        std=model.std,
        postprocess=model.postprocess,
        outputs="panoptic" if postprocess else "logits",
        precision=options.precision,
    )
    proto = _trace(_build_graph(model, metadata), options, metadata)
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    _set_metadata(proto, metadata)
    content = proto.SerializeToString()
    onnx.checker.check_model(content)
    if verify:
        report = verify_onnx(model, content, batch_size=options.batch_size)
        logger.info("%s", report)
        if not report.passed:
            raise ExportError(
                f"{report}. The ONNX file was not written. Report this with the model name "
                f"{model.model_name!r}; export with verify=False to inspect the graph anyway."
            )
    atomic_write(path, lambda handle: handle.write(content))
    logger.info("Wrote %s (%.1f MB)", path, len(content) / 1e6)
    return path


@dataclass(frozen=True)
class _ExportOptions:
    precision: ExportPrecision
    batch_size: int
    image_size: tuple[int, int]
    opset: int

    @classmethod
    def validate(
        cls,
        model: ExportableModel,
        precision: ExportPrecision,
        batch_size: int,
        height: int | None,
        width: int | None,
        opset: int | None,
    ) -> _ExportOptions:
        one_of(precision, "precision", get_args(ExportPrecision))
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        size = (
            model.image_size[0] if height is None else height,
            model.image_size[1] if width is None else width,
        )
        if not all(is_int(side) and side > 0 and side % PATCH_SIZE == 0 for side in size):
            raise ConfigError(
                f"height/width must be positive multiples of the patch size {PATCH_SIZE}, got "
                f"{size[0]!r} x {size[1]!r}. Leave them out to use the model's image size "
                f"{tuple(model.image_size)}."
            )
        opset = DEFAULT_OPSET if opset is None else opset
        if not is_int(opset) or not DEFAULT_OPSET <= opset <= MAX_OPSET:
            raise ConfigError(
                f"opset={opset!r} is not supported; choose {DEFAULT_OPSET}..{MAX_OPSET} "
                f"(default {DEFAULT_OPSET})."
            )
        parameter_bytes = sum(
            p.numel() * (2 if precision == "fp16" else 4) for p in model.network.parameters()
        )
        if parameter_bytes >= _PROTOBUF_LIMIT:
            raise ConfigError(
                f"Model {model.model_name!r} has {parameter_bytes / 2**30:.1f} GiB of {precision} "
                "weights, beyond the 2 GiB an ONNX file holds without external data. "
                + (
                    "Export with precision='fp16'."
                    if precision == "fp32"
                    else "ONNX export supports models up to 2 GiB of weights."
                )
            )
        return cls(precision, batch_size, (int(size[0]), int(size[1])), opset)


def _build_graph(model: ExportableModel, metadata: ExportMetadata) -> torch.nn.Module:
    """The module to trace, on a CPU rebuild of the network from its weights (the model itself
    is left as it is, and a model on the GPU is not duplicated there).

    fp16 is traced on the model's GPU when it has one: CPUs run fp16 several times slower.
    """
    dtype = torch.float16 if metadata.precision == "fp16" else torch.float32
    network = model.to_exported().build_network()
    device = next(model.network.parameters()).device
    if dtype == torch.float16 and device.type == "cuda":
        network = network.to(device)
    logits = LogitsGraph(network, dtype)
    if metadata.outputs == "logits":
        return logits
    classes = metadata.classes
    return PanopticGraph(
        logits, classes.class_ids, classes.is_thing, metadata.image_size, metadata.postprocess
    )


def _trace(graph: torch.nn.Module, options: _ExportOptions, metadata: ExportMetadata) -> Any:
    """Trace with torch's TorchScript-based exporter into an onnx.ModelProto.

    That exporter needs no extra package (the torch.export-based one needs onnxscript) and is
    fast; it is deprecated in torch but kept working there, and its warning says nothing a
    user of this function can act on. Its TracerWarnings are silenced too: the Python values
    the traced code derives are sizes fixed by the export (input size, number of queries), and
    the batch axis stays symbolic (verification runs a batch of another size).
    """
    import onnx

    example = example_images(options.batch_size, options.image_size, metadata.mean, metadata.std)
    example = example.to(next(graph.parameters()).device)
    buffer = io.BytesIO()
    names = [INPUT_NAME, *metadata.output_names]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            buffer,  # type: ignore[arg-type]  # typed as a path; the TorchScript exporter takes files
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(metadata.output_names),
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=options.opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def _set_metadata(proto: Any, metadata: ExportMetadata) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    proto.producer_name = "panoptic_train"
    proto.producer_version = __version__
    proto.doc_string = (
        f"EoMT panoptic segmentation ({metadata.model_name}, {metadata.precision}). Input "
        f"'{INPUT_NAME}': float32 (batch, 3, {metadata.image_size[0]}, {metadata.image_size[1]}) "
        f"normalised with mean {list(metadata.mean)} and std {list(metadata.std)}. Metadata key "
        f"'{METADATA_KEY}' holds classes, thresholds and outputs as JSON."
    )


def verify_onnx(
    model: ExportableModel,
    onnx_model: PathLike | bytes,
    batch_size: int = 1,
) -> VerificationReport:
    """Run an exported graph in onnxruntime (CPU) and the model's network in PyTorch (fp32) on
    the same random images; a batch one larger than traced exercises the dynamic batch axis."""
    ort = require("onnxruntime", "onnx", "Verifying an ONNX export")
    model_input = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(model_input, providers=["CPUExecutionProvider"])
    metadata = metadata_of_session(session, "The ONNX model")
    count = batch_size + 1
    images = example_images(count, metadata.image_size, metadata.mean, metadata.std)
    outputs = dict(
        zip(metadata.output_names, session.run(None, {INPUT_NAME: images.numpy()}), strict=True)
    )
    errors, bounds = compare_logits(model, images, outputs, metadata.precision)
    agreement = None
    if metadata.outputs == "panoptic":
        agreement = _merge_agreement(outputs, metadata, count)
    return VerificationReport("onnxruntime", metadata.precision, count, errors, bounds, agreement)


def _merge_agreement(outputs: dict[str, Any], metadata: ExportMetadata, count: int) -> float:
    """Share of pixels where the graph's merge equals the shared merge on the graph's logits."""
    size = metadata.image_size
    predictions = panoptic_postprocess(
        outputs[LOGIT_OUTPUTS[0]],
        outputs[LOGIT_OUTPUTS[1]],
        metadata.classes.is_thing,
        input_size=size,
        resized_sizes=[size] * count,
        orig_sizes=[size] * count,
        config=metadata.postprocess,
    )
    category_ids = np.asarray(metadata.classes.class_ids)
    agreeing = 0
    for graph_masks, prediction in zip(outputs["masks"], predictions, strict=True):
        classes, segments = prediction["masks"][..., 0], prediction["masks"][..., 1]
        categories = np.where(classes >= 0, category_ids[np.clip(classes, 0, None)], -1)
        expected = np.stack([categories, segments], axis=-1)
        agreeing += int((graph_masks == expected).all(axis=-1).sum())
    return agreeing / (count * size[0] * size[1])
