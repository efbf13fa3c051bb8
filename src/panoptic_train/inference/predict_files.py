"""Predict a set of image files and write the results in COCO panoptic format.

Output folder layout (scorable by `panoptic-train evaluate` or COCO's panopticapi; see
`inference.prediction_folder` for how a folder is reused, resumed or refused):

    OUT/panoptic/<stem>.png      segment id per pixel as R + 256·G + 256²·B (0 = void)
    OUT/predictions.json         {"images", "annotations" (with segments_info), "categories"}
    OUT/overlays/<stem>.png      the visualisation, when asked for

PNG segment ids are `predict`'s segment id + 1, since COCO panoptic reserves 0 for void.
`panoptic_record` builds an image's PNG and segments; `panoptic-train serve` returns the same.
Decoding runs in a few threads ahead of the network, so disk and decode time overlap inference.
An image that cannot be read (or is over the pixel limit) is skipped and reported; the others
are still written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from panoptic_train._io import atomic_open
from panoptic_train._types import PathLike
from panoptic_train._validate import positive_int
from panoptic_train.data.io import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, write_segment_png
from panoptic_train.errors import ConfigError, DataError
from panoptic_train.inference.model import PanopticSegmentationModel, PreparedImage
from panoptic_train.inference.prediction_folder import PredictionFolder, Record
from panoptic_train.inference.visualize import visualize
from panoptic_train.runtime.inputs import to_image_tensor
from panoptic_train.runtime.postprocess import PanopticMerge

# Pixels of full-size images the decoding threads hold at once, and of the images one batch
# merges (2 bytes each there): 2**26 pixels, so a 100 MP image is decoded and merged alone.
_PIXEL_BUDGET = 2**26


@dataclass
class PredictFilesReport:
    """What `predict_files` wrote, which inputs it had to skip (path -> reason) and which a
    resumed run found done already."""

    written: list[Path]
    skipped: dict[Path, str]
    resumed: list[Path]
    predictions_json: Path


def collect_images(inputs: Sequence[PathLike]) -> list[Path]:
    """Image files named directly, plus the images (by extension) inside named folders.

    Folders are not searched recursively. Two images with the same file stem would write the
    same PNG, so that is an error naming both.
    """
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif item.is_file():
            images.append(item)
        else:
            raise ConfigError(f"Input '{item}' is neither an image file nor a folder.")
    if not images:
        raise ConfigError(
            f"No images found in {[str(i) for i in inputs]}; folders are searched for "
            f"{', '.join(IMAGE_EXTENSIONS)} files (not recursively)."
        )
    by_stem: dict[str, Path] = {}
    for image in images:
        other = by_stem.setdefault(image.stem, image)
        if other != image:
            raise ConfigError(
                f"'{other}' and '{image}' would both be written as {image.stem}.png; predict "
                "them into separate --out folders or rename one."
            )
    return images


def image_ids_from_annotations(annotations: PathLike) -> dict[str, Any]:
    """File stem -> image id from a COCO JSON's `images`, so predictions match its ground truth."""
    try:
        images = json.loads(Path(annotations).read_text(encoding="utf-8"))["images"]
        return {Path(image["file_name"]).stem: image["id"] for image in images}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"Cannot read image ids from '{annotations}': {error}. Pass a COCO JSON with an "
            "'images' list of {'id', 'file_name'} entries."
        ) from error


def predict_files(
    model: PanopticSegmentationModel,
    images: Sequence[Path],
    out: PathLike | PredictionFolder,
    *,
    overlay: bool = False,
    batch_size: int = 8,
    image_ids: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    on_progress: Callable[[int], object] | None = None,
    on_skip: Callable[[Path, str], object] | None = None,
    **thresholds: float | None,
) -> PredictFilesReport:
    """Predict `images` and write PNGs, `predictions.json` and optional overlays under `out`.

    out: the output folder, or a `PredictionFolder` opened before (the command line opens it
        before loading the model, so that a bad folder fails fast). A folder that holds
        anything is refused unless `overwrite` (this tool's files there are removed first) or
        `resume` (images a previous run with the same model and thresholds completed there are
        kept and not predicted again).
    image_ids: file stem -> image id (see `image_ids_from_annotations`); the stem otherwise.
    max_image_pixels: larger images are skipped, from their header, before decoding.
    on_progress: told how many more images are done (written, skipped or resumed), e.g. a bar's
        update.
    on_skip: told about each unreadable image, which is skipped rather than aborting the run.
        What either callback returns is ignored.
    thresholds: `threshold`, `mask_threshold`, `overlap_threshold` overrides for `predict`.

    In a torch.distributed job of several processes (torchrun, srun), every rank calls it with
    the same arguments: each predicts its share of `images` (runs of `batch_size`, dealt
    round-robin) and rank 0 writes predictions.json with all of them; the report is the rank's.
    """
    positive_int(batch_size, "predict_files batch_size")
    positive_int(max_image_pixels, "predict_files max_image_pixels")
    config = model.postprocess.replace(**thresholds)
    folder = (
        out
        if isinstance(out, PredictionFolder)
        else PredictionFolder.open(out, overwrite=overwrite, resume=resume)
    )
    written: list[Path] = []
    skipped: dict[Path, str] = {}
    resumed: list[Path] = []
    batch: list[_Decoded] = []

    def progress(count: int) -> None:
        if on_progress is not None:
            on_progress(count)

    def flush() -> None:
        merges = model.merge([image.prepared for image in batch], config)
        for image, merge in zip(batch, merges, strict=True):
            folder.add(_write_merge(folder, model, image, merge))
            if overlay:
                # Decoded again rather than held: the pixels of a batch of large images would not
                # fit the memory the rest of the run needs.
                original = to_image_tensor(image.path, max_image_pixels)
                rendered = visualize(original, model.result(merge), model.classes)
                with atomic_open(folder.overlay_path(image.path)) as handle:
                    handle.write(encode_png(rendered))
            written.append(folder.mask_path(image.path))
        progress(len(batch))
        batch.clear()

    def to_predict() -> Iterator[tuple[Path, Any]]:
        for path in folder.share(images, batch_size):
            image_id = _image_id(path, image_ids)
            if folder.is_done(path, image_id, overlay):
                resumed.append(path)
                progress(1)
            else:
                yield path, image_id

    folder.start(_run_settings(model, config))
    try:
        for decoded in _decode_ahead(model, to_predict(), 2 * batch_size, max_image_pixels):
            if isinstance(decoded, tuple):
                path, error = decoded
                skipped[path] = str(error)
                if on_skip is not None:
                    on_skip(path, str(error))
                progress(1)
                continue
            batch.append(decoded)
            # The merge holds 2 bytes per pixel of every image in the batch.
            if len(batch) == batch_size or sum(i.pixels for i in batch) >= _PIXEL_BUDGET:
                flush()
        if batch:
            flush()
        predictions_json = folder.finish(model.class_mapping.to_list(), images)
    finally:
        folder.close()
    return PredictFilesReport(written, skipped, resumed, predictions_json)


def _image_id(path: Path, image_ids: Mapping[str, Any] | None) -> Any:
    return (image_ids or {}).get(path.stem, path.stem)


def _run_settings(model: PanopticSegmentationModel, config: Any) -> dict[str, Any]:
    """What must not change when a run is resumed: the model (its name, classes, input size and a
    digest of its class head, which every training step changes) and the thresholds."""
    digest = hashlib.sha256()
    for tensor in model.network.class_head.state_dict().values():
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return {
        "model_name": model.model_name,
        "classes": model.class_mapping.to_list(),
        "image_size": list(model.image_size),
        "class_head_sha256": digest.hexdigest(),
        "postprocess": dataclasses.asdict(config),
    }


@dataclass(frozen=True)
class PanopticRecord:
    """One `predict` result in COCO panoptic form: what `predict_files` writes for an image and
    what `panoptic-train serve` returns, built in one place so the two always agree.

    png: the PNG file, segment id + 1 per pixel as R + 256·G + 256²·B (0 = void).
    segments_info: the annotation's entries (`id` as in the PNG, `category_id`, `area`, COCO
        `bbox` [x, y, width, height], `iscrowd` 0, `score`), in segment order.
    """

    png: bytes
    segments_info: list[dict[str, Any]]
    height: int
    width: int


def panoptic_record(result: Mapping[str, Any]) -> PanopticRecord:
    """The COCO panoptic form of a `predict` result (torch tensors, or the ONNX runner's numpy
    arrays)."""
    segments = torch.as_tensor(result["masks"])[..., 1]
    height, width = segments.shape
    buffer = io.BytesIO()
    segments_info = write_panoptic_png(
        buffer, height, width, [segments], result["labels"], result["scores"]
    )
    return PanopticRecord(buffer.getvalue(), segments_info, height, width)


def write_panoptic_png(
    handle: IO[bytes],
    height: int,
    width: int,
    segment_bands: Iterable[Any],
    labels: Any,
    scores: Any,
) -> list[dict[str, Any]]:
    """Write the PNG of a segment map given as row bands from the top ((rows, width) segment
    ids 0..S-1, void -1: tensors on any device, or numpy arrays) and return its
    `segments_info`, for the S segments of category ids `labels` and `scores`."""
    stats = _SegmentStats(len(labels))

    def encoded() -> Iterator[np.ndarray]:
        for band in segment_bands:
            ids = torch.as_tensor(band).cpu()
            stats.add(ids)
            yield (ids + 1).numpy()

    write_segment_png(handle, height, width, encoded())
    return stats.segments_info(labels, scores)


class _SegmentStats:
    """Pixel count and COCO [x, y, width, height] box of each segment, gathered band by band
    without a loop over segments."""

    def __init__(self, count: int) -> None:
        self.area = torch.zeros(count, dtype=torch.int64)
        self.low = [torch.full((count,), torch.iinfo(torch.int64).max) for _ in range(2)]
        self.high = [torch.full((count,), -1) for _ in range(2)]
        self.top = 0

    def add(self, segments: Tensor) -> None:
        """The next band of rows (int64 segment ids, void -1)."""
        ys, xs = torch.nonzero(segments >= 0, as_tuple=True)
        ids = segments[ys, xs]
        self.area += torch.bincount(ids, minlength=self.area.numel())
        for axis, position in enumerate((xs, ys + self.top)):
            self.low[axis].scatter_reduce_(0, ids, position, "amin")
            self.high[axis].scatter_reduce_(0, ids, position, "amax")
        self.top += segments.shape[0]

    def segments_info(self, labels: Any, scores: Any) -> list[dict[str, Any]]:
        (x0, y0), (x1, y1) = self.low, self.high
        boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)
        return [
            {
                "id": index + 1,
                "category_id": int(category),
                "area": int(area),
                "bbox": box,
                "iscrowd": 0,
                "score": round(float(score), 6),
            }
            for index, (category, area, box, score) in enumerate(
                zip(
                    torch.as_tensor(labels).tolist(),
                    self.area.tolist(),
                    boxes.tolist(),
                    torch.as_tensor(scores).tolist(),
                    strict=True,
                )
            )
        ]


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (overlays): PIL's encoder, as the server's overlays."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class _Decoded:
    """An image as the network takes it; the full-size pixels are already dropped."""

    path: Path
    image_id: Any
    prepared: PreparedImage

    @property
    def pixels(self) -> int:
        return self.prepared.orig_size[0] * self.prepared.orig_size[1]


class _PixelBudget:
    """Bounds the pixels the decoding threads hold at once: a thread waits until the others'
    images and its own fit, and an image larger than the whole budget waits to be alone, so
    that a folder of huge images is decoded one at a time instead of four."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + pixels <= self._limit)
            self._used += pixels
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()


def _decode_ahead(
    model: PanopticSegmentationModel,
    paths: Iterable[tuple[Path, Any]],
    depth: int,
    max_pixels: int,
) -> Iterator[_Decoded | tuple[Path, DataError]]:
    """Decode and prepare images in threads, at most `depth` ahead and within the pixel budget;
    failures come back as (path, DataError)."""
    budget = _PixelBudget(_PIXEL_BUDGET)

    def decode(path: Path, image_id: Any) -> _Decoded | tuple[Path, DataError]:
        try:
            with budget.hold(_header_pixels(path, max_pixels)):
                prepared = model.prepare(to_image_tensor(path, max_pixels))
        except DataError as error:
            return path, error
        return _Decoded(path, image_id, prepared)

    pending: deque[Future[_Decoded | tuple[Path, DataError]]] = deque()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for path, image_id in paths:
            pending.append(pool.submit(decode, path, image_id))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _header_pixels(path: Path, max_pixels: int) -> int:
    """The pixel count an image's header gives (0 where decoding will refuse or fail anyway)."""
    try:
        with Image.open(path) as image:
            pixels = image.size[0] * image.size[1]
    except Exception:  # the decoder reports it, with a message
        return 0
    return pixels if pixels <= max_pixels else 0


def _write_merge(
    folder: PredictionFolder,
    model: PanopticSegmentationModel,
    image: _Decoded,
    merge: PanopticMerge,
) -> Record:
    """Write one image's PNG band by band; return its `images` and `annotations` entries."""
    path = folder.mask_path(image.path)
    with atomic_open(path) as handle:
        segments_info = write_panoptic_png(
            handle,
            merge.height,
            merge.width,
            (segments for _, _, segments in merge.bands()),
            model.categories(merge.labels),
            merge.scores,
        )
    entry = {
        "id": image.image_id,
        "file_name": image.path.name,
        "height": merge.height,
        "width": merge.width,
    }
    annotation = {
        "image_id": image.image_id,
        "file_name": path.name,
        "segments_info": segments_info,
    }
    return entry, annotation
