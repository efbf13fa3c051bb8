"""fp16 exports keep accuracy: panoptic quality on synthetic validation images within 0.5 PQ
points of the fp32 export (both run in onnxruntime on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic_train.data.coco import read_panoptic_index
from panoptic_train.data.dataset import PanopticValDataset
from panoptic_train.data.transforms import NormalizeArgs
from panoptic_train.evaluation.pq import PanopticQualityAccumulator
from panoptic_train.export import OnnxPredictor

from .conftest import CLASSES, IMAGE_SIZE, MEAN, STD


def _class_indices(masks: np.ndarray) -> torch.Tensor:
    """(category id, segment id) map -> (contiguous class index, segment id), void kept."""
    lookup = {category: index for index, category in enumerate(CLASSES.class_ids)}
    classes = np.vectorize(lambda c: lookup.get(int(c), -1))(masks[..., 0])
    return torch.from_numpy(np.stack([classes, masks[..., 1]], axis=-1).astype(np.int64))


def _accumulator() -> PanopticQualityAccumulator:
    return PanopticQualityAccumulator(CLASSES.num_classes, CLASSES.is_thing)


@pytest.mark.slow
def test_fp16_panoptic_quality_is_within_half_a_point_of_fp32(
    onnx_fp32: Path, onnx_fp16: Path, val_data: list[dict[str, str]]
) -> None:
    predictors = {"fp32": OnnxPredictor(onnx_fp32), "fp16": OnnxPredictor(onnx_fp16)}
    against_truth = {name: _accumulator() for name in predictors}
    fp16_against_fp32 = _accumulator()
    for data in val_data:
        index = read_panoptic_index(data["images"], data["masks"], data["annotations"])
        dataset = PanopticValDataset(index, CLASSES, IMAGE_SIZE, NormalizeArgs(mean=MEAN, std=STD))
        paths = [sample.image_path for sample in index.samples]
        predictions = {name: p.predict(paths) for name, p in predictors.items()}
        for i, sample in enumerate(dataset):
            maps = {name: _class_indices(predictions[name][i]["masks"]) for name in predictors}
            for name, accumulator in against_truth.items():
                accumulator.update(maps[name], sample["target"], sample["crowd"])
            fp16_against_fp32.update(maps["fp16"], maps["fp32"], torch.zeros_like(sample["crowd"]))

    pq = {name: acc.compute()["All"]["pq"] * 100 for name, acc in against_truth.items()}
    assert abs(pq["fp16"] - pq["fp32"]) <= 0.5
    # Stronger: scored against the fp32 predictions, fp16 ones are nearly identical.
    agreement = fp16_against_fp32.compute()["All"]
    assert agreement["n"] > 0 and agreement["pq"] * 100 >= 99.0
