"""`convert semantic-instance`: semantic PNGs (class id per pixel), instance PNGs (instance id
per pixel, 0 = none) and a classes file, every pixel checked against what was written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from panoptic_train.cli import main
from panoptic_train.data.convert import convert_semantic_instance
from panoptic_train.errors import ConfigError, DataError

CLASSES = {
    "classes": [
        {"id": 1, "name": "road", "isthing": False},
        {"id": 2, "name": "sky", "isthing": False, "color": [70, 130, 180]},
        {"id": 5, "name": "car", "isthing": True, "supercategory": "vehicle"},
        {"id": 6, "name": "person", "isthing": True},
    ],
    "ignore": 255,
}
# Image "a": two cars (instance 1, 2), a person that reuses instance id 1, car pixels without
# an instance id, an ignored pixel.
SEMANTIC_A = np.array(
    [[2, 2, 2, 2, 2], [5, 5, 6, 5, 5], [1, 5, 1, 255, 5], [1, 1, 1, 1, 1]], dtype=np.uint8
)
INSTANCE_A = np.array(
    [[0, 0, 0, 0, 0], [1, 1, 1, 2, 2], [0, 0, 0, 0, 2], [0, 0, 0, 0, 0]], dtype=np.uint16
)
# (class, instance) of each pixel as one key, to compare against segments.
KEYS_A = SEMANTIC_A.astype(np.int64) * 1000 + INSTANCE_A
EXPECTED_A_CROWD = {2000: (2, 0), 5001: (5, 0), 5002: (5, 0), 6001: (6, 0), 1000: (1, 0)}
EXPECTED_A_CROWD |= {5000: (5, 1), 255000: None}
# Image "b": only stuff and one person.
SEMANTIC_B = np.array([[1, 1, 6], [2, 2, 6]], dtype=np.uint8)
INSTANCE_B = np.array([[0, 0, 7], [0, 0, 7]], dtype=np.uint16)
KEYS_B = SEMANTIC_B.astype(np.int64) * 1000 + INSTANCE_B
EXPECTED_B = {1000: (1, 0), 2000: (2, 0), 6007: (6, 0)}


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Path]:
    """The folders and classes file; image "a" is a JPEG, "b" a PNG."""
    paths = {name: tmp_path / name for name in ("images", "semantic", "instances")}
    for folder in paths.values():
        folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(
        paths["images"] / "a.jpg", quality=80
    )
    Image.fromarray(rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)).save(paths["images"] / "b.png")
    for stem, semantic, instance in (("a", SEMANTIC_A, INSTANCE_A), ("b", SEMANTIC_B, INSTANCE_B)):
        Image.fromarray(semantic).save(paths["semantic"] / f"{stem}.png")
        Image.fromarray(instance).save(paths["instances"] / f"{stem}.png")
    paths["classes"] = tmp_path / "classes.yaml"
    paths["classes"].write_text(yaml.safe_dump(CLASSES))
    return paths


def _convert(source: dict[str, Path], out: Path, **options: object) -> object:
    return convert_semantic_instance(
        source["images"],
        source["semantic"],
        source["instances"],
        source["classes"],
        out,
        split="train",
        **options,  # type: ignore[arg-type]
    )


def test_every_pixel_crowd_for_things_without_instance(
    source: dict[str, Path], tmp_path: Path, converted: type
) -> None:
    summary = _convert(source, tmp_path / "out")
    split = converted(tmp_path / "out", "train")
    split.assert_segments("a.png", KEYS_A, EXPECTED_A_CROWD)
    split.assert_segments("b.png", KEYS_B, EXPECTED_B)
    split.check()
    assert [image["file_name"] for image in split.json["images"]] == ["a.jpg", "b.png"]
    assert split.json["categories"] == [
        {"id": 1, "name": "road", "isthing": 0},
        {"id": 2, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
        {"id": 5, "name": "car", "isthing": 1, "supercategory": "vehicle"},
        {"id": 6, "name": "person", "isthing": 1},
    ]
    jpeg = tmp_path / "out" / "images" / "train" / "a.jpg"
    assert jpeg.read_bytes() == (source["images"] / "a.jpg").read_bytes()  # never re-encoded
    assert summary.void_pixels == {"ignore value 255": 1}  # type: ignore[attr-defined]
    assert summary.crowd == {5: 1}  # type: ignore[attr-defined]


def test_things_without_instance_can_be_void(
    source: dict[str, Path], tmp_path: Path, converted: type
) -> None:
    summary = _convert(source, tmp_path / "out", things_without_instance="void")
    expected = {**EXPECTED_A_CROWD, 5000: None}
    converted(tmp_path / "out", "train").assert_segments("a.png", KEYS_A, expected)
    assert summary.void_pixels == {  # type: ignore[attr-defined]
        "'car' pixels without instance id": 1,
        "ignore value 255": 1,
    }


def test_without_instance_folder_every_thing_is_crowd(
    source: dict[str, Path], tmp_path: Path, converted: type
) -> None:
    convert_semantic_instance(
        source["images"], source["semantic"], None, source["classes"], tmp_path / "out", split="x"
    )
    expected = {1: (1, 0), 2: (2, 0), 5: (5, 1), 6: (6, 1), 255: None}
    split = converted(tmp_path / "out", "x")
    split.assert_segments("a.png", SEMANTIC_A, expected)
    split.check()
    assert not (tmp_path / "out" / "data.yaml").exists()  # 'x' is not a split of data.yaml


def test_json_classes_list_and_palette_semantic(
    source: dict[str, Path], tmp_path: Path, converted: type
) -> None:
    source["classes"] = tmp_path / "classes.json"
    source["classes"].write_text(json.dumps(CLASSES["classes"] + [{"id": 255, "name": "x"}]))
    missing = r"classes\.json':\n  classes\[4\]\['isthing'\]: required key missing"
    with pytest.raises(ConfigError, match=missing):
        _convert(source, tmp_path / "out")
    source["classes"].write_text(json.dumps(CLASSES["classes"]))
    palette = Image.fromarray(SEMANTIC_B, mode="L").convert("P")
    palette.putpalette([value for index in range(256) for value in (index, 0, 255 - index)])
    palette.save(source["semantic"] / "b.png")
    (source["semantic"] / "a.png").unlink()
    (source["instances"] / "a.png").unlink()
    (source["images"] / "a.jpg").unlink()
    _convert(source, tmp_path / "out")
    converted(tmp_path / "out", "train").assert_segments("b.png", KEYS_B, EXPECTED_B)


def test_missing_partners_and_stray_files(source: dict[str, Path], tmp_path: Path) -> None:
    (source["instances"] / "b.png").unlink()
    Image.fromarray(SEMANTIC_B).save(source["semantic"] / "c.png")
    Image.new("RGB", (3, 2)).save(source["images"] / "a.png")  # same stem as a.jpg
    with pytest.raises(DataError) as info:
        _convert(source, tmp_path / "out")
    message = str(info.value)
    assert message.startswith("3 problem(s)")
    assert "have the same stem" in message
    assert f"instance PNG '{source['instances'] / 'b.png'}' of the image" in message
    assert f"semantic PNG '{source['semantic'] / 'c.png'}' has no image" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("semantic", "instance", "expected"),
    [
        (SEMANTIC_A[:3], INSTANCE_A, "is 3x5 (HxW) but its image"),
        (np.where(SEMANTIC_A == 2, 9, SEMANTIC_A), INSTANCE_A, "class id(s) 9 (5 px) are not in"),
        (
            SEMANTIC_A,
            np.where(SEMANTIC_A == 1, 4, INSTANCE_A),
            "instance id(s) 4 sit on pixels of the stuff class 'road' (1)",
        ),
    ],
)
def test_bad_label_files(
    source: dict[str, Path],
    tmp_path: Path,
    semantic: np.ndarray,
    instance: np.ndarray,
    expected: str,
) -> None:
    Image.fromarray(semantic.astype(np.uint8)).save(source["semantic"] / "a.png")
    Image.fromarray(instance.astype(np.uint16)).save(source["instances"] / "a.png")
    with pytest.raises(DataError) as info:
        _convert(source, tmp_path / "out")
    message = str(info.value)
    assert expected in message and str(source["semantic"] / "a.png") in message
    assert "1 problem(s)" in message


def test_colour_semantic_png_is_rejected(source: dict[str, Path], tmp_path: Path) -> None:
    Image.new("RGB", (5, 4)).save(source["semantic"] / "a.png")
    with pytest.raises(DataError, match=r"has PIL mode 'RGB'.*8-bit, 16-bit or palette PNG"):
        _convert(source, tmp_path / "out")


def test_classes_file_errors(source: dict[str, Path], tmp_path: Path) -> None:
    source["classes"].write_text(yaml.safe_dump({"classes": CLASSES["classes"] * 2, "ignore": [1]}))
    with pytest.raises(ConfigError) as info:
        _convert(source, tmp_path / "out")
    assert "class id(s) [1, 2, 5, 6] appear more than once" in str(info.value)
    assert "id(s) [1] are both a class and an 'ignore' value" in str(info.value)
    source["classes"].write_text(yaml.safe_dump({"classes": CLASSES["classes"], "colour": 1}))
    with pytest.raises(ConfigError, match=r"Invalid classes file '.*':\n  colour: unknown key"):
        _convert(source, tmp_path / "out")
    source["classes"].write_text(yaml.safe_dump({"classes": []}))
    with pytest.raises(ConfigError, match="lists no classes"):
        _convert(source, tmp_path / "out")
    with pytest.raises(ConfigError, match="'crowd' or 'void', not 'drop'"):
        _convert(source, tmp_path / "out", things_without_instance="drop")


def test_command_line(
    source: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["convert", "semantic-instance", "--images", str(source["images"])]
    arguments += ["--semantic", str(source["semantic"]), "--instances", str(source["instances"])]
    arguments += ["--classes", str(source["classes"]), "--split", "val"]
    arguments += ["--out", str(tmp_path / "out"), "--things-without-instance", "void"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "Converted semantic-instance split 'val': 2 images, 8 segments (0 crowd)" in out
    assert "'car' pixels without instance id" in out
