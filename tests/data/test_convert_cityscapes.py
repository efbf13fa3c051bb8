"""`convert cityscapes`: fixtures in the official layout and encoding (16-bit instanceIds with
labelId * 1000 + k for instances, bare label ids otherwise), every pixel checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from panoptic_train.cli import main
from panoptic_train.data.config import load_data_args
from panoptic_train.data.convert import convert_cityscapes
from panoptic_train.data.dataset import build_datasets
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.errors import ConfigError, DataError

# aachen_000000_000019: road, sky, building; cars 26000 (k = 0) and 26001; a person (24002) and
# a person group (bare 24: crowd); void: unlabeled (0), ego vehicle (1), a caravan (29000).
FRAME_A = np.array(
    [
        [7, 7, 26000, 26000, 24, 0],
        [23, 23, 26001, 24002, 24, 1],
        [29000, 29000, 11, 11, 11, 11],
        [7, 7, 7, 7, 7, 7],
    ],
    dtype=np.uint16,
)
# bochum_000000_000313: sidewalk, vegetation, a motorcycle, a bicycle, a bus group (crowd);
# void: unlabeled (0) and static (4).
FRAME_B = np.array(
    [[8, 8, 33000, 33000, 0], [8, 32000, 33000, 4, 4], [21, 21, 21, 28, 28]], dtype=np.uint16
)
EXPECTED_A = {
    7: (7, 0),
    23: (23, 0),
    11: (11, 0),
    26000: (26, 0),
    26001: (26, 0),
    24002: (24, 0),
    24: (24, 1),
    0: None,
    1: None,
    29000: None,
}
EXPECTED_B = {
    8: (8, 0),
    21: (21, 0),
    32000: (32, 0),
    33000: (33, 0),
    28: (28, 1),
    0: None,
    4: None,
}
# The official table's 19 evaluated classes (label id, name), things marked.
EVALUATED = [
    (7, "road"),
    (8, "sidewalk"),
    (11, "building"),
    (12, "wall"),
    (13, "fence"),
    (17, "pole"),
    (19, "traffic light"),
    (20, "traffic sign"),
    (21, "vegetation"),
    (22, "terrain"),
    (23, "sky"),
    (24, "person"),
    (25, "rider"),
    (26, "car"),
    (27, "truck"),
    (28, "bus"),
    (31, "train"),
    (32, "motorcycle"),
    (33, "bicycle"),
]
THINGS = {"person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}


def _write_frame(root: Path, split: str, city: str, frame: str, values: np.ndarray) -> Path:
    """One frame as Cityscapes ships it: the image, instanceIds (16-bit) and labelIds (8-bit)."""
    images = root / "leftImg8bit" / split / city
    labels = root / "gtFine" / split / city
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(values.size)
    image = images / f"{city}_{frame}_leftImg8bit.png"
    Image.fromarray(rng.integers(0, 256, (*values.shape, 3), dtype=np.uint8)).save(image)
    Image.fromarray(values).save(labels / f"{city}_{frame}_gtFine_instanceIds.png")
    label_ids = np.where(values >= 1000, values // 1000, values).astype(np.uint8)
    Image.fromarray(label_ids).save(labels / f"{city}_{frame}_gtFine_labelIds.png")
    return image


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    _write_frame(root, "train", "aachen", "000000_000019", FRAME_A)
    _write_frame(root, "train", "bochum", "000000_000313", FRAME_B)
    _write_frame(root, "val", "frankfurt", "000000_000294", FRAME_B)
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_pixel_and_the_json(
    root: Path, tmp_path: Path, converted: type, num_workers: int
) -> None:
    out = tmp_path / "out"
    summary = convert_cityscapes(root, "train", out, num_workers=num_workers)
    split = converted(out, "train")
    split.assert_segments("aachen_000000_000019_gtFine_panoptic.png", FRAME_A, EXPECTED_A)
    split.assert_segments("bochum_000000_000313_gtFine_panoptic.png", FRAME_B, EXPECTED_B)
    split.check()

    assert split.json["images"] == [
        {"id": 1, "file_name": "aachen_000000_000019_leftImg8bit.png", "height": 4, "width": 6},
        {"id": 2, "file_name": "bochum_000000_000313_leftImg8bit.png", "height": 3, "width": 5},
    ]
    categories = split.json["categories"]
    assert [(c["id"], c["name"]) for c in categories] == EVALUATED
    assert {c["name"] for c in categories if c["isthing"]} == THINGS
    assert categories[0]["color"] == [128, 64, 128] and categories[0]["supercategory"] == "flat"

    ids, segments = split.annotation("aachen_000000_000019_gtFine_panoptic.png")
    boxes = {  # [x, y, width, height] of each source value, counted by hand from FRAME_A
        7: [0, 0, 6, 4],
        23: [0, 1, 2, 1],
        11: [2, 2, 4, 1],
        26000: [2, 0, 2, 1],
        26001: [2, 1, 1, 1],
        24002: [3, 1, 1, 1],
        24: [4, 0, 1, 2],
    }
    for value, box in boxes.items():
        (rows, cols) = np.nonzero(np.equal(FRAME_A, value))
        assert segments[int(ids[rows[0], cols[0]])]["bbox"] == box

    assert summary.images == 2
    assert summary.segments == {7: 1, 23: 1, 11: 1, 26: 2, 24: 2, 8: 1, 21: 1, 32: 1, 33: 1, 28: 1}
    assert summary.crowd == {24: 1, 28: 1}
    assert summary.pixels == 24 + 15
    assert summary.void_pixels == {
        "'unlabeled' (label id 0, not evaluated)": 2,
        "'caravan' (label id 29, not evaluated)": 2,
        "'static' (label id 4, not evaluated)": 2,
        "'ego vehicle' (label id 1, not evaluated)": 1,
    }
    text = str(summary)
    assert "2 images, 12 segments (2 crowd), 19 categories" in text
    assert "Void: 7 of 39 pixels" in text and "lists train only" in text


def test_images_are_copied_or_linked_byte_for_byte(root: Path, tmp_path: Path) -> None:
    source = root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    name = source.name
    convert_cityscapes(root, "train", tmp_path / "copy")
    copied = tmp_path / "copy" / "images" / "train" / name
    assert not copied.is_symlink() and copied.read_bytes() == source.read_bytes()

    convert_cityscapes(root, "train", tmp_path / "hard", link="hard")
    assert os.path.samefile(tmp_path / "hard" / "images" / "train" / name, source)

    convert_cityscapes(root, "train", tmp_path / "sym", link="symlink")
    linked = tmp_path / "sym" / "images" / "train" / name
    assert linked.is_symlink() and linked.resolve() == source.resolve()


def test_both_splits_make_a_data_file_that_trains(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_cityscapes(root, "train", out)
    summary = convert_cityscapes(root, "val", out)
    assert f"Train with: data='{out / 'data.yaml'}'" in str(summary)
    assert yaml.safe_load((out / "data.yaml").read_text())["val"] == {
        "images": "images/val",
        "masks": "annotations/val",
        "annotations": "annotations/val.json",
    }

    geometry = {"image_size": (3, 5), "scale_jitter": None, "horizontal_flip_prob": 0.0}
    datasets = build_datasets(load_data_args(out / "data.yaml"), load_transform_args(geometry))
    assert datasets.classes.class_ids == tuple(i for i, _ in EVALUATED)
    target = datasets.val[0]["target"].numpy()
    # Contiguous indices in the table's order: sidewalk 1, vegetation 8, bus 15, motorcycle 17,
    # bicycle 18; void -1.
    expected_class = np.array([[1, 1, 18, 18, -1], [1, 17, 18, -1, -1], [8, 8, 8, 15, 15]])
    np.testing.assert_array_equal(target[..., 0], expected_class)
    assert datasets.val[0]["crowd"].numpy().tolist() == [[False] * 5] * 2 + [
        [False] * 3 + [True] * 2
    ]


def test_missing_partners_are_all_listed(root: Path, tmp_path: Path) -> None:
    labels = root / "gtFine" / "train"
    (labels / "bochum" / "bochum_000000_000313_gtFine_instanceIds.png").unlink()
    Image.fromarray(FRAME_A).save(labels / "aachen" / "aachen_000001_000000_gtFine_instanceIds.png")
    with pytest.raises(DataError) as info:
        convert_cityscapes(root, "train", tmp_path / "out")
    message = str(info.value)
    assert message.startswith("2 problem(s)")
    assert f"instanceIds PNG '{labels / 'bochum' / 'bochum_000000_000313'}" in message
    images = root / "leftImg8bit" / "train"
    assert f"no image '{images / 'aachen' / 'aachen_000001_000000_leftImg8bit.png'}'" in message
    assert not (tmp_path / "out").exists()


def _break_frame(root: Path, values: np.ndarray) -> Path:
    path = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"
    Image.fromarray(values).save(path)
    return path


def test_size_mismatch(root: Path, tmp_path: Path) -> None:
    path = _break_frame(root, FRAME_A[:3])
    with pytest.raises(DataError, match="1 problem") as info:
        convert_cityscapes(root, "train", tmp_path / "out")
    assert f"'{path}' is 3x6 (HxW) but its image" in str(info.value)
    assert "is 4x6" in str(info.value)
    assert not (tmp_path / "out" / "images" / "train").exists()  # nothing half-written is left


def test_unknown_label_id_and_instance_on_stuff(root: Path, tmp_path: Path) -> None:
    values = FRAME_A.copy()
    values[3, 0], values[3, 1] = 40, 7001
    path = _break_frame(root, values)
    with pytest.raises(DataError) as info:
        convert_cityscapes(root, "train", tmp_path / "out")
    message = str(info.value)
    assert f"'{path}': class id(s) 40 (1 px) are not in the Cityscapes label table" in message
    assert "instance id(s) 7001 sit on pixels of the stuff class 'road' (7)" in message
    assert "gtFine_trainvaltest.zip" in message


def test_bad_arguments(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'train' or 'val', not 'test'"):
        convert_cityscapes(root, "test", tmp_path / "out")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"leftImg8bit_trainvaltest\.zip"):
        convert_cityscapes(tmp_path / "nowhere", "train", tmp_path / "out")
    convert_cityscapes(root, "train", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"already exists.*--overwrite"):
        convert_cityscapes(root, "train", tmp_path / "out")
    assert convert_cityscapes(root, "train", tmp_path / "out", overwrite=True).images == 2


def test_command_line(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["convert", "cityscapes", "--root", str(root), "--split", "train"]
    assert main([*arguments, "--out", str(tmp_path / "out"), "--link", "symlink"]) == 0
    assert "Converted cityscapes split 'train': 2 images" in capsys.readouterr().out
    assert (tmp_path / "out" / "images" / "train").is_dir()
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 2
    assert "error: " in capsys.readouterr().err
