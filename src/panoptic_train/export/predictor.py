"""The `predict` of exported files: the API and outputs of `PanopticSegmentationModel.predict`,
with the network run by another engine.

Torch-free: the ONNX runner builds on it without PyTorch. Subclasses load images, run their
engine and call the shared post-processing (`runtime.postprocess`) on its logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, overload

from panoptic_train._validate import positive_int
from panoptic_train.data.io import DEFAULT_MAX_IMAGE_PIXELS
from panoptic_train.export.metadata import ExportMetadata
from panoptic_train.runtime.array_ops import Array, array_ops
from panoptic_train.runtime.inputs import ImageInput, is_single_image
from panoptic_train.runtime.postprocess import PanopticPrediction, PostprocessConfig


class ExportedModelPredictor(ABC):
    """predict() for an exported file; attributes as on PanopticSegmentationModel.

    Attributes:
        metadata: what the file carries (see `export.metadata.ExportMetadata`).
        classes: category id -> class name; is_thing: category id -> thing flag.
        image_size: (height, width) images are resized and padded to.
        postprocess: the default thresholds of `predict`.
        max_batch_size: the most images the engine takes at once (None: no limit).
    """

    max_batch_size: int | None = None

    def __init__(self, metadata: ExportMetadata) -> None:
        self.metadata = metadata
        mapping = metadata.classes
        self.model_name = metadata.model_name
        self.classes = dict(zip(mapping.class_ids, mapping.names, strict=True))
        self.is_thing = dict(zip(mapping.class_ids, mapping.is_thing, strict=True))
        self.image_size = metadata.image_size
        self.postprocess = metadata.postprocess

    # A path string is also a sequence, which mypy counts as an overlap; one str is one image.
    @overload
    def predict(  # type: ignore[overload-overlap]
        self,
        image: ImageInput,
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        batch_size: int = 8,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> dict[str, Array]: ...

    @overload
    def predict(
        self,
        image: Sequence[ImageInput],
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        batch_size: int = 8,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> list[dict[str, Array]]: ...

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        batch_size: int = 8,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> dict[str, Array] | list[dict[str, Array]]:
        """Panoptic segmentation of one image, or of a list of images (run in batches).

        Arguments and results as `PanopticSegmentationModel.predict`: per image `masks` int64
        (H, W, 2) with (category id, segment id), void -1 in both; `segment_ids` int64 (S,);
        `scores` float32 (S,); `labels` int64 (S,) category ids.
        """
        positive_int(batch_size, "predict batch_size")
        positive_int(max_image_pixels, "predict max_image_pixels")
        config = self.postprocess.replace(threshold, mask_threshold, overlap_threshold)
        images = [image] if is_single_image(image) else list(image)
        step = min(batch_size, self.max_batch_size or batch_size)
        results: list[dict[str, Array]] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            results.extend(self._predict_batch(chunk, config, max_image_pixels))
        return results[0] if is_single_image(image) else results

    @abstractmethod
    def _predict_batch(
        self, images: Sequence[Any], config: PostprocessConfig, max_image_pixels: int
    ) -> list[dict[str, Array]]:
        """Predict a batch of at most max_batch_size images (files and PIL images of more than
        `max_image_pixels` pixels are refused before decoding)."""


def to_category_ids(prediction: PanopticPrediction, category_ids: Array) -> dict[str, Array]:
    """Contiguous class indices -> the dataset's category ids (void stays -1).

    `category_ids` is an array of the prediction's kind (numpy or torch, same device).
    """
    ops = array_ops(category_ids)
    masks = prediction["masks"]
    classes = masks[..., 0]
    categories = ops.where(classes >= 0, category_ids[classes.clip(min=0)], -1)
    return {
        "masks": ops.stack([categories, masks[..., 1]], axis=-1),
        "segment_ids": prediction["segment_ids"],
        "scores": prediction["scores"],
        "labels": category_ids[prediction["labels"]],
    }
