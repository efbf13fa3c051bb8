"""Run an exported ONNX file with onnxruntime, without PyTorch.

Pre-processing is numpy (`runtime.preprocess`), post-processing the shared
`runtime.postprocess.panoptic_postprocess` on numpy arrays: the results are those of
`PanopticSegmentationModel.predict`, as numpy arrays. Graphs with the merge baked in run here
through their logits outputs (onnxruntime then skips the merge), so thresholds can still be
changed per call and masks come out at each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from panoptic_train._host_memory import tune_for_tensors
from panoptic_train._types import PathLike
from panoptic_train.errors import WeightsError, require
from panoptic_train.export.metadata import INPUT_NAME, LOGIT_OUTPUTS, METADATA_KEY, ExportMetadata
from panoptic_train.export.predictor import ExportedModelPredictor, to_category_ids
from panoptic_train.runtime.inputs import to_image_array
from panoptic_train.runtime.postprocess import PostprocessConfig, panoptic_postprocess
from panoptic_train.runtime.preprocess import resize_and_pad_array


class OnnxPredictor(ExportedModelPredictor):
    """`predict` on an ONNX file written by `export_onnx`; everything it needs is in the file.

    providers: onnxruntime execution providers, by default ["CPUExecutionProvider"] (e.g.
        ["CUDAExecutionProvider", "CPUExecutionProvider"] with onnxruntime-gpu).
    session_options: an onnxruntime.SessionOptions (threads, graph optimisation level).
    Inputs: image paths, PIL images, numpy (H, W, 3) uint8 arrays, or lists of them.
    """

    def __init__(
        self,
        path: PathLike,
        providers: Sequence[str] | None = None,
        session_options: Any = None,
    ) -> None:
        ort = require("onnxruntime", "onnx", "Running an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model '{path}' does not exist.")
        try:
            self.session = ort.InferenceSession(
                str(path),
                sess_options=session_options,
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as error:  # onnxruntime raises its own types for unreadable models
            raise WeightsError(f"onnxruntime cannot load '{path}': {error}") from error
        super().__init__(metadata_of_session(self.session, f"'{path}'"))
        tune_for_tensors()  # the merge runs in numpy on the host, whatever the provider
        self._category_ids = np.asarray(self.metadata.classes.class_ids, dtype=np.int64)

    def _predict_batch(
        self, images: Sequence[Any], config: PostprocessConfig, max_image_pixels: int
    ) -> list[dict[str, np.ndarray]]:
        metadata = self.metadata
        arrays = [to_image_array(image, max_image_pixels) for image in images]
        prepared = [
            resize_and_pad_array(array, metadata.image_size, metadata.mean, metadata.std)
            for array in arrays
        ]
        batch = np.stack([inputs for inputs, _ in prepared])
        class_logits, mask_logits = self.session.run(list(LOGIT_OUTPUTS), {INPUT_NAME: batch})
        predictions = panoptic_postprocess(
            class_logits,
            mask_logits,
            metadata.classes.is_thing,
            input_size=metadata.image_size,
            resized_sizes=[resized for _, resized in prepared],
            orig_sizes=[(array.shape[0], array.shape[1]) for array in arrays],
            config=config,
        )
        return [to_category_ids(prediction, self._category_ids) for prediction in predictions]


def metadata_of_session(session: Any, source: str) -> ExportMetadata:
    """The panoptic_train metadata of a loaded ONNX model; `source` names it in errors."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise WeightsError(
            f"{source} has no '{METADATA_KEY}' metadata, so it was not written by panoptic_train's "
            "export_onnx. Export the model with `model.export_onnx(...)` or `panoptic-train "
            "export MODEL --format onnx`."
        )
    return ExportMetadata.from_json(text, source)
