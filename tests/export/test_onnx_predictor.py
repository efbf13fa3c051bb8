"""OnnxPredictor: the PyTorch model's predict API and results, without PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from panoptic_train.errors import ConfigError, WeightsError
from panoptic_train.export import OnnxPredictor
from panoptic_train.inference.model import PanopticSegmentationModel

from .conftest import CLASSES, IMAGE_SIZE


def _images(data: dict[str, str]) -> list[Path]:
    return sorted(Path(data["images"]).iterdir())


def _agreement(ours: dict[str, np.ndarray], reference: dict[str, torch.Tensor]) -> float:
    """Share of pixels with the same (category id, segment id)."""
    return float((ours["masks"] == reference["masks"].numpy()).all(axis=-1).mean())


def test_results_have_the_pytorch_layout_and_types(onnx_fp32: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    result = OnnxPredictor(onnx_fp32).predict(image)
    assert set(result) == {"masks", "segment_ids", "scores", "labels"}
    assert result["masks"].shape == (30, 50, 2) and result["masks"].dtype == np.int64
    count = result["segment_ids"].shape[0]
    assert count > 0 and result["segment_ids"].tolist() == list(range(count))
    assert result["scores"].shape == (count,) and result["scores"].dtype == np.float32
    assert result["labels"].dtype == np.int64
    assert set(result["labels"].tolist()) <= set(CLASSES.class_ids)
    segments = result["masks"][..., 1]
    classes = result["masks"][..., 0]
    assert ((segments == -1) == (classes == -1)).all()  # void is -1 in both channels
    for segment, label in zip(result["segment_ids"], result["labels"], strict=True):
        assert (classes[segments == segment] == label).all()


def test_same_segments_as_pytorch_on_synthetic_images(
    model: PanopticSegmentationModel, onnx_fp32: Path, val_data: list[dict[str, str]]
) -> None:
    predictor = OnnxPredictor(onnx_fp32)
    fits, resized = (_images(data) for data in val_data)
    # Images that fit the input need no resize: only onnxruntime's arithmetic differs.
    for ours, reference in zip(predictor.predict(fits), model.predict(fits), strict=True):
        assert ours["labels"].tolist() == reference["labels"].tolist()
        np.testing.assert_allclose(ours["scores"], reference["scores"].numpy(), atol=1e-4)
        assert _agreement(ours, reference) > 0.999
    # Resized images: PIL's and torchvision's antialiased bilinear filters differ by at most 1
    # in 0..255 at some pixels, which moves a few boundary pixels.
    for ours, reference in zip(predictor.predict(resized), model.predict(resized), strict=True):
        assert ours["masks"].shape == reference["masks"].shape == (80, 56, 2)
        assert ours["labels"].tolist() == reference["labels"].tolist()
        assert _agreement(ours, reference) > 0.98


def test_a_graph_with_the_merge_baked_in_predicts_the_same(
    onnx_fp32: Path, onnx_panoptic: Path, val_data: list[dict[str, str]]
) -> None:
    images = _images(val_data[1])[:3]
    logits_graph = OnnxPredictor(onnx_fp32).predict(images)
    merged_graph = OnnxPredictor(onnx_panoptic).predict(images)
    for ours, reference in zip(merged_graph, logits_graph, strict=True):
        assert ours["labels"].tolist() == reference["labels"].tolist()
        assert (ours["masks"] == reference["masks"]).all(axis=-1).mean() > 0.999


def test_inputs_batches_and_threshold_overrides(onnx_fp32: Path, tmp_path: Path) -> None:
    predictor = OnnxPredictor(onnx_fp32)
    array = np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    single = predictor.predict(array)
    for other in (predictor.predict(path), predictor.predict(Image.open(path))):
        assert np.array_equal(other["masks"], single["masks"])

    batched = predictor.predict([array, str(path), array], batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    assert all(np.array_equal(result["masks"], single["masks"]) for result in batched)

    # A score threshold no query reaches leaves every pixel void.
    empty = predictor.predict(array, threshold=1.0)
    assert (empty["masks"] == -1).all() and empty["segment_ids"].shape == (0,)


def test_attributes_come_from_the_file(model: PanopticSegmentationModel, onnx_fp32: Path) -> None:
    predictor = OnnxPredictor(onnx_fp32)
    assert predictor.classes == model.classes
    assert predictor.is_thing == model.is_thing
    assert predictor.image_size == IMAGE_SIZE
    assert predictor.postprocess == model.postprocess
    assert predictor.metadata.outputs == "logits"


def test_runs_without_torch(onnx_fp32: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 256, (36, 52, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from panoptic_train.export import OnnxPredictor

        result = OnnxPredictor(sys.argv[1]).predict(np.load(sys.argv[2]))
        np.save(sys.argv[3], result["masks"])
        print(json.dumps({"torch": "torch" in sys.modules, "labels": result["labels"].tolist()}))
        """
    )
    masks_path = tmp_path / "masks.npy"
    completed = subprocess.run(
        [sys.executable, "-c", script, str(onnx_fp32), str(tmp_path / "image.npy"), masks_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    expected = OnnxPredictor(onnx_fp32).predict(image)
    assert report["labels"] == expected["labels"].tolist()
    assert np.array_equal(np.load(masks_path), expected["masks"])


def test_files_without_panoptic_train_metadata_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.onnx"
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [tensor("x", onnx.TensorProto.FLOAT, [1])],
        [tensor("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(WeightsError, match="no 'panoptic_train' metadata"):
        OnnxPredictor(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxPredictor(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="cannot load"):
        OnnxPredictor(tmp_path / "garbage.onnx")


def test_unsupported_inputs_are_explained(onnx_fp32: Path) -> None:
    predictor = OnnxPredictor(onnx_fp32)
    with pytest.raises(ConfigError, match="numpy"):
        predictor.predict(torch.zeros(3, 8, 8))
    with pytest.raises(ConfigError, match="batch_size"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), batch_size=0)
