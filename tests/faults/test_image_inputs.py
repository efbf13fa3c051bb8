"""What `predict` accepts: one conversion for every kind of input, and a ConfigError or
DataError naming the problem for inputs it cannot use (the ONNX runner too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_train.errors import ConfigError, DataError
from panoptic_train.export.onnx_predictor import OnnxPredictor
from panoptic_train.inference.model import PanopticSegmentationModel, load_model
from panoptic_train.runtime.inputs import to_image_array

LOOSE = {"threshold": 0.0, "overlap_threshold": 0.0}


@pytest.fixture(scope="module")
def model(model_file: Path) -> PanopticSegmentationModel:
    return load_model(model_file, device="cpu")


@pytest.fixture(scope="module")
def onnx_runner(model: PanopticSegmentationModel, tmp_path_factory) -> OnnxPredictor:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return OnnxPredictor(model.export_onnx(path, simplify=False, verify=False))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16-bit grayscale PNG and a JPEG whose EXIF says to rotate it for display."""
    root = tmp_path_factory.mktemp("images")
    gradient = np.linspace(0, 65535, 40 * 56).reshape(40, 56).astype(np.uint16)
    Image.fromarray(gradient).save(root / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(stored).save(root / "rotated.jpg", exif=exif, quality=95)
    return {"deep": root / "deep.png", "rotated": root / "rotated.jpg"}


@pytest.mark.parametrize("name", ["deep", "rotated"])
def test_a_pil_image_predicts_as_its_file(
    model: PanopticSegmentationModel, files: dict[str, Path], name: str
) -> None:
    path = files[name]
    with Image.open(path) as image:
        np.testing.assert_array_equal(to_image_array(image), to_image_array(path))
        from_pil = model.predict(image, **LOOSE)
    from_path = model.predict(path, **LOOSE)
    assert torch.equal(from_pil["masks"], from_path["masks"])
    assert to_image_array(path).mean() < 200  # 16-bit values scaled, not clipped to white


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), r"empty image \(shape \(0, 0, 3\)\)"),
        (np.zeros((4, 0, 3), np.uint8), r"empty image \(shape \(4, 0, 3\)\)"),
        (torch.zeros(3, 0, 5), r"empty image \(shape \(3, 0, 5\)\)"),
        (torch.full((3, 4, 4), float("nan")), "holds 48 NaN or infinite value"),
        (torch.tensor([[[0.5, float("inf")]]]), "holds 1 NaN or infinite value"),
    ],
    ids=["empty array", "zero-width array", "empty tensor", "nan tensor", "inf gray tensor"],
)
def test_unusable_images_are_named(
    model: PanopticSegmentationModel, image: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        model.predict(image)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_a_bad_batch_size_is_named(
    model: PanopticSegmentationModel, onnx_runner: OnnxPredictor, value: Any
) -> None:
    for predictor in (model, onnx_runner):
        with pytest.raises(ConfigError, match=rf"predict batch_size .* got {value!r}"):
            predictor.predict(np.zeros((8, 8, 3), np.uint8), batch_size=value)


def test_the_onnx_runner_refuses_the_same_inputs(
    onnx_runner: OnnxPredictor, files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"empty image \(shape \(0, 0, 3\)\)"):
        onnx_runner.predict(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(DataError, match=r"more than the limit of 100 pixels"):
        onnx_runner.predict(files["deep"], max_image_pixels=100)
    with Image.open(files["rotated"]) as image:
        assert onnx_runner.predict(image)["masks"].shape[:2] == (56, 40)  # upright, as the file


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing.jpg", r"Image '.*missing\.jpg' does not exist\. Check"),
        (lambda root: root, r"is a folder, not an image file"),
    ],
    ids=["missing path", "folder"],
)
def test_a_missing_path_or_a_folder_is_named_as_such(
    model: PanopticSegmentationModel, tmp_path: Path, make: Any, message: str
) -> None:
    with pytest.raises(DataError, match=message) as error:
        model.predict(make(tmp_path))
    assert "Replace the file" not in str(error.value)


def test_a_pil_image_over_the_limit_is_refused_before_decoding(
    model: PanopticSegmentationModel, files: dict[str, Path]
) -> None:
    with Image.open(files["deep"]) as image, pytest.raises(DataError, match="The PIL image is"):
        model.predict(image, max_image_pixels=1000)
