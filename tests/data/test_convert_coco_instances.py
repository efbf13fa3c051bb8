"""`convert coco-instances`: a COCO instances JSON with polygons, uncompressed and compressed RLE
and crowd, plus stuff from PNGs or a stuff JSON; every pixel against a map drawn by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_api

from panoptic_train.cli import main
from panoptic_train.data.convert import convert_coco_instances
from panoptic_train.errors import ConfigError, DataError, MissingDependencyError

HEIGHT, WIDTH = 5, 6
THING_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE as COCO's JSON stores it (counts a string), from pycocotools' encoder."""
    encoded = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Image 10. Annotation order: the person B first, then the car A that B overlaps, a crowd of
# people C, a car D that overlaps C, and a car E whose polygon has 2 points (no area).
B = {  # uncompressed RLE, column-major runs: pixels x 2..3, y 1..2 (flat indices 11, 12, 16, 17)
    "id": 101,
    "image_id": 10,
    "category_id": 1,
    "iscrowd": 0,
    "segmentation": {"size": [HEIGHT, WIDTH], "counts": [11, 2, 3, 2, 12]},
}
A = {  # rectangle polygon (0, 0)-(4, 3): pycocotools fills x 0..3, y 0..2
    "id": 102,
    "image_id": 10,
    "category_id": 3,
    "iscrowd": 0,
    "segmentation": [[0, 0, 4, 0, 4, 3, 0, 3]],
}
C = {
    "id": 103,
    "image_id": 10,
    "category_id": 1,
    "iscrowd": 1,
    "segmentation": _rle(_box(4, 0, 6, 5)),
}
D = {
    "id": 104,
    "image_id": 10,
    "category_id": 3,
    "iscrowd": 0,
    "segmentation": [[5, 3, 6, 3, 6, 5, 5, 5]],
}
E = {"id": 105, "image_id": 10, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 2, 2]]}

# The expected result, drawn by hand: 1 = A, 2 = B, 3 = C, 4 = D, 0 = void.
SMALLER_WINS = np.array(
    [
        [1, 1, 1, 1, 3, 3],
        [1, 1, 2, 2, 3, 3],
        [1, 1, 2, 2, 3, 3],
        [0, 0, 0, 0, 3, 4],
        [0, 0, 0, 0, 3, 4],
    ]
)
LABELS = {1: (3, 0), 2: (1, 0), 3: (1, 1), 4: (3, 0), 0: None}

# Stuff of image 10 (category id per pixel, 0 = unlabeled, 183 = "other"); only rows 3 and 4
# stay visible under the things.
STUFF = np.array(
    [
        [101, 101, 101, 101, 101, 101],
        [101, 101, 101, 101, 101, 101],
        [183, 183, 183, 183, 183, 183],
        [101, 100, 0, 183, 100, 100],
        [100, 100, 100, 100, 100, 100],
    ],
    dtype=np.uint8,
)
# With stuff: 5 = grass (100), 6 = sky (101), 7 = "other" (void), 0 = unlabeled (void).
WITH_STUFF = np.array(
    [
        [1, 1, 1, 1, 3, 3],
        [1, 1, 2, 2, 3, 3],
        [1, 1, 2, 2, 3, 3],
        [6, 5, 0, 7, 3, 4],
        [5, 5, 5, 5, 3, 4],
    ]
)
STUFF_LABELS = {**LABELS, 5: (100, 0), 6: (101, 0), 7: None}
STUFF_CATEGORIES = [
    {"id": 100, "name": "grass", "isthing": False},
    {"id": 101, "name": "sky", "isthing": False},
    {"id": 183, "name": "other", "isthing": False},
]


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Path]:
    """Images 10 (JPEG, annotated) and 11 (PNG, listed as .jpg, no annotation), the JSON, and
    stuff PNGs with their classes file."""
    images = tmp_path / "train2017"
    images.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
        images / "000000000010.jpg"
    )
    Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).save(
        images / "000000000011.png"
    )
    instances = {
        "info": {"description": "test"},
        "images": [
            {"id": 10, "file_name": "000000000010.jpg", "height": HEIGHT, "width": WIDTH},
            {"id": 11, "file_name": "000000000011.jpg", "height": 3, "width": 4},
        ],
        "annotations": [B, A, C, D, E],
        "categories": THING_CATEGORIES,
    }
    annotations = tmp_path / "instances_train2017.json"
    annotations.write_text(json.dumps(instances))
    stuff = tmp_path / "stuff_train2017_pixelmaps"
    stuff.mkdir()
    Image.fromarray(STUFF).save(stuff / "000000000010.png")
    Image.fromarray(np.full((3, 4), 100, dtype=np.uint8)).save(stuff / "000000000011.png")
    classes = tmp_path / "stuff_classes.yaml"
    classes.write_text(yaml.safe_dump({"classes": STUFF_CATEGORIES, "ignore": [0]}))
    return {"images": images, "annotations": annotations, "stuff": stuff, "classes": classes}


def _convert(source: dict[str, Path], out: Path, **options: Any) -> Any:
    return convert_coco_instances(
        source["images"], source["annotations"], out, split="train", **options
    )


@pytest.mark.parametrize(
    ("overlap", "expected", "void", "empty"),
    [
        ("smaller", SMALLER_WINS, {}, 1),
        ("last", np.where(SMALLER_WINS == 2, 1, SMALLER_WINS), {}, 2),  # A is after B
        ("void", np.where(SMALLER_WINS == 2, 0, SMALLER_WINS), {"overlapping annotations": 4}, 2),
    ],
)
def test_things_every_pixel_by_overlap_rule(
    source: dict[str, Path],
    tmp_path: Path,
    converted: type,
    overlap: str,
    expected: np.ndarray,
    void: dict[str, int],
    empty: int,
) -> None:
    summary = _convert(source, tmp_path / "out", overlap=overlap)
    split = converted(tmp_path / "out", "train")
    labels = {key: LABELS[key] for key in np.unique(expected).tolist()}
    split.assert_segments("000000000010.png", expected, labels)
    split.assert_segments("000000000011.png", np.zeros((3, 4), dtype=int), {0: None})
    split.check()
    assert split.json["images"] == [
        {"id": 10, "file_name": "000000000010.jpg", "height": HEIGHT, "width": WIDTH},
        {"id": 11, "file_name": "000000000011.png", "height": 3, "width": 4},
    ]
    assert split.json["categories"] == [
        {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
        {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
    ]
    covered = int((expected == 0).sum()) - sum(void.values())
    named = {f"{reason} (overlap='void')": count for reason, count in void.items()}
    assert summary.void_pixels == {"not covered by any annotation": covered + 12} | named
    assert summary.empty_segments == empty  # E always; B too when A covers it
    assert f"{empty} annotation(s) had no visible pixels" in str(summary)


def test_stuff_from_pngs(source: dict[str, Path], tmp_path: Path, converted: type) -> None:
    summary = _convert(
        source,
        tmp_path / "out",
        stuff_masks=source["stuff"],
        stuff_classes=source["classes"],
        stuff_ignore=[183],
    )
    split = converted(tmp_path / "out", "train")
    split.assert_segments("000000000010.png", WITH_STUFF, STUFF_LABELS)
    split.assert_segments("000000000011.png", np.zeros((3, 4), dtype=int), {0: (100, 0)})
    split.check()
    assert [c["id"] for c in split.json["categories"]] == [1, 3, 100, 101]
    assert summary.void_pixels == {"ignore value 0": 1, "stuff category 183 (stuff_ignore)": 1}


def test_stuff_from_a_json(source: dict[str, Path], tmp_path: Path, converted: type) -> None:
    # COCO-stuff style: RLE per (image, category); grass comes as two annotations, one segment.
    grass = STUFF == 100
    rows = np.arange(HEIGHT)[:, None]
    parts = [
        (100, grass & (rows == 3)),
        (100, grass & (rows == 4)),
        (101, STUFF == 101),
        (183, STUFF == 183),
    ]
    stuff_json = {
        "images": [{"id": 10, "file_name": "000000000010.jpg", "height": 5, "width": 6}],
        "annotations": [
            {
                "id": 9000 + i,
                "image_id": 10,
                "category_id": c,
                "iscrowd": 0,
                "segmentation": _rle(m),
            }
            for i, (c, m) in enumerate(parts)
        ],
        "categories": [
            {"id": 100, "name": "grass", "supercategory": "plant"},
            {"id": 101, "name": "sky", "supercategory": "sky"},
            {"id": 183, "name": "other", "supercategory": "other"},
        ],
    }
    path = tmp_path / "stuff_train2017.json"
    path.write_text(json.dumps(stuff_json))
    summary = _convert(source, tmp_path / "out", stuff_annotations=path, stuff_ignore=[183])
    split = converted(tmp_path / "out", "train")
    split.assert_segments("000000000010.png", WITH_STUFF, STUFF_LABELS)
    split.check()
    assert split.json["categories"][2:] == [
        {"id": 100, "name": "grass", "isthing": 0, "supercategory": "plant"},
        {"id": 101, "name": "sky", "isthing": 0, "supercategory": "sky"},
    ]
    assert summary.void_pixels == {
        "not covered by any annotation": 1 + 12,  # the unlabeled pixel and all of image 11
        "stuff category 183 (stuff_ignore)": 1,
    }


def _edit_json(source: dict[str, Path], edit: Any) -> None:
    content = json.loads(source["annotations"].read_text())
    edit(content)
    source["annotations"].write_text(json.dumps(content))


def test_bad_annotations_are_all_listed(source: dict[str, Path], tmp_path: Path) -> None:
    def edit(content: dict[str, Any]) -> None:
        content["annotations"][1]["category_id"] = 99
        content["annotations"][2]["image_id"] = 12
        content["images"].append({"id": 13, "file_name": "missing.jpg"})

    _edit_json(source, edit)
    with pytest.raises(DataError) as info:
        _convert(source, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"3 problem(s) in the dataset of '{source['annotations']}'")
    assert "annotations[1] (id 102)" in message and "'category_id' 99 is not in" in message
    assert "annotations[2] (id 103)" in message and "'image_id' 12 is not an id" in message
    assert f"Image '{source['images'] / 'missing.jpg'}' (image id 13) does not exist" in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda c: c["annotations"][0]["segmentation"].update(size=[4, 6]),
            "annotations[0] (id 101) of '{json}': the RLE has 'size' [4, 6]",
        ),
        (
            lambda c: c["annotations"][1].update(segmentation=[[0, 0, 4, 0, 4]]),
            "annotations[1] (id 102) of '{json}': 'segmentation' is a list but not of polygons",
        ),
        (
            lambda c: c["images"][0].update(height=6),
            "The JSON gives image id 10 the size 6x6 (HxW), but",
        ),
    ],
)
def test_bad_segmentations_and_sizes(
    source: dict[str, Path], tmp_path: Path, edit: Any, expected: str
) -> None:
    _edit_json(source, edit)
    with pytest.raises(DataError) as info:
        _convert(source, tmp_path / "out")
    assert expected.format(json=source["annotations"]) in str(info.value)
    assert not (tmp_path / "out" / "images" / "train").exists()


def test_stuff_problems(source: dict[str, Path], tmp_path: Path) -> None:
    stuff = {"stuff_masks": source["stuff"], "stuff_classes": source["classes"]}
    (source["stuff"] / "000000000011.png").unlink()
    with pytest.raises(DataError, match=r"The stuff PNG '.*000000000011\.png' of the image"):
        _convert(source, tmp_path / "out", **stuff)
    Image.fromarray(STUFF[:4]).save(source["stuff"] / "000000000011.png")
    with pytest.raises(DataError, match=r"000000000011\.png' is 4x6 \(HxW\) but its image"):
        _convert(source, tmp_path / "out", **stuff)
    source["classes"].write_text(
        yaml.safe_dump({"classes": [{"id": 3, "name": "road", "isthing": False}]})
    )
    with pytest.raises(DataError, match="Category id 3 is both the thing 'car'"):
        _convert(source, tmp_path / "out", **stuff)
    source["classes"].write_text(
        yaml.safe_dump({"classes": [{"id": 7, "name": "bus", "isthing": True}]})
    )
    with pytest.raises(ConfigError, match=r"lists thing classes \['bus'\]"):
        _convert(source, tmp_path / "out", **stuff)


def test_option_conflicts(source: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        _convert(source, tmp_path / "out", stuff_masks=source["stuff"])
    with pytest.raises(ConfigError, match="not both"):
        _convert(source, tmp_path / "out", stuff_masks="a", stuff_annotations="b")
    with pytest.raises(ConfigError, match="stuff_ignore needs stuff"):
        _convert(source, tmp_path / "out", stuff_ignore=[183])
    with pytest.raises(ConfigError, match="'smaller', 'last' or 'void', not 'largest'"):
        _convert(source, tmp_path / "out", overlap="largest")
    with pytest.raises(ConfigError, match=r"stuff_ignore \[5\] are not stuff category ids"):
        _convert(
            source,
            tmp_path / "out",
            stuff_masks=source["stuff"],
            stuff_classes=source["classes"],
            stuff_ignore=[5],
        )


def test_without_pycocotools_the_error_names_the_extra(
    source: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)  # import now fails
    with pytest.raises(MissingDependencyError, match=r'pip install "panoptic-train\[convert\]"'):
        _convert(source, tmp_path / "out")


def test_command_line(
    source: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["convert", "coco-instances", "--images", str(source["images"])]
    arguments += ["--annotations", str(source["annotations"]), "--split", "train"]
    arguments += ["--stuff-masks", str(source["stuff"]), "--stuff-classes", str(source["classes"])]
    arguments += ["--stuff-ignore", "183", "--overlap", "void", "--out", str(tmp_path / "out")]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "Converted coco-instances split 'train': 2 images, 6 segments (1 crowd)" in out
    assert "overlapping annotations (overlap='void')" in out
