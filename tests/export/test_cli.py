"""`panoptic-train export`: arguments reach the export functions, errors are the user's."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import onnx
import pytest

from panoptic_train.errors import MissingDependencyError
from panoptic_train.export import OnnxPredictor, _cli
from panoptic_train.inference.model import PanopticSegmentationModel


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    _cli.add_arguments(parser)
    return _cli.run(parser.parse_args(argv))


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
        assert _run([*argv, "--precision", "fp16", "--postprocess", "--opset", "18"]) == 0
    assert "Verification passed (onnxruntime fp16" in caplog.text
    predictor = OnnxPredictor(out)
    assert predictor.metadata.precision == "fp16"
    assert predictor.metadata.outputs == "panoptic"
    assert onnx.load(str(out)).opset_import[0].version == 18


def test_tensorrt_without_tensorrt_fails_before_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    argv = [str(tmp_path / "absent.pt"), "--format", "tensorrt", "--out", str(tmp_path / "m")]
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        _run(argv)
