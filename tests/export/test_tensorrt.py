"""TensorRT export and runner where TensorRT or a GPU is missing: clear errors, raised before
any slow work. (Building and running engines needs both; see the README for the GPU check.)"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from panoptic_train.errors import ConfigError, MissingDependencyError
from panoptic_train.export import GPUUnavailableError, TensorRTPredictor, export_tensorrt
from panoptic_train.inference.model import PanopticSegmentationModel

TENSORRT_EXTRA = r'pip install "panoptic-train\[tensorrt\]"'


@pytest.fixture
def without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError


@pytest.fixture
def tensorrt_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """An importable stand-in for the tensorrt package on a machine without CUDA."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))


@pytest.mark.usefixtures("without_tensorrt")
def test_export_without_tensorrt_names_the_extra(
    model: PanopticSegmentationModel, tmp_path: Path
) -> None:
    out = tmp_path / "model.engine"
    with pytest.raises(MissingDependencyError, match=TENSORRT_EXTRA):
        export_tensorrt(model, out)
    with pytest.raises(MissingDependencyError, match=TENSORRT_EXTRA):
        model.export_tensorrt(out, precision="fp16")
    assert not out.exists()


@pytest.mark.usefixtures("without_tensorrt")
def test_runner_without_tensorrt_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=TENSORRT_EXTRA):
        TensorRTPredictor(tmp_path / "model.engine")


@pytest.mark.usefixtures("tensorrt_without_gpu")
def test_without_a_gpu_the_error_says_so(model: PanopticSegmentationModel, tmp_path: Path) -> None:
    with pytest.raises(GPUUnavailableError, match=r"needs an NVIDIA GPU .* OnnxPredictor"):
        export_tensorrt(model, tmp_path / "model.engine")
    with pytest.raises(GPUUnavailableError, match=r"torch\.cuda\.is_available"):
        TensorRTPredictor(tmp_path / "model.engine")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int8"}, "precision='int8'"),
        ({"workspace_gb": 0}, "workspace_gb must be positive"),
        ({"min_batch_size": 4, "opt_batch_size": 2}, "min_batch_size <= opt_batch_size"),
        ({"max_batch_size": 0}, "got 1, 1, 0"),
    ],
)
def test_bad_options_are_rejected_first(
    model: PanopticSegmentationModel, tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        export_tensorrt(model, tmp_path / "model.engine", **kwargs)
