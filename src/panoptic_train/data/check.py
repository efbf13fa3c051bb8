"""Pixel-level dataset checks: what the JSON says against what the image and mask files hold.

`check_dataset` runs the JSON/layout checks of `coco.scan_panoptic_index` and then, per sample,
decodes the mask (and, unless told otherwise, the image) to find every problem before training
starts: unreadable files, image/mask size mismatches, segment ids in a PNG missing from
`segments_info` or listed there without pixels. JSON `area` values that disagree with the PNG are
warnings: training does not use them, but COCO's panopticapi takes ground-truth areas from them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from panoptic_train._types import PathLike
from panoptic_train.data._parallel import map_in_processes
from panoptic_train.data.coco import (
    Category,
    PanopticIndex,
    PanopticSample,
    format_problems,
    scan_panoptic_index,
)
from panoptic_train.data.io import (
    IMAGE_EXTENSIONS,
    load_image,
    load_segment_ids,
    read_image_size,
)
from panoptic_train.errors import DataError

# Unlisted image files named in the warning (the count is always given).
_MAX_NAMED_FILES = 5


@dataclass
class DataReport:
    """Outcome of `check_dataset`: errors make the dataset unusable, warnings do not."""

    index: PanopticIndex | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def usable_index(self) -> PanopticIndex:
        """The checked index; DataError listing the errors if there are any."""
        if self.index is None:
            raise DataError(self.errors[0])
        if self.errors:
            raise DataError(format_problems(self.index.annotations_path, self.errors))
        return self.index

    def summary(self) -> str:
        """Images, segments per class (crowd counted apart), things/stuff totals."""
        if self.index is None:
            return "No dataset could be read."
        index = self.index
        segments = Counter(s.category_id for sample in index.samples for s in sample.segments)
        crowd = Counter(
            s.category_id for sample in index.samples for s in sample.segments if s.iscrowd
        )
        unlabeled = sum(sample.mask_path is None for sample in index.samples)
        unlabeled_note = f" ({unlabeled} unlabelled: all void)" if unlabeled else ""
        lines = [
            f"Dataset '{index.annotations_path}': {len(index.samples)} images{unlabeled_note}, "
            f"{sum(segments.values())} segments ({sum(crowd.values())} crowd), "
            f"{len(index.categories)} categories "
            f"({sum(c.isthing for c in index.categories)} things, "
            f"{sum(not c.isthing for c in index.categories)} stuff).",
            *class_table(index.categories, segments, crowd, index.ignore_classes),
        ]
        return "\n".join(lines)


def class_table(
    categories: Sequence[Category],
    segments: Mapping[int, int],
    crowd: Mapping[int, int],
    ignored: Collection[int] = (),
) -> list[str]:
    """Lines of a per-class table (segments and crowd segments per category id) and totals."""
    lines = [f"  {'id':>6}  {'name':<24} {'kind':<6} {'segments':>9} {'crowd':>6}"]
    for category in categories:
        kind = "thing" if category.isthing else "stuff"
        note = "  (ignored: void)" if category.id in ignored else ""
        lines.append(
            f"  {category.id:>6}  {category.name:<24} {kind:<6} "
            f"{segments.get(category.id, 0):>9} {crowd.get(category.id, 0):>6}{note}"
        )
    things = {c.id for c in categories if c.isthing}
    thing_count = sum(n for c, n in segments.items() if c in things)
    lines.append(
        f"  things: {thing_count} segments, stuff: {sum(segments.values()) - thing_count} segments"
    )
    return lines


@dataclass(frozen=True)
class _SampleResult:
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


def check_dataset(
    images: PathLike,
    masks: PathLike,
    annotations: PathLike,
    *,
    ignore_classes: Iterable[int] = (),
    allow_unlabeled: bool = False,
    decode_images: bool = True,
    num_workers: int = 0,
) -> DataReport:
    """Check a COCO panoptic dataset completely and report every problem, without raising.

    With `decode_images=False` images are only opened for their size (corrupt pixel data is then
    found when a sample is loaded); masks are always decoded. `allow_unlabeled` accepts images
    without annotation as all-void samples. `num_workers` > 0 spreads the per-sample checks
    over that many processes.
    """
    try:
        index, errors = scan_panoptic_index(
            images,
            masks,
            annotations,
            ignore_classes=ignore_classes,
            allow_unlabeled=allow_unlabeled,
        )
    except DataError as error:
        return DataReport(index=None, errors=[str(error)])
    report = DataReport(index=index, errors=errors)
    check = partial(_check_sample, decode_images=decode_images)
    for result in map_in_processes(check, index.samples, num_workers):
        report.errors.extend(result.errors)
        report.warnings.extend(result.warnings)
    # Only meaningful once every JSON image became a sample (else broken entries look unlisted).
    unlisted = [] if errors else _unlisted_images(Path(images), index)
    if unlisted:
        named = ", ".join(unlisted[:_MAX_NAMED_FILES])
        report.warnings.append(
            f"{len(unlisted)} image file(s) in '{images}' are not in '{annotations}' and will "
            f"not be used (e.g. {named}). Add them to the JSON if they should be."
        )
    return report


def _check_sample(sample: PanopticSample, decode_images: bool = True) -> _SampleResult:
    """Errors and warnings of one sample's files against its JSON entry."""
    errors: list[str] = []
    warnings: list[str] = []
    try:
        image_size = (
            load_image(sample.image_path).shape[:2]
            if decode_images
            else read_image_size(sample.image_path)
        )
    except DataError as error:
        errors.append(str(error))
        image_size = None
    if sample.mask_path is None:
        # Unlabelled (allow_unlabeled): all void, so only the JSON size can disagree.
        if image_size is not None and tuple(image_size) != (sample.height, sample.width):
            errors.append(_json_size_error(sample, sample.image_path, image_size))
        return _SampleResult(tuple(errors), ())
    try:
        ids = load_segment_ids(sample.mask_path)
    except DataError as error:
        errors.append(str(error))
        return _SampleResult(tuple(errors), ())

    if image_size is not None and tuple(image_size) != ids.shape:
        errors.append(
            f"Image '{sample.image_path}' is {image_size[0]}x{image_size[1]} (HxW) but its mask "
            f"'{sample.mask_path}' is {ids.shape[0]}x{ids.shape[1]}. Masks must have their "
            "image's size (as displayed, after EXIF orientation); regenerate the mask."
        )
    elif (sample.height, sample.width) != ids.shape:
        errors.append(_json_size_error(sample, sample.mask_path, ids.shape))

    present, counts = np.unique(ids, return_counts=True)
    pixels = dict(zip(present.tolist(), counts.tolist(), strict=True))
    pixels.pop(0, None)  # void
    listed = {segment.id: segment for segment in sample.segments}
    unlisted = sorted(set(pixels) - set(listed))
    if unlisted:
        shown = ", ".join(f"{i} ({pixels[i]} px)" for i in unlisted[:10])
        errors.append(
            f"Mask '{sample.mask_path}' has segment id(s) {shown} that are not in the "
            f"'segments_info' of image id {sample.image_id!r}. Add them to the JSON or paint "
            "those pixels 0 (void)."
        )
    empty = sorted(set(listed) - set(pixels))
    if empty:
        errors.append(
            f"'segments_info' of image id {sample.image_id!r} lists segment id(s) {empty} that "
            f"have no pixels in '{sample.mask_path}'. Remove them from the JSON or fix the mask."
        )
    for segment_id, segment in listed.items():
        area = pixels.get(segment_id)
        if area is not None and segment.area is not None and segment.area != area:
            warnings.append(
                f"Segment {segment_id} of image id {sample.image_id!r} has 'area' "
                f"{segment.area} in the JSON but {area} pixels in '{sample.mask_path}'. "
                "Training is unaffected, but COCO's panopticapi takes areas from the JSON; "
                "set 'area' to the pixel count."
            )
    return _SampleResult(tuple(errors), tuple(warnings))


def _json_size_error(sample: PanopticSample, path: Path, size: Sequence[int]) -> str:
    return (
        f"The JSON gives image id {sample.image_id!r} the size {sample.height}x"
        f"{sample.width} (HxW), but '{path}' is {size[0]}x{size[1]}. "
        "Fix 'height'/'width' in the JSON's 'images' entry."
    )


def _unlisted_images(images_dir: Path, index: PanopticIndex) -> list[str]:
    """Image files in the folder (top level) that no JSON entry uses, sorted by name."""
    if not images_dir.is_dir():
        return []
    used = {sample.image_path.name for sample in index.samples}
    return sorted(
        entry.name
        for entry in os.scandir(images_dir)
        if entry.is_file()
        and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
        and entry.name not in used
    )
