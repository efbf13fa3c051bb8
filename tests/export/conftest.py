"""A tiny random EoMT wrapped as the PyTorch model, its ONNX exports and a synthetic val set,
built once per session (exports are the slow part of these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.synthetic import CATEGORIES, write_dataset
from panoptic_train.export.onnx import export_onnx
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.postprocess import PostprocessConfig

# The synthetic dataset's categories: non-contiguous ids (1, 2, 3, 10, 11, 12), things and stuff.
CLASSES = ClassMapping.from_list(CATEGORIES)
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
IMAGE_SIZE = (64, 64)
# Random weights rarely reach the 0.8 class score; the test model's default thresholds keep
# every query in play, so that exports and runners have segments to agree on.
LOOSE = PostprocessConfig(threshold=0.0, overlap_threshold=0.0)


def tiny_model(seed: int = 0) -> PanopticSegmentationModel:
    torch.manual_seed(seed)
    network = create_model(
        "dinov3/vitt16-eomt",
        num_classes=CLASSES.num_classes,
        backbone_weights=None,
        image_size=IMAGE_SIZE,
        num_queries=8,
    )
    return PanopticSegmentationModel(
        network,
        CLASSES,
        model_name="dinov3/vitt16-eomt",
        mean=MEAN,
        std=STD,
        postprocess=LOOSE,
        device="cpu",
    )


@pytest.fixture(scope="session")
def model() -> PanopticSegmentationModel:
    return tiny_model()


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def onnx_fp32(model: PanopticSegmentationModel, exports: Path) -> Path:
    """The default export (simplified, verified), traced with a batch of 2."""
    return export_onnx(model, exports / "fp32.onnx", batch_size=2)


@pytest.fixture(scope="session")
def onnx_raw(model: PanopticSegmentationModel, exports: Path) -> Path:
    """fp32 as traced, through the model's own method (no onnxslim, no verification)."""
    return model.export_onnx(exports / "raw.onnx", simplify=False, verify=False)


# The other variants skip onnxslim and verification to keep the suite fast; the tests verify
# them explicitly with verify_onnx.
@pytest.fixture(scope="session")
def onnx_fp16(model: PanopticSegmentationModel, exports: Path) -> Path:
    return export_onnx(model, exports / "fp16.onnx", precision="fp16", simplify=False, verify=False)


@pytest.fixture(scope="session")
def onnx_panoptic(model: PanopticSegmentationModel, exports: Path) -> Path:
    return export_onnx(
        model, exports / "panoptic.onnx", postprocess=True, simplify=False, verify=False
    )


@pytest.fixture(scope="session")
def val_data(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """Two synthetic val splits: 48x64 images fit the 64x64 input as they are, 80x56 ones are
    resized (and padded on the right)."""
    root = tmp_path_factory.mktemp("synthetic")
    return [
        write_dataset(root / "fits", 6, image_size=(48, 64), split="val"),
        write_dataset(root / "resized", 6, image_size=(80, 56), split="val", seed=1),
    ]
