"""Score COCO-panoptic prediction folders (from any system) against ground truth, from files.

The numbers are those of panopticapi's `pq_compute`, including where it reads its inputs:
ground-truth segment areas come from the JSON `area` field (pixel counts only where it is
missing), predicted areas from the PNGs, and the crowd region a prediction may lie on is the last
crowd segment of its category in `segments_info`. Unlike panopticapi, inconsistent input is an
error that names the file and the id instead of a silently skewed score.

Two backends give the same numbers. "builtin" decodes with PIL and scores on a thread pool in
this process (PIL's decoder and numpy's kernels release the GIL); segment ids map to dense
indices through a 2^24-entry lookup table per thread, an O(pixels) gather instead of a sort.
PNG decoding (zlib) bounds it at a few ms per image, so the optional compiled "hotcoco" backend,
whose decoder is several times faster, does the pixel work when installed. The JSON checks are
the dataset reader's (`data.coco.read_panoptic_json`, stopping at the first problem) in both
cases, and where hotcoco rejects the pixels, the builtin scorer runs to name the file and id of
the problem.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptic_train._io import atomic_write_json, ensure_output_file
from panoptic_train._types import MAX_SEGMENT_ID, PathLike
from panoptic_train.data.coco import Category, PanopticJson, Problems, read_panoptic_json
from panoptic_train.data.io import load_segment_ids
from panoptic_train.errors import ConfigError, DataError, require
from panoptic_train.evaluation.pq import (
    PanopticQualityAccumulator,
    SegmentOverlaps,
    image_statistics,
)

# "auto": hotcoco when installed, else "builtin".
BACKENDS = ("auto", "hotcoco", "builtin")
# Dense indices are stored as int16 to keep each thread's lookup table at 32 MiB.
_MAX_SEGMENTS = int(np.iinfo(np.int16).max)
# Each thread holds its own 32 MiB lookup table; the cap bounds that memory.
_MAX_WORKERS = 8


@dataclass(frozen=True)
class _Annotation:
    """One image on one side (ground truth or prediction), as its JSON describes it."""

    image_id: Any
    png: Path
    ids: tuple[int, ...]
    classes: tuple[int, ...]  # contiguous class index per segment
    crowd: tuple[bool, ...]
    area: tuple[float | None, ...]  # the JSON `area` or None; only the ground truth's is used


@dataclass(frozen=True)
class _Side:
    """What every message about one side needs: its role, its JSON file and its PNG folder."""

    role: str  # "ground-truth" or "prediction"
    json_path: Path
    masks: Path


def evaluate_panoptic(
    gt_json: PathLike,
    gt_masks: PathLike,
    pred_json: PathLike,
    pred_masks: PathLike,
    *,
    out: PathLike | None = None,
    num_workers: int | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """PQ, SQ and RQ of COCO-panoptic predictions, in panopticapi's result layout.

    Returns `{"All", "Things", "Stuff"}` each `{"pq", "sq", "rq", "n"}` (values in [0, 1]) and
    `per_class` keyed by category id; writes the same as JSON to `out` when given. Every image of
    the ground truth needs a prediction and vice versa. Raises DataError naming the file and id
    for missing PNGs, unmatched image ids, segment ids absent from `segments_info` (or listed
    there but absent from the PNG), unknown categories and ground-truth areas that are not
    non-negative numbers; OutputError when `out` cannot be written (checked before scoring).

    `backend`: "builtin" decodes and scores the PNGs here on `num_workers` threads (default one
    per core, at most 8); "hotcoco" hands the pixel work to the hotcoco package (compiled, its
    own threads, several times faster; identical numbers); "auto" uses hotcoco when installed.
    Like panopticapi, hotcoco does not check the ground-truth PNGs against their JSON.
    """
    if num_workers is not None and num_workers < 1:
        raise ConfigError(
            f"num_workers must be at least 1 (or None for one per core); got {num_workers}."
        )
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}; got {backend!r}.")
    if out is not None:
        ensure_output_file(out)  # before the scoring, not after it
    gt_side = _Side("ground-truth", Path(gt_json), Path(gt_masks))
    pred_side = _Side("prediction", Path(pred_json), Path(pred_masks))
    gt_content = _read(gt_side, ground_truth=None)
    categories = gt_content.categories
    pred_content = _read(pred_side, ground_truth=categories)
    class_of = {category.id: index for index, category in enumerate(categories)}
    gt = _annotations(gt_content, gt_side, class_of)
    pred = _annotations(pred_content, pred_side, class_of)
    pairs = _pairs(gt, pred, gt_side, pred_side)
    for gt_annotation, pred_annotation in pairs:
        _check_png_exists(gt_annotation, gt_side)
        _check_png_exists(pred_annotation, pred_side)

    accumulator = PanopticQualityAccumulator(
        num_classes=len(categories),
        is_thing=[category.isthing for category in categories],
        class_ids=[category.id for category in categories],
        class_names=[category.name for category in categories],
    )
    stats = None
    if _hotcoco_wanted(backend):
        stats = _hotcoco_statistics(gt_side, pred_side, accumulator.class_ids)
    if stats is None:
        stats = _builtin_statistics(pairs, len(categories), gt_side, pred_side, num_workers)
    accumulator.add_statistics(stats)
    results = accumulator.compute()
    if out is not None:
        atomic_write_json(results, out)
    return results


def _builtin_statistics(
    pairs: list[tuple[_Annotation, _Annotation]],
    num_classes: int,
    gt_side: _Side,
    pred_side: _Side,
    num_workers: int | None,
) -> torch.Tensor:
    """Per-class statistics of all pairs, scored on a thread pool."""
    scorer = _PairScorer(num_classes, gt_side, pred_side)
    total = torch.zeros(4, num_classes, dtype=torch.float64)
    workers = max(1, min(num_workers or os.cpu_count() or 1, _MAX_WORKERS, len(pairs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pq") as pool:
        try:
            # map keeps the image order, so the float sums do not depend on thread timing.
            for stats in pool.map(scorer, pairs):
                total += stats
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return total


def _hotcoco_wanted(backend: str) -> bool:
    if backend == "builtin":
        return False
    if backend == "hotcoco":
        require("hotcoco", "fast-eval", "backend='hotcoco'")
        return True
    return importlib.util.find_spec("hotcoco") is not None


def _hotcoco_statistics(
    gt_side: _Side, pred_side: _Side, class_ids: list[int]
) -> torch.Tensor | None:
    """Per-class statistics from hotcoco, or None where it rejects the input: the builtin scorer
    then names the file and id of the problem in its error."""
    from hotcoco.panoptic import PanopticEval

    try:
        evaluation = PanopticEval(
            str(gt_side.json_path),
            str(pred_side.json_path),
            gt_folder=str(gt_side.masks),
            pred_folder=str(pred_side.masks),
        )
        evaluation.evaluate()
    except (ValueError, OSError):  # e.g. string image ids, which hotcoco does not read
        return None
    per_class = evaluation.results()["per_class"]
    stats = torch.zeros(4, len(class_ids), dtype=torch.float64)
    for index, class_id in enumerate(class_ids):
        entry = per_class.get(class_id, {})
        stats[:, index] = torch.tensor(
            [entry.get(key, 0) for key in ("tp", "fp", "fn", "iou")], dtype=torch.float64
        )
    return stats


def _read(side: _Side, ground_truth: Sequence[Category] | None) -> PanopticJson:
    """One side's JSON, read by the dataset reader in fail-fast mode: the first problem is the
    error, as a score of partly broken input would be skewed."""
    content = read_panoptic_json(
        side.json_path,
        Problems(f"The {side.role} JSON '{side.json_path}'", fail_fast=True),
        kind=side.role,
        with_images=False,
        ground_truth=ground_truth,
        # A prediction's iscrowd, area and bbox are never read: its areas come from its PNGs.
        segment_attributes=ground_truth is None,
    )
    if not side.masks.is_dir():
        raise DataError(
            f"The {side.role} mask folder '{side.masks}' does not exist. Pass the folder that "
            f"holds the PNG files named in '{side.json_path}'."
        )
    return content


def _annotations(
    content: PanopticJson, side: _Side, class_of: Mapping[int, int]
) -> dict[Any, _Annotation]:
    """One side's annotations by image id, with contiguous class indices."""
    by_image: dict[Any, _Annotation] = {}
    for entry in content.annotations:
        segments = entry.segments
        if len(segments) > _MAX_SEGMENTS:
            raise DataError(
                f"Image id {entry.image_id!r} has {len(segments)} segments in "
                f"'{side.json_path}'; at most {_MAX_SEGMENTS} per image are supported."
            )
        by_image[entry.image_id] = _Annotation(
            image_id=entry.image_id,
            png=side.masks / entry.file_name,
            ids=tuple(segment.id for segment in segments),
            classes=tuple(class_of[segment.category_id] for segment in segments),
            crowd=tuple(segment.iscrowd for segment in segments),
            area=tuple(segment.area for segment in segments),
        )
    return by_image


def _pairs(
    gt: Mapping[Any, _Annotation],
    pred: Mapping[Any, _Annotation],
    gt_side: _Side,
    pred_side: _Side,
) -> list[tuple[_Annotation, _Annotation]]:
    for ours, theirs, side, other in (
        (gt, pred, gt_side, pred_side),
        (pred, gt, pred_side, gt_side),
    ):
        missing = [image_id for image_id in ours if image_id not in theirs]
        if missing:
            first = ours[missing[0]]
            raise DataError(
                f"{len(missing)} image id(s) of the {side.role} JSON '{side.json_path}' have no "
                f"annotation in the {other.role} JSON '{other.json_path}', e.g. image id "
                f"{missing[0]!r} (file '{first.png.name}'); first ids: {missing[:10]}. Both "
                "sides must cover the same images."
            )
    return [(annotation, pred[image_id]) for image_id, annotation in gt.items()]


class _PairScorer:
    """Turns one (ground truth, prediction) pair of files into per-class PQ statistics.

    The per-pixel work is numpy: single-threaded kernels that release the GIL, so the thread
    pool scales without torch's intra-op threads competing with it. The small per-segment
    tables then go through the same `image_statistics` as validation.
    """

    def __init__(self, num_classes: int, gt_side: _Side, pred_side: _Side) -> None:
        self.num_classes = num_classes
        self.gt_side = gt_side
        self.pred_side = pred_side
        self._local = threading.local()

    def __call__(self, pair: tuple[_Annotation, _Annotation]) -> torch.Tensor:
        gt, pred = pair
        gt_ids = _read_segment_ids(gt, self.gt_side)
        pred_ids = _read_segment_ids(pred, self.pred_side)
        if gt_ids.shape != pred_ids.shape:
            raise DataError(
                f"Image id {gt.image_id!r}: the ground-truth mask '{gt.png}' is "
                f"{gt_ids.shape[0]}x{gt_ids.shape[1]} (HxW) but the prediction '{pred.png}' is "
                f"{pred_ids.shape[0]}x{pred_ids.shape[1]}. Predict at the original image size."
            )
        gt_index = self._dense(gt_ids, gt, self.gt_side)
        pred_index = self._dense(pred_ids, pred, self.pred_side)
        columns = len(pred.ids) + 1
        overlaps = np.bincount(
            gt_index.astype(np.intp) * columns + pred_index,
            minlength=(len(gt.ids) + 1) * columns,
        ).reshape(-1, columns)
        gt_pixels = overlaps.sum(axis=1)
        _check_present(gt_pixels, gt, self.gt_side)
        _check_present(overlaps.sum(axis=0), pred, self.pred_side)

        crowd_row = [-1] * self.num_classes
        for row, (class_index, is_crowd) in enumerate(zip(gt.classes, gt.crowd, strict=True), 1):
            if is_crowd:
                crowd_row[class_index] = row  # the last crowd segment wins, as in panopticapi
        areas = [
            float(pixels) if area is None else area
            for pixels, area in zip(gt_pixels.tolist(), (None, *gt.area), strict=True)
        ]
        image = SegmentOverlaps(
            overlaps=torch.from_numpy(overlaps),
            gt_class=torch.tensor([-1, *gt.classes]),
            gt_crowd=torch.tensor([False, *gt.crowd]),
            gt_area=torch.tensor(areas, dtype=torch.float64),
            pred_class=torch.tensor([-1, *pred.classes]),
            crowd_row=torch.tensor(crowd_row),
        )
        return image_statistics(image, self.num_classes)

    def _dense(self, ids: np.ndarray, annotation: _Annotation, side: _Side) -> np.ndarray:
        """Each pixel's position in `segments_info` plus one (0 = void), flattened.

        Raises DataError for segment ids in the PNG that `segments_info` does not list.
        """
        table = self._lookup_table()
        listed = np.asarray(annotation.ids, dtype=np.int64)
        table[listed] = np.arange(1, len(listed) + 1, dtype=np.int16)
        try:
            dense = table.take(ids.ravel())
        finally:
            table[listed] = -1
        unknown = dense < 0
        if unknown.any():
            values = np.unique(ids.ravel()[unknown])[:10].tolist()
            raise DataError(
                f"The {side.role} mask '{annotation.png}' (image id {annotation.image_id!r}) "
                f"contains segment id(s) {values} that are not in its 'segments_info' in "
                f"'{side.json_path}'. Add them to the JSON or set their pixels to 0 (void)."
            )
        return dense

    def _lookup_table(self) -> np.ndarray:
        """This thread's segment id -> dense index table: -1 everywhere except 0 (void) -> 0."""
        table = getattr(self._local, "table", None)
        if table is None:
            table = np.full(MAX_SEGMENT_ID + 1, -1, dtype=np.int16)
            table[0] = 0
            self._local.table = table
        return table


def _check_present(pixels: np.ndarray, annotation: _Annotation, side: _Side) -> None:
    """Raise DataError if a segment listed in `segments_info` has no pixel in the PNG."""
    absent = np.flatnonzero(pixels[1:] == 0).tolist()
    if absent:
        values = [annotation.ids[position] for position in absent[:10]]
        raise DataError(
            f"Segment id(s) {values} of image id {annotation.image_id!r} are listed in "
            f"'segments_info' of '{side.json_path}' but absent from the {side.role} mask "
            f"'{annotation.png}'. Remove them from the JSON or fix the PNG."
        )


def _check_png_exists(annotation: _Annotation, side: _Side) -> None:
    if not annotation.png.is_file():
        raise DataError(
            f"The {side.role} mask '{annotation.png}' of image id {annotation.image_id!r} (named "
            f"in '{side.json_path}') does not exist. Add the PNG or fix 'file_name'."
        )


def _read_segment_ids(annotation: _Annotation, side: _Side) -> np.ndarray:
    """(H, W) int32 segment ids of a COCO panoptic PNG, errors naming the image id and side."""
    try:
        return load_segment_ids(annotation.png)
    except DataError as error:
        raise DataError(
            f"{side.role.capitalize()} image id {annotation.image_id!r}: {error}"
        ) from error
