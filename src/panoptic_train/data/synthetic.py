"""A deterministic synthetic COCO panoptic dataset, for the demo, the tests and first tries.

Each image has stuff bands (sky, grass, sand) with wavy borders and thing instances (disks, boxes,
triangles) that touch and occlude each other, sometimes a crowd region (a cluster of small shapes
of one thing class) and a void blob. Every class has its own colour and shape, and every thing
instance a darker outline, so a tiny model learns to separate classes and same-class instances
within a few CPU minutes. Images are lossless PNG by default, so their colours are exact.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from panoptic_train._io import atomic_write_json
from panoptic_train._types import PathLike
from panoptic_train.data.io import encode_segment_ids
from panoptic_train.errors import ConfigError

# COCO-style category entries. Ids are deliberately not contiguous (and things come first, as in
# COCO) so that code relying on "category id == class index" fails on this dataset too.
CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "disk", "supercategory": "shape", "isthing": 1, "color": [220, 40, 40]},
    {"id": 2, "name": "box", "supercategory": "shape", "isthing": 1, "color": [235, 200, 30]},
    {"id": 3, "name": "triangle", "supercategory": "shape", "isthing": 1, "color": [190, 60, 210]},
    {"id": 10, "name": "sky", "supercategory": "scene", "isthing": 0, "color": [80, 140, 240]},
    {"id": 11, "name": "grass", "supercategory": "scene", "isthing": 0, "color": [50, 165, 60]},
    {"id": 12, "name": "sand", "supercategory": "scene", "isthing": 0, "color": [150, 105, 60]},
)
THING_IDS: tuple[int, ...] = tuple(c["id"] for c in CATEGORIES if c["isthing"])
STUFF_IDS: tuple[int, ...] = tuple(c["id"] for c in CATEGORIES if not c["isthing"])
_COLORS = {c["id"]: np.array(c["color"], dtype=np.float32) for c in CATEGORIES}
_SHAPES = {1: "disk", 2: "box", 3: "triangle"}

_OUTLINE_SHADE = 0.5  # outline colour = class colour x this
_OUTLINE_WIDTH_FRACTION = 0.005  # of the shorter image side, at least 1 pixel
_NOISE_STD = 6.0  # per-pixel Gaussian noise, in 8-bit units
_MIN_THING_AREA_FRACTION = 0.002  # instances occluded below this become void


def write_dataset(
    root: PathLike,
    num_images: int,
    image_size: tuple[int, int] = (480, 640),
    seed: int = 0,
    split: str = "train",
    image_format: str = "png",
    crowd_probability: float = 0.3,
    void_probability: float = 0.5,
) -> dict[str, str]:
    """Write `num_images` images, mask PNGs and the JSON of one split under `root`.

    Layout: root/images/<split>/NNNNNN.<image_format>, root/annotations/<split>/NNNNNN.png,
    root/annotations/<split>.json. The content depends only on (seed, split, image_size), so
    `split="val"` with the same seed gives images different from the train split's.
    Returns the split's `data` entry: {"images", "masks", "annotations"} as strings.
    """
    if image_format not in ("png", "jpg"):
        raise ConfigError(f"image_format must be 'png' or 'jpg', not {image_format!r}.")
    root_path = Path(root)
    images_dir = root_path / "images" / split
    masks_dir = root_path / "annotations" / split
    annotations_path = root_path / "annotations" / f"{split}.json"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    height, width = image_size

    image_entries, annotation_entries = [], []
    for image_id in range(1, num_images + 1):
        layout = _draw_layout(rng, height, width, crowd_probability, void_probability)
        image = _render(rng, layout)
        stem = f"{image_id:06d}"
        image_name, mask_name = f"{stem}.{image_format}", f"{stem}.png"
        if image_format == "png":
            Image.fromarray(image).save(images_dir / image_name, compress_level=1)
        else:
            Image.fromarray(image).save(images_dir / image_name, quality=95)
        Image.fromarray(encode_segment_ids(layout.ids)).save(
            masks_dir / mask_name, compress_level=1
        )
        image_entries.append(
            {"id": image_id, "file_name": image_name, "height": height, "width": width}
        )
        annotation_entries.append(
            {
                "image_id": image_id,
                "file_name": mask_name,
                "segments_info": _segments_info(layout),
            }
        )
    atomic_write_json(
        {
            "info": {"description": f"panoptic_train synthetic dataset (seed {seed}, {split})"},
            "images": image_entries,
            "annotations": annotation_entries,
            "categories": [dict(category) for category in CATEGORIES],
        },
        annotations_path,
    )
    return {
        "images": str(images_dir),
        "masks": str(masks_dir),
        "annotations": str(annotations_path),
    }


def _shape_mask(
    kind: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    """Boolean mask of a shape centred at (cy, cx) with half-extents (ry, rx) on a pixel grid."""
    dy, dx = ys - cy, xs - cx
    if kind == "disk":
        return (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0
    if kind == "box":
        return (np.abs(dy) <= ry) & (np.abs(dx) <= rx)
    # Upward triangle: apex at the top, base at the bottom.
    depth = (dy + ry) / (2 * ry)  # 0 at the apex, 1 at the base
    return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * rx)


@dataclass
class _Layout:
    """One drawn image: segment id per pixel (0 = void), outline pixels, segment classes."""

    ids: np.ndarray
    outline: np.ndarray
    category_of: dict[int, int] = field(default_factory=dict)
    crowd: set[int] = field(default_factory=set)
    outlined: set[int] = field(default_factory=set)


def _draw_layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    crowd_probability: float,
    void_probability: float,
) -> _Layout:
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    layout = _Layout(
        ids=np.zeros((height, width), dtype=np.int32),
        outline=np.zeros((height, width), dtype=bool),
    )
    # Random 24-bit ids exercise all three PNG channels of the encoding.
    fresh_ids = iter(rng.choice(np.arange(1, 2**24, 977), size=64, replace=False).tolist())

    def paint(mask: np.ndarray, category_id: int) -> int:
        segment_id = next(fresh_ids)
        layout.ids[mask] = segment_id
        layout.outline[mask] = False
        layout.category_of[segment_id] = category_id
        return segment_id

    # Stuff: 2 or 3 horizontal bands with wavy borders, classes in random order.
    num_bands = int(rng.integers(2, 4))
    stuff = rng.permutation(STUFF_IDS)[:num_bands]
    cuts = np.sort(rng.uniform(0.2, 0.8, size=num_bands - 1)) * height
    band = np.zeros((height, width), dtype=np.int32)
    for cut in cuts:
        amplitude = rng.uniform(0.01, 0.06) * height
        period = rng.uniform(0.3, 1.2) * width
        border = cut + amplitude * np.sin(2 * np.pi * xs / period + rng.uniform(0, 2 * np.pi))
        band += ys >= border
    for index, category_id in enumerate(stuff):
        paint(band == index, int(category_id))

    if rng.random() < void_probability:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.04, 0.12) * height, rng.uniform(0.04, 0.12) * width
        layout.ids[_shape_mask("disk", ys, xs, cy, cx, ry, rx)] = 0

    size = min(height, width)
    outline_width = max(1.0, round(_OUTLINE_WIDTH_FRACTION * size))
    if rng.random() < crowd_probability:
        category_id = int(rng.choice(THING_IDS))
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        cluster = np.zeros((height, width), dtype=bool)
        for _ in range(int(rng.integers(6, 11))):
            r = rng.uniform(0.02, 0.04) * size
            oy, ox = rng.normal(0, 0.06 * size, size=2)
            cluster |= _shape_mask(_SHAPES[category_id], ys, xs, cy + oy, cx + ox, r, r)
        layout.crowd.add(paint(cluster, category_id))

    previous: tuple[float, float, float] | None = None
    for _ in range(int(rng.integers(2, 8))):
        category_id = int(rng.choice(THING_IDS))
        r = rng.uniform(0.07, 0.18) * size
        if previous is not None and rng.random() < 0.5:
            # Next to the previous instance: the two touch or overlap.
            angle = rng.uniform(0, 2 * np.pi)
            distance = (previous[2] + r) * rng.uniform(0.6, 1.0)
            cy, cx = previous[0] + distance * np.sin(angle), previous[1] + distance * np.cos(angle)
        else:
            cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        ry, rx = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0)
        kind = _SHAPES[category_id]
        shape = _shape_mask(kind, ys, xs, cy, cx, ry, rx)
        inner_ry, inner_rx = max(ry - outline_width, 1.0), max(rx - outline_width, 1.0)
        inner = _shape_mask(kind, ys, xs, cy, cx, inner_ry, inner_rx)
        layout.outlined.add(paint(shape, category_id))
        layout.outline |= shape & ~inner
        previous = (cy, cx, r)

    # Instances hidden almost entirely behind others would be unlearnable slivers: make them void.
    present, counts = np.unique(layout.ids, return_counts=True)
    min_area = _MIN_THING_AREA_FRACTION * height * width
    for segment_id, count in zip(present.tolist(), counts.tolist(), strict=True):
        if segment_id in layout.outlined and count < min_area:
            layout.ids[layout.ids == segment_id] = 0
    layout.outline &= layout.ids != 0
    return layout


def _render(rng: np.random.Generator, layout: _Layout) -> np.ndarray:
    """RGB image: class colour per segment, darker outlines, black void, mild noise."""
    segment_ids = np.array([0, *layout.category_of], dtype=np.int32)
    palette = np.stack(
        [np.zeros(3, np.float32)] + [_COLORS[c] for c in layout.category_of.values()]
    )
    order = np.argsort(segment_ids)
    position = order[np.searchsorted(segment_ids[order], layout.ids)]
    image = palette[position]
    image[layout.outline] *= _OUTLINE_SHADE
    image *= rng.uniform(0.92, 1.08)  # global brightness, so colours are not a lookup table
    image += rng.normal(0.0, _NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _segments_info(layout: _Layout) -> list[dict[str, Any]]:
    """COCO `segments_info` of the segments present in the final id map (area and bbox exact)."""
    info = []
    for segment_id, category_id in layout.category_of.items():
        rows, cols = np.nonzero(layout.ids == segment_id)
        if rows.size == 0:
            continue
        x0, y0 = int(cols.min()), int(rows.min())
        info.append(
            {
                "id": segment_id,
                "category_id": category_id,
                "iscrowd": int(segment_id in layout.crowd),
                "area": int(rows.size),
                "bbox": [x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1],
            }
        )
    return info
