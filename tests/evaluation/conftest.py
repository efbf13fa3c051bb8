"""Random panoptic scenes and a COCO panoptic file writer shared by the evaluation tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


@dataclass
class Scene:
    """One image: (H, W, 2) int64 maps of (class index, segment id), void = -1, and crowd."""

    pred: np.ndarray
    target: np.ndarray
    crowd: np.ndarray


def _paint(maps: np.ndarray, box: tuple[int, int, int, int], label: tuple[int, int]) -> None:
    y0, x0, y1, x1 = box
    maps[y0:y1, x0:x1] = label


def _random_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    y0, x0 = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
    return (
        y0,
        x0,
        int(rng.integers(y0 + 2, min(height, y0 + height // 2) + 1)),
        int(rng.integers(x0 + 2, min(width, x0 + width // 2) + 1)),
    )


def random_scene(
    rng: np.random.Generator, num_classes: int, height: int = 24, width: int = 32
) -> Scene:
    """Overlapping rectangles as ground truth (some crowd, void around), and a prediction made of
    jittered copies with some classes changed, some segments dropped and some extra ones, so that
    IoUs spread around the 0.5 threshold."""
    target = np.full((height, width, 2), -1, dtype=np.int64)
    crowd = np.zeros((height, width), dtype=bool)
    pred = np.full((height, width, 2), -1, dtype=np.int64)
    ids = iter(rng.choice(np.arange(1, 2**24), size=64, replace=False).tolist())
    for _ in range(int(rng.integers(1, 9))):
        box = _random_box(rng, height, width)
        label = int(rng.integers(num_classes))
        _paint(target, box, (label, next(ids)))
        is_crowd = rng.random() < 0.2
        crowd[box[0] : box[2], box[1] : box[3]] = is_crowd
        if rng.random() < 0.8:
            jitter = rng.integers(-3, 4, size=4)
            y0, x0, y1, x1 = np.clip(np.array(box) + jitter, 0, [height, width, height, width])
            if rng.random() < 0.2:
                label = int(rng.integers(num_classes))
            if y1 > y0 and x1 > x0:
                _paint(pred, (y0, x0, y1, x1), (label, next(ids)))
    for _ in range(int(rng.integers(0, 3))):
        extra = (int(rng.integers(num_classes)), next(ids))
        _paint(pred, _random_box(rng, height, width), extra)
    if rng.random() < 0.5:
        y0, x0, y1, x1 = _random_box(rng, height, width)
        target[y0:y1, x0:x1] = -1
        crowd[y0:y1, x0:x1] = False
    return Scene(pred=pred, target=target, crowd=crowd)


def make_scenes(count: int, num_classes: int, seed: int) -> list[Scene]:
    """A reproducible list of random scenes."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, num_classes) for _ in range(count)]


def segment_pngs(
    maps: np.ndarray, crowd: np.ndarray | None, category_ids: Sequence[int]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(H, W, 3) uint8 COCO panoptic PNG pixels and `segments_info` of a (class, id) map."""
    labelled = maps[..., 0] >= 0
    ids = np.where(labelled, maps[..., 1], 0)
    segments = []
    for segment_id in np.unique(ids[labelled]).tolist():
        pixels = ids == segment_id
        entry = {
            "id": segment_id,
            "category_id": category_ids[int(maps[..., 0][pixels][0])],
            "area": int(pixels.sum()),
            "bbox": [0, 0, 1, 1],
        }
        if crowd is not None:
            entry["iscrowd"] = int(crowd[pixels].any())
        segments.append(entry)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
    return rgb, segments


@dataclass
class PanopticFiles:
    gt_json: Path
    gt_masks: Path
    pred_json: Path
    pred_masks: Path

    def args(self) -> tuple[Path, Path, Path, Path]:
        return self.gt_json, self.gt_masks, self.pred_json, self.pred_masks


def write_side(
    root: Path,
    name: str,
    images: Sequence[tuple[int, np.ndarray, list[dict[str, Any]]]],
    categories: Sequence[dict[str, Any]],
) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>/<image id>.png` from (image id, rgb, segments_info)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, rgb, segments in images:
        file_name = f"{image_id:012d}.png"
        Image.fromarray(rgb).save(folder / file_name)
        annotations.append(
            {"image_id": image_id, "file_name": file_name, "segments_info": segments}
        )
    content = {
        "images": [
            {
                "id": image_id,
                "file_name": f"{image_id:012d}.jpg",
                "height": rgb.shape[0],
                "width": rgb.shape[1],
            }
            for image_id, rgb, _ in images
        ],
        "annotations": annotations,
        "categories": list(categories),
    }
    json_path = root / f"{name}.json"
    json_path.write_text(json.dumps(content))
    return json_path, folder


def categories_for(is_thing: Sequence[bool]) -> list[dict[str, Any]]:
    """COCO categories with non-contiguous ids (3, 5, 7, ...), so id and index differ."""
    return [
        {"id": 3 + 2 * index, "name": f"class{index}", "isthing": int(thing), "color": [0, 0, 0]}
        for index, thing in enumerate(is_thing)
    ]


def write_scenes(
    root: Path, scene_list: Sequence[Scene], categories: Sequence[dict[str, Any]]
) -> PanopticFiles:
    """Ground truth and prediction folders of `scene_list` (JSON areas equal to pixel counts)."""
    category_ids = [category["id"] for category in categories]
    gt_images, pred_images = [], []
    for image_id, scene in enumerate(scene_list, start=1):
        gt_rgb, gt_segments = segment_pngs(scene.target, scene.crowd, category_ids)
        pred_rgb, pred_segments = segment_pngs(scene.pred, None, category_ids)
        gt_images.append((image_id, gt_rgb, gt_segments))
        pred_images.append((image_id, pred_rgb, pred_segments))
    gt_json, gt_masks = write_side(root, "gt", gt_images, categories)
    pred_json, pred_masks = write_side(root, "pred", pred_images, categories)
    return PanopticFiles(gt_json, gt_masks, pred_json, pred_masks)


class Coco:
    """The helpers above, bound to a test's temporary folder (tests import no conftest)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    scenes = staticmethod(make_scenes)
    categories = staticmethod(categories_for)
    segment_pngs = staticmethod(segment_pngs)

    def write_side(
        self,
        name: str,
        images: Sequence[tuple[int, np.ndarray, list[dict[str, Any]]]],
        categories: Sequence[dict[str, Any]],
    ) -> tuple[Path, Path]:
        return write_side(self.root, name, images, categories)

    def write_scenes(
        self, scene_list: Sequence[Scene], categories: Sequence[dict[str, Any]]
    ) -> PanopticFiles:
        return write_scenes(self.root, scene_list, categories)


@pytest.fixture
def coco(tmp_path: Path) -> Coco:
    return Coco(tmp_path)
