"""Export metadata: what the files carry, and errors for files that do not carry it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panoptic_train.errors import WeightsError
from panoptic_train.export.metadata import ExportMetadata, read_sidecar, sidecar_path
from panoptic_train.runtime.postprocess import PostprocessConfig

from .conftest import CLASSES, MEAN, STD


def _metadata() -> ExportMetadata:
    return ExportMetadata(
        model_name="dinov3/vitt16-eomt",
        classes=CLASSES,
        image_size=(64, 96),
        mean=MEAN,
        std=STD,
        postprocess=PostprocessConfig(threshold=0.7),
        outputs="panoptic",
        precision="fp16",
    )


def test_json_round_trip_keeps_every_field() -> None:
    metadata = _metadata()
    assert ExportMetadata.from_json(metadata.to_json(), "test") == metadata
    assert metadata.output_names == (
        "class_logits",
        "mask_logits",
        "masks",
        "segment_ids",
        "scores",
        "labels",
    )


def test_tensorrt_metadata_lives_beside_the_engine(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    assert sidecar_path(engine) == tmp_path / "model.engine.json"
    with pytest.raises(WeightsError, match=r"model\.engine\.json' of the TensorRT engine"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(_metadata().to_json())
    assert read_sidecar(engine) == _metadata()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something else"}, "does not hold panoptic_train export metadata"),
        ({"format_version": 99}, "version 99"),
        ({"outputs": "boxes"}, "outputs='boxes'"),
        ({"image_size": [64]}, "invalid panoptic_train metadata"),
        ({"postprocess": {"threshold": 2.0}}, "threshold=2.0"),
    ],
)
def test_invalid_metadata_is_reported(change: dict, message: str) -> None:
    data = json.loads(_metadata().to_json())
    data.update(change)
    with pytest.raises(WeightsError, match=message):
        ExportMetadata.from_json(json.dumps(data), "'model.onnx'")
    with pytest.raises(WeightsError, match="unreadable"):
        ExportMetadata.from_json("{not json", "'model.onnx'")
