"""End-to-end training on the synthetic dataset: it learns, and it writes what users rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import panoptic_train
from panoptic_train.data.config import load_data_args
from panoptic_train.data.dataset import build_datasets, collate_val
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.postprocess import PostprocessConfig
from panoptic_train.train.validate import evaluate_network

from .conftest import fast_run

# Every test here trains (the shared run: about a minute and a half on two cores).
pytestmark = pytest.mark.slow

STEPS = 120
IMAGE_SIZE = (128, 128)
# Honest thresholds from repeated runs of this exact configuration (PQ about 0.45-0.5 after 120
# steps; stuff classes are learned first, things later). The untrained network scores ~0.
MIN_TRAINED_PQ = 0.35
MAX_UNTRAINED_PQ = 0.05


@pytest.fixture(scope="module")
def trained(synthetic_data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    panoptic_train.train_panoptic_segmentation(
        **fast_run(
            synthetic_data,
            out,
            steps=STEPS,
            batch_size=4,
            transform_args={"image_size": IMAGE_SIZE},
            model_args={"num_queries": 20, "loss_num_points": 1024, "lr": 1e-3, "llrd": 1.0},
            logger_args={"val_every_num_steps": STEPS // 2, "log_every_num_steps": 10},
        )
    )
    return out


def _untrained_pq(data: dict[str, Any]) -> float:
    transform_args = load_transform_args({"image_size": IMAGE_SIZE})
    datasets = build_datasets(load_data_args(data), transform_args)
    torch.manual_seed(0)
    network = create_model(
        "dinov3/vitt16-eomt",
        datasets.classes.num_classes,
        backbone_weights=None,
        num_queries=20,
        image_size=IMAGE_SIZE,
    )
    loader = torch.utils.data.DataLoader(datasets.val, batch_size=4, collate_fn=collate_val)
    results = evaluate_network(
        network, loader, datasets.classes, IMAGE_SIZE, PostprocessConfig(), torch.device("cpu")
    )
    return results["All"]["pq"]


def test_the_model_learns(trained: Path, synthetic_data: dict[str, Any]) -> None:
    checkpoint = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    best_pq = checkpoint["best_metric"]
    untrained = _untrained_pq(synthetic_data)
    assert untrained <= MAX_UNTRAINED_PQ
    assert best_pq >= MIN_TRAINED_PQ, f"validation PQ {best_pq:.3f} after {STEPS} steps"


def test_outputs_are_written_and_load_safely(trained: Path, synthetic_data: dict) -> None:
    for name in ("exported_models/exported_best.pt", "exported_models/exported_last.pt"):
        content = torch.load(trained / name, weights_only=True)
        assert content["format"] == "panoptic_train.eomt_panoptic"
        assert content["image_size"] == list(IMAGE_SIZE)
        assert [c["id"] for c in content["classes"]] == [1, 2, 3, 10, 11, 12]
    checkpoint = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["step"] == STEPS and checkpoint["samples_seen"] == 4 * STEPS
    config = json.loads((trained / "config.json").read_text())
    assert config["arguments"]["steps"] == STEPS
    assert config["resolved"]["micro_batch_size"] == 4
    assert config["resolved"]["precision"] == "32-true"  # the bf16-mixed default, on a CPU
    assert "Validation at step" in (trained / "train.log").read_text()

    # The exported model and the checkpoint both predict; classes are the dataset's ids.
    image = Path(synthetic_data["val"]["images"]) / "000001.png"
    for name in ("exported_models/exported_best.pt", "checkpoints/last.ckpt"):
        result = panoptic_train.load_model(trained / name, device="cpu").predict(image)
        assert result["masks"].shape == (96, 128, 2)
        labels = set(result["masks"][..., 0].unique().tolist()) - {-1}
        assert labels <= {1, 2, 3, 10, 11, 12}


def test_tensorboard_receives_training_and_validation_scalars(trained: Path) -> None:
    events = EventAccumulator(str(trained / "logs" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "lr", "lr_backbone", "images_per_second", "val_metric/pq"} <= tags
    assert {"val_metric/pq_things", "val_metric/sq_stuff", "train/loss_dice"} <= tags
    # The gradient norm is logged before clipping: well above the clip value.
    grad_norms = [event.value for event in events.Scalars("train/grad_norm")]
    assert len(grad_norms) == STEPS // 10 and min(grad_norms) > 0.01
    assert [event.step for event in events.Scalars("val_metric/pq")] == [STEPS // 2, STEPS]
    losses = [event.value for event in events.Scalars("train_loss")]
    assert len(losses) == STEPS // 10 and losses[-1] < losses[0]


def test_compiled_run_saves_plain_parameter_names(
    synthetic_data: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "compiled"
    panoptic_train.train_panoptic_segmentation(
        **fast_run(
            synthetic_data,
            out,
            steps=1,
            logger_args={"tensorboard": None},
            torch_compile_args={"disable": False, "backend": "eager"},
        )
    )
    checkpoint = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    names = list(checkpoint["model"]["state_dict"]) + list(checkpoint["optimizer"]["state"])
    assert "class_head.weight" in names and not any("_orig_mod" in name for name in names)
    panoptic_train.load_model(out / "exported_models/exported_last.pt", device="cpu")


def test_predicting_the_val_set_scores_the_pq_validation_reported(
    trained: Path, synthetic_data: dict[str, Any], tmp_path: Path
) -> None:
    # The whole user path: load the exported best model, predict the val images to COCO panoptic
    # files, score them with the file evaluator. Validation ran the same network in memory.
    from panoptic_train.inference.predict_files import (
        collect_images,
        image_ids_from_annotations,
        predict_files,
    )

    val = synthetic_data["val"]
    best_pq = torch.load(trained / "checkpoints/last.ckpt", weights_only=True)["best_metric"]
    model = panoptic_train.load_model(trained / "exported_models/exported_best.pt", device="cpu")
    report = predict_files(
        model,
        collect_images([val["images"]]),
        tmp_path,
        image_ids=image_ids_from_annotations(val["annotations"]),
    )
    assert not report.skipped and report.predictions_json is not None
    metrics = panoptic_train.evaluate_panoptic(
        val["annotations"], val["masks"], report.predictions_json, report.written[0].parent
    )
    assert best_pq >= MIN_TRAINED_PQ
    assert metrics["All"]["pq"] == pytest.approx(best_pq, abs=1e-6)


def test_fp16_onnx_export_of_the_trained_model_keeps_its_pq(
    trained: Path, synthetic_data: dict[str, Any], tmp_path: Path
) -> None:
    # With random weights every export scores PQ 0, so fp16 accuracy is only meaningful on a
    # model that learned something: within 0.5 PQ points of the fp32 export on the val set.
    from panoptic_train.evaluation.pq import PanopticQualityAccumulator
    from panoptic_train.export import OnnxPredictor

    model = panoptic_train.load_model(trained / "exported_models/exported_best.pt", device="cpu")
    datasets = build_datasets(
        load_data_args(synthetic_data), load_transform_args({"image_size": IMAGE_SIZE})
    )
    classes = datasets.classes
    # category id -> class index; the last entry stays -1 so that void (-1) maps to void
    to_index = np.full(max(classes.class_ids) + 2, -1, dtype=np.int64)
    to_index[list(classes.class_ids)] = np.arange(classes.num_classes)
    paths = [sample.image_path for sample in datasets.val.index.samples]

    pq = {}
    for precision in ("fp32", "fp16"):
        onnx_file = tmp_path / f"model_{precision}.onnx"
        model.export_onnx(onnx_file, precision=precision)
        accumulator = PanopticQualityAccumulator(classes.num_classes, classes.is_thing)
        predictions = OnnxPredictor(onnx_file).predict(paths)
        for prediction, sample in zip(predictions, datasets.val, strict=True):
            masks = np.asarray(prediction["masks"], dtype=np.int64)
            pred = np.stack([to_index[masks[..., 0]], masks[..., 1]], axis=-1)
            accumulator.update(torch.from_numpy(pred), sample["target"], sample["crowd"])
        pq[precision] = accumulator.compute()["All"]["pq"] * 100
    assert pq["fp32"] >= MIN_TRAINED_PQ * 100
    assert abs(pq["fp16"] - pq["fp32"]) <= 0.5, pq
