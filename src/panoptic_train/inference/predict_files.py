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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from panoptic_train._io import atomic_write
from panoptic_train._validate import positive_int
from panoptic_train.data.io import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, encode_segment_ids
from panoptic_train.errors import ConfigError, DataError
from panoptic_train.inference.inputs import to_image_tensor
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.inference.prediction_folder import PredictionFolder, Record
from panoptic_train.inference.visualize import visualize


@dataclass
class PredictFilesReport:
    """What `predict_files` wrote, which inputs it had to skip (path -> reason) and which a
    resumed run found done already."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    resumed: list[Path] = field(default_factory=list)
    predictions_json: Path | None = None


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
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


def image_ids_from_annotations(annotations: str | os.PathLike[str]) -> dict[str, Any]:
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
    out: str | os.PathLike[str] | PredictionFolder,
    *,
    overlay: bool = False,
    batch_size: int = 8,
    image_ids: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    on_progress: Callable[[int], None] | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
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
    thresholds: `threshold`, `mask_threshold`, `overlap_threshold` overrides for `predict`.
    """
    positive_int(batch_size, "predict_files batch_size")
    positive_int(max_image_pixels, "predict_files max_image_pixels")
    config = model.postprocess.replace(**thresholds)
    folder = (
        out
        if isinstance(out, PredictionFolder)
        else PredictionFolder.open(out, overwrite=overwrite, resume=resume)
    )
    report = PredictFilesReport()
    batch: list[tuple[Path, Any, Tensor]] = []

    def progress(count: int) -> None:
        if on_progress is not None:
            on_progress(count)

    def flush() -> None:
        tensors = [tensor for _, _, tensor in batch]
        results = model.predict(tensors, batch_size=len(tensors), **dataclasses.asdict(config))
        for (path, image_id, tensor), result in zip(batch, results, strict=True):
            folder.add(_write_result(folder, path, image_id, result))
            if overlay:
                rendered = visualize(tensor, result, model.classes)
                _write_file(folder.overlay_path(path), encode_png(rendered))
            report.written.append(folder.mask_path(path))
        progress(len(batch))
        batch.clear()

    def to_predict() -> Iterator[Path]:
        for path in images:
            if folder.is_done(path, _image_id(path, image_ids), overlay):
                report.resumed.append(path)
                progress(1)
            else:
                yield path

    folder.start(_run_settings(model, config))
    try:
        for path, decoded in _decode_ahead(to_predict(), 2 * batch_size, max_image_pixels):
            if isinstance(decoded, DataError):
                report.skipped[path] = str(decoded)
                if on_skip is not None:
                    on_skip(path, str(decoded))
                progress(1)
                continue
            batch.append((path, _image_id(path, image_ids), decoded))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        report.predictions_json = folder.finish(model.class_mapping.to_list(), images)
    finally:
        folder.close()
    return report


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
    segment_ids = torch.as_tensor(result["segment_ids"])
    height, width = segments.shape
    segments_info = [
        {
            "id": int(segment_id) + 1,
            "category_id": int(category),
            "area": int(area),
            "bbox": box,
            "iscrowd": 0,
            "score": round(float(score), 6),
        }
        for segment_id, category, area, box, score in zip(
            segment_ids.tolist(),
            result["labels"].tolist(),
            *_areas_and_boxes(segments, segment_ids),
            result["scores"].tolist(),
            strict=True,
        )
    ]
    png = encode_png(Image.fromarray(encode_segment_ids((segments + 1).numpy())))
    return PanopticRecord(png, segments_info, height, width)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image, encoded as every PNG of `predict_files` (and the server) is."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_ahead(
    paths: Iterable[Path], depth: int, max_pixels: int
) -> Iterator[tuple[Path, Tensor | DataError]]:
    """Decode images in threads, at most `depth` ahead; failures come back as DataError."""

    def decode(path: Path) -> Tensor | DataError:
        try:
            return to_image_tensor(path, max_pixels)
        except DataError as error:
            return error

    pending: deque[tuple[Path, Future[Tensor | DataError]]] = deque()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for path in paths:
            pending.append((path, pool.submit(decode, path)))
            if len(pending) >= depth:
                done_path, future = pending.popleft()
                yield done_path, future.result()
        while pending:
            done_path, future = pending.popleft()
            yield done_path, future.result()


def _write_result(
    folder: PredictionFolder, path: Path, image_id: Any, result: dict[str, Tensor]
) -> Record:
    """Write one PNG; return its `images` and `annotations` JSON entries."""
    record = panoptic_record(result)
    file_name = folder.mask_path(path).name
    _write_file(folder.mask_path(path), record.png)
    image = {"id": image_id, "file_name": path.name, "height": record.height, "width": record.width}
    annotation = {
        "image_id": image_id,
        "file_name": file_name,
        "segments_info": record.segments_info,
    }
    return image, annotation


def _areas_and_boxes(segments: Tensor, segment_ids: Tensor) -> tuple[list[int], list[list[int]]]:
    """Pixel count and COCO [x, y, width, height] box of each segment, without a segment loop."""
    count = int(segment_ids.max()) + 1 if segment_ids.numel() else 0  # ids are 0..S-1
    ys, xs = torch.nonzero(segments >= 0, as_tuple=True)
    ids = segments[ys, xs]
    area = torch.bincount(ids, minlength=count)
    big = segments.numel()
    lows = [torch.full((count,), big).scatter_reduce(0, ids, c, "amin") for c in (xs, ys)]
    highs = [torch.full((count,), -1).scatter_reduce(0, ids, c, "amax") for c in (xs, ys)]
    boxes = torch.stack([lows[0], lows[1], highs[0] - lows[0] + 1, highs[1] - lows[1] + 1], dim=1)
    return area[segment_ids].tolist(), boxes[segment_ids].tolist()


def _write_file(path: Path, content: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(content))
