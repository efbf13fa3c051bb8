"""A tiny randomly initialised EoMT saved as an exported model, shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.synthetic import CATEGORIES
from panoptic_train.inference.model import PanopticSegmentationModel, load_model
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.model_file import ExportedModel

# The synthetic dataset's categories: non-contiguous ids (1, 2, 3, 10, 11, 12), things and stuff.
CLASSES = ClassMapping.from_list(CATEGORIES)
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def tiny_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "dinov3/vitt16-eomt",
        num_classes=CLASSES.num_classes,
        backbone_weights=None,
        image_size=(64, 64),
        num_queries=8,
    )


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "exported_best.pt"
    ExportedModel.from_network(
        tiny_network(),
        model_name="dinov3/vitt16-eomt",
        classes=CLASSES,
        mean=MEAN,
        std=STD,
    ).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_file: Path) -> PanopticSegmentationModel:
    return load_model(tiny_model_file, device="cpu")
