"""What an exported file must carry so that a runner needs nothing else: classes, input size,
normalisation, thresholds, and which outputs the graph has.

ONNX files hold it as JSON under the `panoptic_train` key of the model's `metadata_props`
(onnxruntime shows it as `custom_metadata_map`); TensorRT engines cannot carry metadata, so it
goes to a JSON file beside the engine. No torch here: the ONNX runner reads it without PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from panoptic_train._types import ExportPrecision, PathLike
from panoptic_train._validate import check_format_version, normalization
from panoptic_train.data.coco import ClassMapping
from panoptic_train.errors import ConfigError, WeightsError
from panoptic_train.runtime.postprocess import PostprocessConfig

METADATA_KEY = "panoptic_train"
FORMAT = "panoptic_train.eomt_panoptic.graph"
FORMAT_VERSION = 1

Outputs = Literal["logits", "panoptic"]

# Graph tensor names: the runners and users' own code rely on them.
INPUT_NAME = "images"
LOGIT_OUTPUTS = ("class_logits", "mask_logits")
PANOPTIC_OUTPUTS = ("masks", "segment_ids", "scores", "labels")


@dataclass(frozen=True)
class ExportMetadata:
    """Everything a runner needs besides the graph.

    outputs: "logits" for graphs ending at the network's class and mask logits, "panoptic" for
        graphs with the merge baked in (they output the logits too).
    image_size: (height, width) of the graph input; images are resized and padded to it.
    """

    model_name: str
    classes: ClassMapping
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    postprocess: PostprocessConfig
    outputs: Outputs
    precision: ExportPrecision

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.outputs == "panoptic":
            return LOGIT_OUTPUTS + PANOPTIC_OUTPUTS
        return LOGIT_OUTPUTS

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model_name": self.model_name,
                "classes": self.classes.to_list(),
                "image_size": list(self.image_size),
                "normalize": {"mean": list(self.mean), "std": list(self.std)},
                "postprocess": dataclasses.asdict(self.postprocess),
                "outputs": self.outputs,
                "precision": self.precision,
            }
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportMetadata:
        """Parse and validate; `source` names the file in error messages."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            message = f"{source} holds unreadable panoptic_train metadata: {error}."
            raise WeightsError(message) from error
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise WeightsError(
                f"{source} does not hold panoptic_train export metadata (format {FORMAT!r}); "
                "export the model with panoptic_train's export_onnx or export_tensorrt."
            )
        check_format_version(data.get("format_version"), FORMAT_VERSION, source, "format_version")
        try:
            outputs = data["outputs"]
            precision = data["precision"]
            if outputs not in ("logits", "panoptic") or precision not in get_args(ExportPrecision):
                raise ValueError(f"outputs={outputs!r}, precision={precision!r}")
            height, width = (int(side) for side in data["image_size"])
            mean, std = normalization(data["normalize"]["mean"], data["normalize"]["std"])
            return cls(
                model_name=str(data["model_name"]),
                classes=ClassMapping.from_list(data["classes"]),
                image_size=(height, width),
                mean=mean,
                std=std,
                postprocess=PostprocessConfig(**data["postprocess"]),
                outputs=outputs,
                precision=precision,
            )
        except (ConfigError, KeyError, TypeError, ValueError) as error:
            message = f"{source} holds invalid panoptic_train metadata: {error}"
            raise WeightsError(message) from error


def sidecar_path(engine_path: PathLike) -> Path:
    """The JSON file holding a TensorRT engine's metadata: `<engine file>.json`."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def read_sidecar(engine_path: PathLike) -> ExportMetadata:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise WeightsError(
            f"The metadata file '{path}' of the TensorRT engine '{engine_path}' is missing. "
            "export_tensorrt writes it beside the engine; keep the two files together."
        )
    return ExportMetadata.from_json(path.read_text(encoding="utf-8"), source=f"'{path}'")
