"""`predict` of every model kind: one image or a list of them, run in batches.

`PanopticSegmentationModel` (PyTorch) and the exported-model runners (ONNX, TensorRT) differ only
in how they run a batch, so they share this method and its typing: one image gives one result,
a list or tuple of images a list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar, overload

from panoptic_train._validate import positive_int
from panoptic_train.data.io import DEFAULT_MAX_IMAGE_PIXELS
from panoptic_train.runtime.inputs import ImageInput, is_single_image
from panoptic_train.runtime.postprocess import PostprocessConfig

Result = TypeVar("Result")


class BatchPredictor(ABC, Generic[Result]):
    """`predict` over `_predict_batch`; `postprocess` holds the default thresholds.

    max_batch_size: the most images the engine takes at once (None: no limit).
    """

    postprocess: PostprocessConfig
    max_batch_size: int | None = None

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
    ) -> Result: ...

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
    ) -> list[Result]: ...

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        batch_size: int = 8,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> Result | list[Result]:
        """Panoptic segmentation of one image, or of a list of images (run in batches).

        image: a path, PIL image, numpy (H, W, 3) uint8 array, torch (3, H, W) tensor (uint8, or
            float in 0..1; not for the ONNX runner, which runs without torch), or a list/tuple
            of these.
        threshold, mask_threshold, overlap_threshold: override `self.postprocess` for this call.
        batch_size: images per batch, at most `max_batch_size`.
        max_image_pixels: files and PIL images with more pixels are refused (DataError) before
            they are decoded.

        Returns per image a dict of CPU arrays (torch tensors; numpy arrays from the ONNX runner):
            masks: int64 (H, W, 2) at the image's size: (category id, segment id) per pixel;
                void pixels are -1 in both channels.
            segment_ids: int64 (S,); scores: float32 (S,); labels: int64 (S,) category ids.
        """
        positive_int(batch_size, "predict batch_size")
        positive_int(max_image_pixels, "predict max_image_pixels")
        config = self.postprocess.replace(threshold, mask_threshold, overlap_threshold)
        images = [image] if is_single_image(image) else list(image)
        step = min(batch_size, self.max_batch_size or batch_size)
        results: list[Result] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            results.extend(self._predict_batch(chunk, config, max_image_pixels))
        return results[0] if is_single_image(image) else results

    @abstractmethod
    def _predict_batch(
        self, images: Sequence[ImageInput], config: PostprocessConfig, max_image_pixels: int
    ) -> list[Result]:
        """The results of at most `max_batch_size` images (files and PIL images of more than
        `max_image_pixels` pixels are refused before decoding)."""
