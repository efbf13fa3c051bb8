"""`convert to-semantic`: class per pixel from a COCO panoptic split, checked against the masks
decoded here, and read back by `semantic-instance`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from panoptic_train.cli import main
from panoptic_train.data.convert import convert_semantic_instance, convert_to_semantic
from panoptic_train.data.synthetic import CATEGORIES, write_dataset
from panoptic_train.errors import ConfigError, DataError


@pytest.fixture
def split(tmp_path: Path) -> dict[str, str]:
    return write_dataset(tmp_path / "synthetic", 3, image_size=(32, 40), seed=5)


def _expected(split: dict[str, str], value_of: dict[int, int], void: int) -> dict[str, np.ndarray]:
    """Semantic map per mask name: each pixel's segment's category mapped by `value_of`."""
    content = json.loads(Path(split["annotations"]).read_text())
    expected = {}
    for entry in content["annotations"]:
        rgb = np.asarray(Image.open(Path(split["masks"]) / entry["file_name"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        semantic = np.full(ids.shape, void)
        for segment in entry["segments_info"]:
            semantic[ids == segment["id"]] = value_of.get(segment["category_id"], void)
        expected[entry["file_name"]] = semantic
    return expected


def _convert(split: dict[str, str], out: Path, **options: Any) -> Any:
    return convert_to_semantic(
        split["images"], split["masks"], split["annotations"], out, **options
    )


def test_category_ids_per_pixel_and_classes_file(split: dict[str, str], tmp_path: Path) -> None:
    summary = _convert(split, tmp_path / "semantic")
    ids = [c["id"] for c in CATEGORIES]
    for name, semantic in _expected(split, {i: i for i in ids}, 255).items():
        written = Image.open(tmp_path / "semantic" / name)
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), semantic)
    classes = yaml.safe_load((tmp_path / "semantic" / "classes.yaml").read_text())
    assert classes == {
        "classes": [
            {"id": c["id"], "name": c["name"], "isthing": bool(c["isthing"])} for c in CATEGORIES
        ],
        "ignore": [255],
    }
    assert summary.images == 3 and sum(summary.pixels.values()) == 3 * 32 * 40
    assert "(void)" in str(summary)


def test_contiguous_indices_and_ignored_classes(split: dict[str, str], tmp_path: Path) -> None:
    _convert(split, tmp_path / "semantic", contiguous=True, ignore_classes=(11,), void=6)
    # Categories 1, 2, 3, 10, 12 become 0..4; 11 (grass) is void like unlabelled pixels.
    value_of = {1: 0, 2: 1, 3: 2, 10: 3, 12: 4}
    for name, semantic in _expected(split, value_of, 6).items():
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "semantic" / name)), semantic
        )
    classes = yaml.safe_load((tmp_path / "semantic" / "classes.yaml").read_text())
    assert [c["id"] for c in classes["classes"]] == [0, 1, 2, 3, 4] and classes["ignore"] == [6]


def test_large_category_ids_give_16_bit_pngs(split: dict[str, str], tmp_path: Path) -> None:
    content = json.loads(Path(split["annotations"]).read_text())
    content["categories"][3]["id"] = 300
    for entry in content["annotations"]:
        for segment in entry["segments_info"]:
            segment["category_id"] = 300 if segment["category_id"] == 10 else segment["category_id"]
    Path(split["annotations"]).write_text(json.dumps(content))
    _convert(split, tmp_path / "semantic")
    value_of = {1: 1, 2: 2, 3: 3, 300: 300, 11: 11, 12: 12}
    for name, semantic in _expected(split, value_of, 255).items():
        written = Image.open(tmp_path / "semantic" / name)
        assert written.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(written), semantic)


def test_round_trip_through_semantic_instance(
    split: dict[str, str], tmp_path: Path, converted: type
) -> None:
    _convert(split, tmp_path / "semantic")
    out = tmp_path / "back"
    convert_semantic_instance(
        split["images"],
        tmp_path / "semantic",
        None,
        tmp_path / "semantic" / "classes.yaml",
        out,
        split="train",
    )
    back = converted(out, "train")
    back.check()
    ids = [c["id"] for c in CATEGORIES]
    for name, semantic in _expected(split, {i: i for i in ids}, 255).items():
        segment_ids, segments = back.annotation(name)
        category = np.full(segment_ids.shape, 255)
        for segment_id, segment in segments.items():
            category[segment_ids == segment_id] = segment["category_id"]
        np.testing.assert_array_equal(category, semantic)
        # No instance PNGs: every thing became one crowd segment per class.
        assert all(s["iscrowd"] == (s["category_id"] <= 3) for s in segments.values())


def test_unlabeled_images_are_all_void(split: dict[str, str], tmp_path: Path) -> None:
    Image.new("RGB", (7, 5)).save(Path(split["images"]) / "negative.png")
    content = json.loads(Path(split["annotations"]).read_text())
    content["images"].append({"id": 50, "file_name": "negative.png"})
    Path(split["annotations"]).write_text(json.dumps(content))
    with pytest.raises(DataError, match="allow_unlabeled"):
        _convert(split, tmp_path / "semantic")
    _convert(split, tmp_path / "semantic", allow_unlabeled=True)
    written = np.asarray(Image.open(tmp_path / "semantic" / "negative.png"))
    np.testing.assert_array_equal(written, np.full((5, 7), 255))


def test_errors(split: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="void value 10 is also the value of category 10"):
        _convert(split, tmp_path / "semantic", void=10)
    with pytest.raises(ConfigError, match=r"fit a 16-bit PNG \(0\.\.65535\)"):
        _convert(split, tmp_path / "semantic", void=70000)
    content = json.loads(Path(split["annotations"]).read_text())
    removed = content["annotations"][1]["segments_info"].pop()
    Path(split["annotations"]).write_text(json.dumps(content))
    with pytest.raises(DataError) as info:
        _convert(split, tmp_path / "semantic")
    assert f"000002.png' has segment id(s) [{removed['id']}]" in str(info.value)
    assert not (tmp_path / "semantic").exists()  # nothing half-written is left


def test_command_line(
    split: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["convert", "to-semantic", "--images", split["images"], "--masks", split["masks"]]
    arguments += ["--annotations", split["annotations"], "--out", str(tmp_path / "semantic")]
    assert main([*arguments, "--contiguous", "--void", "200"]) == 0
    assert "Wrote 3 semantic PNGs" in capsys.readouterr().out
    assert main(arguments) == 2  # the folder is not empty any more
    assert "--overwrite" in capsys.readouterr().err
    assert main([*arguments, "--overwrite"]) == 0
