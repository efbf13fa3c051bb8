"""`predict` + files + `evaluate_panoptic` count exactly what training's validation counts.

Validation (`train.validate.evaluate_network` on the val dataset's batches) and a user's
`panoptic-train predict` + `panoptic-train evaluate` must agree segment for segment, or the PQ a
training run reports would not be the PQ users get. A random network with every query kept gives
many segments per image, so the per-class TP / FP / FN counts compare real work.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_train.data.config import load_data_args
from panoptic_train.data.dataset import build_datasets, collate_val
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.evaluation.files import evaluate_panoptic
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.inference.predict_files import (
    collect_images,
    image_ids_from_annotations,
    predict_files,
)
from panoptic_train.runtime.postprocess import PostprocessConfig
from panoptic_train.train.validate import evaluate_network

from .conftest import MEAN, STD

LOOSE = PostprocessConfig(threshold=0.0, overlap_threshold=0.0)


def test_predicted_files_score_like_validation(
    tiny_model: PanopticSegmentationModel, tmp_path: Path
) -> None:
    # 48x72 images are resized into the 64x64 input, so preprocessing geometry is exercised
    data = {
        split: write_dataset(tmp_path / "data", count, image_size=(48, 72), seed=5, split=split)
        for split, count in (("train", 1), ("val", 4))
    }
    transform_args = load_transform_args(
        {"image_size": (64, 64), "normalize": {"mean": MEAN, "std": STD}}
    )
    datasets = build_datasets(load_data_args(data), transform_args)
    loader = torch.utils.data.DataLoader(datasets.val, batch_size=2, collate_fn=collate_val)
    validation = evaluate_network(
        tiny_model.network, loader, datasets.classes, (64, 64), LOOSE, torch.device("cpu")
    )

    val = data["val"]
    out = tmp_path / "predictions"
    predict_files(
        tiny_model,
        collect_images([val["images"]]),
        out,
        image_ids=image_ids_from_annotations(val["annotations"]),
        threshold=LOOSE.threshold,
        overlap_threshold=LOOSE.overlap_threshold,
    )
    from_files = evaluate_panoptic(
        val["annotations"], val["masks"], out / "predictions.json", out / "panoptic"
    )

    assert sum(entry["fp"] + entry["tp"] for entry in validation["per_class"].values()) > 10
    for class_id, expected in validation["per_class"].items():
        got = from_files["per_class"][class_id]
        for key in ("tp", "fp", "fn"):
            assert got[key] == expected[key], (class_id, key)
        assert got["iou"] == pytest.approx(expected["iou"], abs=1e-9)
    for group in ("All", "Things", "Stuff"):
        assert from_files[group]["pq"] == pytest.approx(validation[group]["pq"], abs=1e-9)
