"""The COCO panoptic reader: exact segments, class mapping, and one test per validation error.

Every error test breaks a copy of the synthetic dataset the way users break theirs and checks
that the message names the file or value and says how to fix it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from panoptic_train.data.check import check_dataset
from panoptic_train.data.coco import (
    Category,
    ClassMapping,
    PanopticAnnotation,
    Problems,
    Segment,
    read_panoptic_index,
    read_panoptic_json,
)
from panoptic_train.data.synthetic import CATEGORIES
from panoptic_train.errors import ConfigError, DataError


def _segments_from_png(path: Path) -> dict[int, tuple[int, list[int]]]:
    """Independent reference: segment id -> (area, [x, y, w, h]) straight from the PNG."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    result = {}
    for segment_id in np.unique(ids):
        if segment_id == 0:
            continue
        rows, cols = np.nonzero(ids == segment_id)
        box = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        result[int(segment_id)] = (rows.size, [int(v) for v in box])
    return result


def test_reader_returns_the_exact_segments_of_the_masks(synthetic_split: dict[str, str]) -> None:
    index = read_panoptic_index(**synthetic_split)
    raw = json.loads(Path(synthetic_split["annotations"]).read_text())

    assert [c.id for c in index.categories] == [c["id"] for c in CATEGORIES]
    assert len(index.samples) == len(raw["images"]) == 6
    for sample, entry in zip(index.samples, raw["annotations"], strict=True):
        assert sample.image_id == entry["image_id"]
        assert sample.mask_path == Path(synthetic_split["masks"]) / entry["file_name"]
        assert (sample.height, sample.width) == (96, 128)
        reference = _segments_from_png(sample.mask_path)
        assert {s.id: (s.area, list(s.bbox)) for s in sample.segments} == reference
        by_id = {s["id"]: s for s in entry["segments_info"]}
        for segment in sample.segments:
            assert segment.category_id == by_id[segment.id]["category_id"]
            assert segment.iscrowd == bool(by_id[segment.id]["iscrowd"])


def test_class_mapping_orders_classes_as_the_json_and_round_trips() -> None:
    categories = [Category(c["id"], c["name"], bool(c["isthing"])) for c in CATEGORIES]
    mapping = ClassMapping.from_categories(categories, ignore_classes=[2])
    assert mapping.class_ids == (1, 3, 10, 11, 12)
    assert mapping.num_classes == 5
    assert mapping.index_of(10) == 2
    assert mapping.is_thing == (True, True, False, False, False)
    with pytest.raises(KeyError, match="2"):
        mapping.index_of(2)
    as_list = mapping.to_list()
    assert as_list[0] == {"id": 1, "name": "disk", "isthing": True}
    assert ClassMapping.from_list(as_list) == mapping
    with pytest.raises(ConfigError, match="name"):
        ClassMapping.from_list([{"id": 1, "isthing": True}])


class BrokenDataset:
    """A private copy of the synthetic split whose files and JSON a test may change."""

    def __init__(self, source: dict[str, str], root: Path) -> None:
        self.images = root / "images"
        self.masks = root / "masks"
        self.annotations = root / "train.json"
        shutil.copytree(source["images"], self.images)
        shutil.copytree(source["masks"], self.masks)
        shutil.copy(source["annotations"], self.annotations)
        self.json: dict[str, Any] = json.loads(self.annotations.read_text())

    def save_json(self) -> None:
        self.annotations.write_text(json.dumps(self.json))

    @property
    def paths(self) -> dict[str, Path]:
        return {"images": self.images, "masks": self.masks, "annotations": self.annotations}


@pytest.fixture
def broken(synthetic_split: dict[str, str], tmp_path: Path) -> BrokenDataset:
    return BrokenDataset(synthetic_split, tmp_path / "broken")


def _errors(broken: BrokenDataset, **kwargs: Any) -> str:
    """All problems check_dataset finds, and the same DataError from the fast reader."""
    report = check_dataset(**broken.paths, **kwargs)
    assert not report.ok
    return "\n".join(report.errors)


def _reader_error(broken: BrokenDataset, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        read_panoptic_index(**broken.paths, **kwargs)
    return str(info.value)


def test_missing_image(broken: BrokenDataset) -> None:
    (broken.images / "000002.png").unlink()
    message = _reader_error(broken)
    assert "000002.png" in message and "does not exist" in message and "image id 2" in message


def test_missing_mask(broken: BrokenDataset) -> None:
    (broken.masks / "000003.png").unlink()
    message = _reader_error(broken)
    assert f"Mask '{broken.masks / '000003.png'}'" in message and "Add the mask PNG" in message


def test_image_and_mask_size_mismatch(broken: BrokenDataset) -> None:
    Image.new("RGB", (50, 40)).save(broken.images / "000001.png")
    message = _errors(broken)
    assert "000001.png' is 40x50 (HxW)" in message and "is 96x128" in message
    assert "regenerate the mask" in message


def test_json_size_disagrees_with_files(broken: BrokenDataset) -> None:
    broken.json["images"][0]["width"] = 100
    broken.save_json()
    message = _errors(broken)
    assert "size 96x100" in message and "Fix 'height'/'width'" in message


def test_png_segment_missing_from_segments_info(broken: BrokenDataset) -> None:
    removed = broken.json["annotations"][1]["segments_info"].pop()
    broken.save_json()
    message = _errors(broken)
    assert f"{removed['id']} ({removed['area']} px)" in message
    assert "000002.png" in message and "paint those pixels 0 (void)" in message


def test_segments_info_entry_without_pixels(broken: BrokenDataset) -> None:
    broken.json["annotations"][0]["segments_info"].append(
        {"id": 4242, "category_id": 1, "iscrowd": 0, "area": 10, "bbox": [0, 0, 1, 1]}
    )
    broken.save_json()
    message = _errors(broken)
    assert "[4242]" in message and "no pixels" in message and "000001.png" in message


def test_unknown_category_id(broken: BrokenDataset) -> None:
    broken.json["annotations"][2]["segments_info"][0]["category_id"] = 99
    broken.save_json()
    message = _reader_error(broken)
    assert "'category_id' 99 is not in 'categories'" in message and "000003.png" in message


def test_duplicate_image_ids(broken: BrokenDataset) -> None:
    broken.json["images"][1]["id"] = 1
    broken.save_json()
    message = _reader_error(broken)
    assert "image id 1 is used twice" in message and "own id" in message


def test_duplicate_file_names(broken: BrokenDataset) -> None:
    broken.json["images"][1]["file_name"] = "000001.png"
    broken.save_json()
    message = _reader_error(broken)
    assert "file name '000001.png' is listed twice" in message


def test_duplicate_mask_file_names(broken: BrokenDataset) -> None:
    broken.json["annotations"][1]["file_name"] = "000001.png"
    broken.save_json()
    assert "mask '000001.png' is also used by image id 1" in _reader_error(broken)


def test_empty_dataset(broken: BrokenDataset) -> None:
    broken.json["images"], broken.json["annotations"] = [], []
    broken.save_json()
    assert "lists no images: the dataset is empty" in _reader_error(broken)


def test_malformed_json(broken: BrokenDataset) -> None:
    broken.annotations.write_text('{"images": [,]}')
    message = _reader_error(broken)
    assert "is not valid JSON" in message and "line 1, column 13" in message


def test_incomplete_json(broken: BrokenDataset) -> None:
    del broken.json["categories"]
    broken.json["annotations"] = {}
    broken.save_json()
    message = _reader_error(broken)
    assert "missing the key(s) ['categories']" in message
    assert "['annotations'] are not lists" in message


def test_incomplete_entries(broken: BrokenDataset) -> None:
    del broken.json["images"][0]["file_name"]
    del broken.json["annotations"][1]["segments_info"][0]["id"]
    broken.json["categories"][0]["isthing"] = "yes"
    broken.save_json()
    message = _reader_error(broken)
    assert "images[0]: 'file_name' None is not a file name" in message
    assert "segments_info[0]: segment 'id' None" in message
    assert "categories[0]: 'isthing' 'yes' is not 0/1" in message


def test_image_without_annotation(broken: BrokenDataset) -> None:
    del broken.json["annotations"][4]
    broken.save_json()
    message = _reader_error(broken)
    assert "Image '000005.png' (image id 5) has no entry in 'annotations'" in message


def test_corrupt_image(broken: BrokenDataset) -> None:
    (broken.images / "000004.png").write_bytes(b"garbage")
    message = _errors(broken)
    assert "Cannot read image" in message and "000004.png" in message


def test_unknown_ignore_class(broken: BrokenDataset) -> None:
    assert "ignore_classes [77]" in _reader_error(broken, ignore_classes=[77])


def test_missing_directory(broken: BrokenDataset, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"masks directory '.*nowhere' does not exist"):
        read_panoptic_index(broken.images, tmp_path / "nowhere", broken.annotations)


def test_all_problems_are_reported_at_once(broken: BrokenDataset) -> None:
    (broken.images / "000002.png").unlink()
    broken.json["images"][3]["id"] = 1
    broken.json["annotations"][5]["segments_info"][0]["category_id"] = 99
    broken.save_json()
    report = check_dataset(**broken.paths)
    # The 4th: image 4's annotation now points at an image id that has no entry.
    assert len(report.errors) == 4
    assert "'image_id' 4 is not an id in 'images'" in "\n".join(report.errors)
    message = _reader_error(broken)
    assert message.startswith("4 problem(s) in the dataset")


def test_area_mismatch_is_a_warning_not_an_error(broken: BrokenDataset) -> None:
    segment = broken.json["annotations"][0]["segments_info"][0]
    segment["area"] += 3
    broken.save_json()
    report = check_dataset(**broken.paths)
    assert report.ok
    assert len(report.warnings) == 1
    assert (
        f"'area' {segment['area']} in the JSON but {segment['area'] - 3} pixels"
        in (report.warnings[0])
    )
    assert "panopticapi" in report.warnings[0]


def test_check_with_worker_processes_matches_serial(broken: BrokenDataset) -> None:
    (broken.images / "000004.png").write_bytes(b"garbage")
    broken.json["annotations"][1]["segments_info"].pop()
    broken.save_json()
    serial = check_dataset(**broken.paths)
    parallel = check_dataset(**broken.paths, num_workers=2)
    assert parallel.errors == serial.errors and len(serial.errors) == 2


# --- one reader, two modes -----------------------------------------------------------------


def _json_with_five_problems() -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
        "categories": [
            {"id": 1, "name": "cat", "isthing": 1},
            {"id": "2", "name": "dog", "isthing": 0},
        ],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [{"id": 0, "category_id": 1}, {"id": 5, "category_id": 7}],
            },
            {"image_id": 3, "file_name": "c.png", "segments_info": []},
        ],
    }


# Each problem of `_json_with_five_problems`, in the order the reader finds them, with an edit
# that fixes it alone.
_PROBLEMS_AND_FIXES = [
    (
        "categories[1]: 'id' '2' is not an integer. Fix that category entry.",
        lambda content: content["categories"].pop(1),
    ),
    (
        "images[1]: image id 1 is used twice (also by 'a.jpg'). Give every image its own id.",
        lambda content: content["images"].pop(1),
    ),
    (
        "annotations[0] (image id 1, 'a.png').segments_info[0]: segment 'id' 0 is not an "
        "integer in 1..16777215 (0 is void in the PNG).",
        lambda content: content["annotations"][0]["segments_info"][0].update(id=4),
    ),
    (
        "annotations[1]: 'image_id' 3 is not an id in 'images' (add an 'images' entry for it "
        "or remove this annotation). Fix that entry.",
        lambda content: content["annotations"].pop(1),
    ),
    (
        "'category_id' 7 is not in 'categories' (ids [1]) but 1 segment(s) use it: "
        "annotations[0] (image id 1, 'a.png').segments_info[1]. Add the category to "
        "'categories' or fix the segments' 'category_id'.",
        lambda content: content["annotations"][0]["segments_info"][1].update(category_id=1),
    ),
]


def test_collect_all_and_fail_fast_find_the_same_problems_in_the_same_order(
    tmp_path: Path,
) -> None:
    """Fixing the problems one by one: collect-all lists those left, fail-fast raises the first
    of them; once all are fixed both read the same content."""
    path = tmp_path / "panoptic.json"
    content = _json_with_five_problems()
    for step, (_, fix) in enumerate(_PROBLEMS_AND_FIXES):
        path.write_text(json.dumps(content))
        collected = Problems()
        read_panoptic_json(path, collected)
        assert collected.messages == [message for message, _ in _PROBLEMS_AND_FIXES[step:]]
        with pytest.raises(DataError) as error:
            read_panoptic_json(path, Problems("The JSON 'panoptic.json'", fail_fast=True))
        assert str(error.value) == f"The JSON 'panoptic.json': {collected.messages[0]}"
        fix(content)
    path.write_text(json.dumps(content))
    collected = Problems()
    read = read_panoptic_json(path, collected)
    assert collected.messages == []
    assert read == read_panoptic_json(path, Problems(fail_fast=True))
    assert read.categories == (Category(1, "cat", True),)
    assert read.annotations == (
        PanopticAnnotation(
            1,
            "a.png",
            (Segment(4, 1, False, None, None), Segment(5, 1, False, None, None)),
        ),
    )
    assert read.annotated == {1}


def test_a_prediction_is_read_against_the_ground_truth_categories(tmp_path: Path) -> None:
    """Without 'images' and 'categories'; its iscrowd, area and bbox are not read."""
    path = tmp_path / "pred.json"
    segments = [
        {"id": 3, "category_id": 1, "area": -1, "iscrowd": "no"},
        {"id": 4, "category_id": 2},
    ]
    path.write_text(json.dumps({"annotations": [{"image_id": "x", "file_name": "x.png"}]}))
    ground_truth = [Category(1, "cat", True)]

    def read(problems: Problems):
        return read_panoptic_json(
            path,
            problems,
            kind="prediction",
            with_images=False,
            ground_truth=ground_truth,
            segment_attributes=False,
        )

    collected = Problems()
    read(collected)
    assert collected.messages == [
        "annotations[0]: 'segments_info' None is not a list. Fix that entry."
    ]
    path.write_text(
        json.dumps(
            {"annotations": [{"image_id": "x", "file_name": "x.png", "segments_info": segments}]}
        )
    )
    with pytest.raises(DataError) as error:
        read(Problems("The prediction JSON 'pred.json'", fail_fast=True))
    assert str(error.value) == (
        "The prediction JSON 'pred.json': 'category_id' 2 is not in the ground truth's "
        "'categories' (ids [1]) but 1 segment(s) use it: annotations[0] (image id 'x', "
        "'x.png').segments_info[1]. Map the predicted classes to those category ids."
    )
    segments.pop()
    path.write_text(
        json.dumps(
            {"annotations": [{"image_id": "x", "file_name": "x.png", "segments_info": segments}]}
        )
    )
    read_content = read(Problems(fail_fast=True))
    assert read_content.annotations == (
        PanopticAnnotation("x", "x.png", (Segment(3, 1, False, None, None),)),
    )
    assert read_content.images == {}
