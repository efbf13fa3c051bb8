"""`panoptic-train export`: arguments reach the export functions, errors are the user's."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import onnx
import pytest

from panoptic_train.cli import main
from panoptic_train.export import OnnxPredictor
from panoptic_train.inference.model import PanopticSegmentationModel


@pytest.fixture(scope="module")
def model_file(model: PanopticSegmentationModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "exported_best.pt"
    model.save(path)
    return path


def test_onnx_export_writes_a_file_the_runner_reads(
    model_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "model.onnx"
    argv = [str(model_file), "--format", "onnx", "--out", str(out), "--no-simplify"]
    with caplog.at_level(logging.INFO, logger="panoptic_train.export"):
        assert main(["export", *argv, "--precision", "fp16", "--postprocess", "--opset", "18"]) == 0
    assert "Verification passed (onnxruntime fp16" in caplog.text
    predictor = OnnxPredictor(out)
    assert predictor.metadata.precision == "fp16"
    assert predictor.metadata.outputs == "panoptic"
    assert onnx.load(str(out)).opset_import[0].version == 18


def test_tensorrt_without_tensorrt_fails_before_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    argv = [str(tmp_path / "absent.pt"), "--format", "tensorrt", "--out", str(tmp_path / "m")]
    assert main(["export", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Building a TensorRT engine needs the Python package")
    assert 'pip install "panoptic-train[tensorrt]"' in error
