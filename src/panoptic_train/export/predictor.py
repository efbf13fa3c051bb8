"""The `predict` of exported files: the API and outputs of `PanopticSegmentationModel.predict`,
with the network run by another engine.

Torch-free: the ONNX runner builds on it without PyTorch. Subclasses implement
`runtime.predict.BatchPredictor._predict_batch`: load images, run their engine and call the
shared post-processing (`runtime.postprocess`) on its logits.
"""

from __future__ import annotations

from panoptic_train.export.metadata import ExportMetadata
from panoptic_train.runtime.array_ops import Array, array_ops
from panoptic_train.runtime.postprocess import PanopticPrediction
from panoptic_train.runtime.predict import BatchPredictor


class ExportedModelPredictor(BatchPredictor[dict[str, Array]]):
    """predict() for an exported file; attributes as on PanopticSegmentationModel.

    Attributes:
        metadata: what the file carries (see `export.metadata.ExportMetadata`).
        classes: category id -> class name; is_thing: category id -> thing flag.
        image_size: (height, width) images are resized and padded to.
        postprocess: the default thresholds of `predict`.
        max_batch_size: the most images the engine takes at once (None: no limit).
    """

    def __init__(self, metadata: ExportMetadata) -> None:
        self.metadata = metadata
        mapping = metadata.classes
        self.model_name = metadata.model_name
        self.classes = dict(zip(mapping.class_ids, mapping.names, strict=True))
        self.is_thing = dict(zip(mapping.class_ids, mapping.is_thing, strict=True))
        self.image_size = metadata.image_size
        self.postprocess = metadata.postprocess


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
