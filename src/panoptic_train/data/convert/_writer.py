"""The output side every converter shares: one split of a COCO panoptic dataset on disk.

Under OUT: `images/<split>/` (the source images copied or linked byte for byte, never
re-encoded), `annotations/<split>/*.png` (segment id per pixel = R + 256·G + 256²·B, 0 = void),
`annotations/<split>.json` and `data.yaml` (the `data` argument of training). Each image is
converted and written by one call (in a worker process when asked), and the JSON comes last, so
a failed conversion leaves no dataset that looks complete: the split's folders are removed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import yaml
from PIL import Image

from panoptic_train._io import (
    atomic_open,
    atomic_write,
    atomic_write_json,
    ensure_output_dir,
    output_error,
)
from panoptic_train._types import PathLike
from panoptic_train.data._parallel import map_in_processes
from panoptic_train.data.coco import Category, format_problems
from panoptic_train.data.convert.summary import ConversionSummary
from panoptic_train.data.io import encode_segment_ids
from panoptic_train.errors import ConfigError, DataError

LinkMode = Literal["hard", "symlink"]
TaskT = TypeVar("TaskT")

DATA_FILE = "data.yaml"
# Splits that `data.yaml` (the `data` argument) knows; other split names are written but not listed.
DATA_SPLITS = ("train", "val")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SegmentLabel:
    category_id: int
    iscrowd: bool = False


@dataclass(frozen=True)
class PanopticMap:
    """One image's annotation: a segment id per pixel (0 = void) with each segment's label, and
    for void pixels the index of the reason they are void in `void_reasons`."""

    ids: np.ndarray  # (H, W) integer
    labels: Mapping[int, SegmentLabel]
    void_reason: np.ndarray  # (H, W) integer, read where ids == 0
    void_reasons: tuple[str, ...]


@dataclass(frozen=True)
class PanopticImage:
    """What a converter makes of one source image: where the image is and its annotation."""

    image_path: Path
    image_id: int
    image_name: str  # relative path under images/<split>/
    mask_name: str  # relative path under annotations/<split>/
    panoptic: PanopticMap


@dataclass(frozen=True)
class WrittenImage:
    """The JSON entries of one written image and its pixel statistics."""

    image: dict[str, Any]
    annotation: dict[str, Any]
    void_pixels: dict[str, int]
    empty_segments: int


@dataclass(frozen=True)
class SplitLayout:
    """Where one split goes under the output root, and how images get there."""

    root: Path
    split: str
    link: LinkMode | None = None

    @property
    def images_dir(self) -> Path:
        return self.root / "images" / self.split

    @property
    def masks_dir(self) -> Path:
        return self.root / "annotations" / self.split

    @property
    def annotations_path(self) -> Path:
        return self.root / "annotations" / f"{self.split}.json"

    def write(self, converted: PanopticImage) -> WrittenImage:
        """Place the image, write the mask PNG, and return the image's JSON entries."""
        panoptic = converted.panoptic
        _place_image(converted.image_path, self.images_dir / converted.image_name, self.link)
        png = Image.fromarray(encode_segment_ids(panoptic.ids))
        atomic_write(self.masks_dir / converted.mask_name, lambda out: png.save(out, format="PNG"))
        segments_info, present = _segments_info(panoptic.ids, panoptic.labels)
        void = panoptic.ids == 0
        reasons = np.bincount(panoptic.void_reason[void], minlength=len(panoptic.void_reasons))
        height, width = panoptic.ids.shape
        return WrittenImage(
            image={
                "id": converted.image_id,
                "file_name": converted.image_name,
                "height": height,
                "width": width,
            },
            annotation={
                "image_id": converted.image_id,
                "file_name": converted.mask_name,
                "segments_info": segments_info,
            },
            void_pixels={
                reason: int(count)
                for reason, count in zip(panoptic.void_reasons, reasons.tolist(), strict=True)
                if count
            },
            empty_segments=len(set(panoptic.labels) - present),
        )


def prepare_output(
    outputs: Sequence[Path], inputs: Sequence[Path], overwrite: bool, option: str
) -> None:
    """Make sure `outputs` (files or folders) may be (re)written, removing them if `overwrite`.

    Refuses to touch outputs that already exist without `overwrite`, and outputs that hold or
    are one of the `inputs` (replacing them would delete the source data). `option` is how the
    caller spells the output argument in messages.
    """
    for output in outputs:
        for source in inputs:
            if Path(source).resolve().is_relative_to(output.resolve()):
                raise ConfigError(
                    f"The output '{output}' would contain the input '{source}', which writing "
                    f"the output replaces. Choose a {option} outside the input folders."
                )
    existing = [
        output
        for output in outputs
        if output.is_file() or (output.is_dir() and any(output.iterdir()))
    ]
    if existing and not overwrite:
        raise ConfigError(
            f"'{existing[0]}' already exists (from an earlier conversion?). Choose another "
            f"{option}, or pass overwrite=True (--overwrite) to replace it."
        )
    for output in outputs:
        remove_output(output)


def convert_split(
    *,
    format_name: str,
    out: PathLike,
    split: str,
    tasks: Sequence[TaskT],
    convert: Callable[[TaskT], PanopticImage],
    categories: Sequence[Mapping[str, Any]],
    source: Path,
    inputs: Sequence[Path],
    link: LinkMode | None,
    overwrite: bool,
    num_workers: int,
) -> ConversionSummary:
    """Convert and write every task's image (`convert` must pickle if `num_workers` > 0), then
    the split's JSON and `data.yaml`. Raises DataError listing every image that failed.

    `source` names the input dataset in messages; `inputs` are the folders and files read, which
    the output must not overlap.
    """
    if not _SPLIT_NAME.fullmatch(split):
        raise ConfigError(
            f"Split name {split!r} is not a folder name: use letters, digits, '_', '-' or '.' "
            "(e.g. 'train' or 'val')."
        )
    if link not in (None, "hard", "symlink"):
        raise ConfigError(f"link must be None (copy), 'hard' or 'symlink', not {link!r}.")
    if not tasks:
        raise DataError(f"Found no images to convert in '{source}'. Check the input paths.")
    layout = SplitLayout(Path(out), split, link)
    data_file = layout.root / DATA_FILE
    data_entries = _read_data_file(data_file)
    prepare_output(
        [layout.images_dir, layout.masks_dir, layout.annotations_path],
        inputs,
        overwrite,
        "output folder (--out)",
    )
    for folder in (layout.images_dir, layout.masks_dir):
        ensure_output_dir(folder)  # fail on an unwritable output before any slow work
    try:
        written: list[WrittenImage] = []
        problems: list[str] = []
        attempt = partial(_convert_and_write, layout, convert)
        for outcome in map_in_processes(attempt, tasks, num_workers):
            if isinstance(outcome, str):
                problems.append(outcome)
            else:
                written.append(outcome)
        raise_problems(source, problems)
        atomic_write_json(
            {
                "info": {"description": f"Converted by panoptic-train from {format_name}"},
                "images": [item.image for item in written],
                "annotations": [item.annotation for item in written],
                "categories": [dict(category) for category in categories],
            },
            layout.annotations_path,
        )
        if split in DATA_SPLITS:
            _write_data_file(data_file, data_entries, split)
    except BaseException:
        for output in (layout.images_dir, layout.masks_dir, layout.annotations_path):
            remove_output(output)
        raise
    return _summarize(format_name, layout, categories, written)


def raise_problems(source: Path, problems: Sequence[str]) -> None:
    """One DataError listing every problem found in the input dataset `source`, if any."""
    if problems:
        raise DataError(
            format_problems(source, problems, "Fix these and run the conversion again.")
        )


def _convert_and_write(
    layout: SplitLayout, convert: Callable[[TaskT], PanopticImage], task: TaskT
) -> WrittenImage | str:
    """One image, or the text of the DataError it raised (so the others still get checked)."""
    try:
        return layout.write(convert(task))
    except DataError as error:
        return str(error)


def _place_image(source: Path, target: Path, link: LinkMode | None) -> None:
    if link is None:
        with source.open("rb") as handle:
            atomic_write(target, lambda out: shutil.copyfileobj(handle, out))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if link == "hard":
            os.link(source, target)
        else:
            os.symlink(source.resolve(), target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise ConfigError(
                f"Cannot hard-link '{source}' into '{target.parent}': they are on different "
                "file systems. Use link='symlink' (--link symlink), or copy (leave out --link)."
            ) from error
        raise output_error(target, error) from error


def _segments_info(
    ids: np.ndarray, labels: Mapping[int, SegmentLabel]
) -> tuple[list[dict[str, Any]], set[int]]:
    """COCO `segments_info` (area and bbox from the pixels) of the segments present in `ids`."""
    present, inverse, areas = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(ids.shape)
    height, width = ids.shape
    # Rows and columns each segment occurs in: its box, without a pass over the image per segment.
    in_row = np.zeros((len(present), height), dtype=bool)
    in_row[inverse, np.arange(height)[:, None]] = True
    in_col = np.zeros((len(present), width), dtype=bool)
    in_col[inverse, np.arange(width)[None, :]] = True
    top, left = in_row.argmax(1), in_col.argmax(1)
    bottom, right = height - in_row[:, ::-1].argmax(1), width - in_col[:, ::-1].argmax(1)
    segments_info = [
        {
            "id": segment_id,
            "category_id": labels[segment_id].category_id,
            "iscrowd": int(labels[segment_id].iscrowd),
            "area": int(areas[k]),
            "bbox": [int(left[k]), int(top[k]), int(right[k] - left[k]), int(bottom[k] - top[k])],
        }
        for k, segment_id in enumerate(present.tolist())
        if segment_id != 0
    ]
    return segments_info, set(present.tolist())


def _summarize(
    format_name: str,
    layout: SplitLayout,
    categories: Sequence[Mapping[str, Any]],
    written: Sequence[WrittenImage],
) -> ConversionSummary:
    segments: Counter[int] = Counter()
    crowd: Counter[int] = Counter()
    void: Counter[str] = Counter()
    for item in written:
        for segment in item.annotation["segments_info"]:
            segments[segment["category_id"]] += 1
            if segment["iscrowd"]:
                crowd[segment["category_id"]] += 1
        void.update(item.void_pixels)
    data_file = layout.root / DATA_FILE
    return ConversionSummary(
        format_name=format_name,
        split=layout.split,
        images=len(written),
        categories=tuple(
            Category(int(c["id"]), str(c["name"]), bool(c["isthing"])) for c in categories
        ),
        segments=dict(segments),
        crowd=dict(crowd),
        pixels=sum(item.image["height"] * item.image["width"] for item in written),
        void_pixels=dict(void.most_common()),
        empty_segments=sum(item.empty_segments for item in written),
        data={
            "images": layout.images_dir,
            "masks": layout.masks_dir,
            "annotations": layout.annotations_path,
        },
        data_file=data_file if layout.split in DATA_SPLITS else None,
        data_splits=tuple(
            split
            for split in DATA_SPLITS
            if split == layout.split or split in _read_data_file(data_file)
        ),
    )


def _read_data_file(path: Path) -> dict[str, Any]:
    """The existing `data.yaml` (kept apart from the entries a conversion sets), or {}."""
    if not path.is_file():
        return {}
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"Cannot parse '{path}': {error}. Fix or delete it; the conversion adds its split "
            "to it."
        ) from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"'{path}' holds a {type(content).__name__}, not the mapping of a 'data' argument "
            "(train, val, ...). Fix or delete it; the conversion adds its split to it."
        )
    return content


def _write_data_file(path: Path, entries: dict[str, Any], split: str) -> None:
    """Set `split`'s entry (paths relative to the file's folder), keeping every other key."""
    entries = {
        **entries,
        split: {
            "images": f"images/{split}",
            "masks": f"annotations/{split}",
            "annotations": f"annotations/{split}.json",
        },
    }
    ordered = {key: entries[key] for key in DATA_SPLITS if key in entries}
    ordered.update((key, value) for key, value in entries.items() if key not in ordered)
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(ordered, handle, sort_keys=False)


def remove_output(path: Path) -> None:
    """Delete an output file or folder (a link itself, never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
