"""Edited and damaged model files fail to load with a WeightsError naming the entry, what was
found and what was expected, instead of loading and predicting garbage."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from panoptic_train.errors import WeightsError
from panoptic_train.export.metadata import ExportMetadata
from panoptic_train.inference.model import load_model
from panoptic_train.train.checkpoints import load_checkpoint

from ..inference.conftest import CLASSES


def _edited(model_file: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    content = torch.load(model_file, weights_only=True)
    edit(content)
    path = tmp_path / "edited.pt"
    torch.save(content, path)
    return path


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda content: content.__setitem__(key, value)


def _set_weight(key: str, make: Callable[[torch.Tensor], Any]) -> Callable[[dict[str, Any]], None]:
    def edit(content: dict[str, Any]) -> None:
        content["state_dict"][key] = make(content["state_dict"][key])

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _set("format_version", "1"),
            r"format_version '1' \(a str\), but panoptic_train writes the integer 1 there",
        ),
        (_set("format_version", 2), "written by a newer panoptic_train"),
        (
            _set("normalize", {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.0, 0.3]}),
            r"normalize\.std is \[0\.2, 0\.0, 0\.3\]; every channel needs a positive value",
        ),
        (
            _set("normalize", {"mean": [float("nan"), 0.4, 0.3], "std": [0.2, 0.2, 0.3]}),
            r"normalize\.mean is \[nan, 0\.4, 0\.3\]; it needs one finite number per RGB",
        ),
        (_set("image_size", [64, 60]), r"image_size is \[64, 60\]; .* multiples of 16"),
        (
            _set("classes", CLASSES.to_list()[:-1]),
            r"lists 5 classes in 'classes', but its network predicts 6",
        ),
        (
            _set_weight("class_head.weight", lambda weight: weight[:-2]),
            r"'class_head\.weight' in .* has shape \(5, 192\), but the architecture its "
            r"eomt_config describes \(vitt16, 6 classes, 8 queries\) needs \(7, 192\)",
        ),
        (
            _set_weight(
                "queries.weight", lambda weight: weight.index_fill(0, torch.tensor([1]), torch.nan)
            ),
            r"'queries\.weight' in .* holds NaN or infinite values",
        ),
        (_set_weight("class_head.bias", lambda weight: weight.tolist()), "is a list, not a tensor"),
    ],
    ids=[
        "version as text",
        "newer version",
        "zero std",
        "nan mean",
        "size not a multiple of 16",
        "fewer classes",
        "wrong weight shape",
        "nan weight",
        "weight not a tensor",
    ],
)
def test_an_edited_model_file_names_the_bad_entry(
    model_file: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    edited = _edited(model_file, tmp_path, edit)
    with pytest.raises(WeightsError, match=message) as error:
        load_model(edited, device="cpu")
    assert str(edited) in str(error.value)


def _flip_a_weight_byte(source: Path, target: Path) -> str:
    """Copy `source` with one bit flipped in the middle of its largest entry; return the entry."""
    with zipfile.ZipFile(source) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    content = bytearray(source.read_bytes())
    header = entry.header_offset
    name_length = int.from_bytes(content[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(content[header + 28 : header + 30], "little")
    data_start = header + 30 + name_length + extra_length
    content[data_start + entry.file_size // 2] ^= 0x10
    target.write_bytes(bytes(content))
    return entry.filename


def test_a_flipped_bit_in_the_weights_is_caught(model_file: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.pt"
    entry = _flip_a_weight_byte(model_file, damaged)
    assert torch.load(damaged, weights_only=True)["format"]  # torch itself loads it silently
    with pytest.raises(WeightsError, match=f"entry '{entry}' do not match the checksum"):
        load_model(damaged, device="cpu")

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"checkpoint_format": "panoptic_train.train_checkpoint", "model": {}}, checkpoint)
    damaged_checkpoint = tmp_path / "damaged.ckpt"
    _flip_a_weight_byte(checkpoint, damaged_checkpoint)
    with pytest.raises(WeightsError, match=r"damaged\.ckpt' is damaged"):
        load_checkpoint(damaged_checkpoint)


@pytest.mark.parametrize(
    ("normalize", "message"),
    [
        ({"mean": [0.5, 0.5, 0.5], "std": [0.0, 0.2, 0.2]}, r"normalize\.std is \[0\.0, 0\.2"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}, r"normalize\.mean is \[0\.5, 0\.5\]"),
    ],
)
def test_onnx_metadata_with_a_bad_normalisation_is_refused(
    normalize: dict[str, list[float]], message: str
) -> None:
    metadata = {
        "format": "panoptic_train.eomt_panoptic.graph",
        "format_version": 1,
        "model_name": "dinov3/vitt16-eomt",
        "classes": CLASSES.to_list(),
        "image_size": [64, 64],
        "normalize": normalize,
        "postprocess": {"threshold": 0.8, "mask_threshold": 0.5, "overlap_threshold": 0.8},
        "outputs": "logits",
        "precision": "fp32",
    }
    with pytest.raises(WeightsError, match=message):
        ExportMetadata.from_json(json.dumps(metadata), "'model.onnx'")
