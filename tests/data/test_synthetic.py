"""The synthetic dataset: deterministic, and holding what panoptic training must handle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from panoptic_train.data.synthetic import CATEGORIES, write_dataset

COLORS = {c["id"]: np.array(c["color"]) for c in CATEGORIES}


def _digest(folder: str) -> list[tuple[str, str]]:
    return [
        (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(Path(folder).iterdir())
    ]


def test_same_seed_same_bytes_other_split_other_images(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", 2, image_size=(40, 56), seed=5)
    second = write_dataset(tmp_path / "b", 2, image_size=(40, 56), seed=5)
    val = write_dataset(tmp_path / "a", 2, image_size=(40, 56), seed=5, split="val")
    assert _digest(first["images"]) == _digest(second["images"])
    assert _digest(first["masks"]) == _digest(second["masks"])
    assert Path(first["annotations"]).read_bytes() == Path(second["annotations"]).read_bytes()
    assert _digest(first["images"]) != _digest(val["images"])
    assert val["images"] == str(tmp_path / "a" / "images" / "val")
    assert val["annotations"] == str(tmp_path / "a" / "annotations" / "val.json")


def test_jpg_images(tmp_path: Path) -> None:
    split = write_dataset(tmp_path, 1, image_size=(40, 56), image_format="jpg")
    assert [p.suffix for p in Path(split["images"]).iterdir()] == [".jpg"]


def test_content_has_stuff_things_crowd_void_and_touching_instances(
    synthetic_split: dict[str, str],
) -> None:
    raw = json.loads(Path(synthetic_split["annotations"]).read_text())
    thing_ids = {c["id"] for c in CATEGORIES if c["isthing"]}
    crowd = void = touching = same_class_pair = 0
    for entry in raw["annotations"]:
        rgb = np.asarray(Image.open(Path(synthetic_split["masks"]) / entry["file_name"]))
        ids = rgb[..., 0] + 256 * rgb[..., 1].astype(np.int64) + 65536 * rgb[..., 2]
        image = np.asarray(Image.open(Path(synthetic_split["images"]) / entry["file_name"]))
        info = entry["segments_info"]
        category = {s["id"]: s["category_id"] for s in info}
        assert sum(c not in thing_ids for c in category.values()) >= 2  # stuff bands
        things = [s for s in info if s["category_id"] in thing_ids and not s["iscrowd"]]
        crowd += sum(s["iscrowd"] for s in info)
        void += int((ids == 0).any())
        same_class_pair += len(things) > len({s["category_id"] for s in things})
        # Thing instances whose pixels are 4-neighbours of each other touch or occlude.
        for a, b in ((ids[1:], ids[:-1]), (ids[:, 1:], ids[:, :-1])):
            border = (a != b) & np.isin(a, [s["id"] for s in things])
            touching += int(np.isin(b[border], [s["id"] for s in things]).any())
        # Each class is told apart by its colour: the median colour of a segment is its class's
        # (slivers left by occlusion can be mostly darker outline).
        for segment_id, category_id in category.items():
            if (ids == segment_id).sum() < 100:
                continue
            median = np.median(image[ids == segment_id], axis=0)
            assert np.abs(median - COLORS[category_id]).max() < 25
    assert crowd and void and touching and same_class_pair
