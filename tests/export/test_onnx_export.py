"""export_onnx: the graph's interface, metadata, precisions, the baked-in merge, verification,
simplification and argument errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from panoptic_train.errors import ConfigError, MissingDependencyError
from panoptic_train.export import ExportError, export_onnx, export_tensorrt, verify_onnx
from panoptic_train.export import _verify as verification
from panoptic_train.inference.model import PanopticSegmentationModel

from .conftest import CLASSES, IMAGE_SIZE, MEAN, STD, tiny_model


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _network_logits(model: PanopticSegmentationModel, images: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        output = model.network(torch.from_numpy(images))
    return [output.class_logits[-1].numpy(), output.mask_logits[-1].numpy()]


def test_graph_has_a_dynamic_batch_and_matches_pytorch_at_any_batch(
    model: PanopticSegmentationModel, onnx_fp32: Path
) -> None:
    session = _session(onnx_fp32)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "images" and graph_input.type == "tensor(float)"
    assert isinstance(graph_input.shape[0], str)  # symbolic: traced with 2, runs any batch
    assert graph_input.shape[1:] == [3, *IMAGE_SIZE]
    assert [output.name for output in session.get_outputs()] == ["class_logits", "mask_logits"]

    rng = np.random.default_rng(0)
    for batch in (1, 3):
        images = rng.normal(size=(batch, 3, *IMAGE_SIZE)).astype(np.float32)
        got = session.run(None, {"images": images})
        expected = _network_logits(model, images)
        assert got[0].shape == (batch, 8, CLASSES.num_classes + 1)
        assert got[1].shape == (batch, 8, IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4)
        for ours, reference in zip(got, expected, strict=True):
            np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)


def test_metadata_carries_everything_a_runner_needs(
    model: PanopticSegmentationModel, onnx_fp32: Path
) -> None:
    proto = onnx.load(str(onnx_fp32), load_external_data=False)
    props = {entry.key: entry.value for entry in proto.metadata_props}
    metadata = json.loads(props["panoptic_train"])
    assert metadata["classes"] == CLASSES.to_list()
    assert metadata["image_size"] == list(IMAGE_SIZE)
    assert metadata["normalize"] == {"mean": list(MEAN), "std": list(STD)}
    assert metadata["postprocess"] == {
        "threshold": model.postprocess.threshold,
        "mask_threshold": model.postprocess.mask_threshold,
        "overlap_threshold": model.postprocess.overlap_threshold,
    }
    assert metadata["outputs"] == "logits" and metadata["precision"] == "fp32"
    assert metadata["model_name"] == "dinov3/vitt16-eomt"
    assert proto.producer_name == "panoptic_train"


def test_fp16_export_stores_fp16_weights_and_keeps_float32_io(
    onnx_fp32: Path, onnx_fp16: Path
) -> None:
    proto = onnx.load(str(onnx_fp16))
    sizes = {onnx.TensorProto.FLOAT16: 0, onnx.TensorProto.FLOAT: 0}
    for tensor in proto.graph.initializer:
        if tensor.data_type in sizes:
            sizes[tensor.data_type] += onnx.numpy_helper.to_array(tensor).size
    # the few float32 constants left are RoPE's sin/cos tables, computed in float32
    assert sizes[onnx.TensorProto.FLOAT16] > 50 * sizes[onnx.TensorProto.FLOAT]
    assert onnx_fp16.stat().st_size < 0.6 * onnx_fp32.stat().st_size
    session = _session(onnx_fp16)
    assert session.get_inputs()[0].type == "tensor(float)"
    assert {output.type for output in session.get_outputs()} == {"tensor(float)"}


def test_verification_reports_errors_within_the_documented_tolerance(
    model: PanopticSegmentationModel, onnx_fp32: Path, onnx_fp16: Path
) -> None:
    reports = {"fp32": verify_onnx(model, onnx_fp32), "fp16": verify_onnx(model, onnx_fp16)}
    for precision, report in reports.items():
        assert report.passed and report.precision == precision
        assert report.batch_size == 2  # one more than the default traced batch
        for name in ("class_logits", "mask_logits"):
            assert 0 < report.max_errors[name] <= report.tolerances[name]
            assert report.tolerances[name] >= verification.TOLERANCE[precision]
        assert "max abs error" in str(report) and "passed" in str(report)
    # fp32 graphs reproduce PyTorch far more closely than fp16 ones
    fp32, fp16 = reports["fp32"].max_errors, reports["fp16"].max_errors
    assert fp32["mask_logits"] < fp16["mask_logits"] / 10


def test_verification_fails_for_a_graph_of_other_weights(onnx_fp32: Path) -> None:
    report = verify_onnx(tiny_model(seed=1), onnx_fp32)
    assert not report.passed
    assert "FAILED" in str(report)
    assert report.max_errors["mask_logits"] > report.tolerances["mask_logits"]


def test_failed_verification_raises_and_writes_no_file(
    model: PanopticSegmentationModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(verification.TOLERANCE, "fp32", 0.0)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"max abs error .* \(tolerance 0\)"):
        export_onnx(model, out, simplify=False)
    assert not out.exists()


def test_baked_in_merge_equals_predict_on_an_unpadded_image(
    model: PanopticSegmentationModel, onnx_panoptic: Path
) -> None:
    session = _session(onnx_panoptic)
    names = [output.name for output in session.get_outputs()]
    assert names == ["class_logits", "mask_logits", "masks", "segment_ids", "scores", "labels"]
    image = np.random.default_rng(3).integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
    # The graph merges with the thresholds stored at export time: the model's defaults.
    expected = model.predict(image)
    count = len(expected["segment_ids"])
    assert count > 1
    inputs = (image.astype(np.float32) / 255 - np.array(MEAN)) / np.array(STD)
    batch = np.stack([inputs.transpose(2, 0, 1)] * 2).astype(np.float32)
    _, _, masks, segment_ids, scores, labels = session.run(None, {"images": batch})

    for i in range(2):  # both batch entries, same image
        assert (masks[i] == expected["masks"].numpy()).all(axis=-1).mean() > 0.999
        assert segment_ids[i].tolist() == list(range(count)) + [-1] * (8 - count)
        assert labels[i, :count].tolist() == expected["labels"].tolist()
        assert (labels[i, count:] == -1).all() and (scores[i, count:] == 0).all()
        np.testing.assert_allclose(scores[i, :count], expected["scores"].numpy(), atol=1e-5)
    report = verify_onnx(model, onnx_panoptic)
    assert report.passed and report.pixel_agreement == 1.0


def test_simplify_runs_onnxslim(onnx_raw: Path, onnx_fp32: Path) -> None:
    raw_nodes = len(onnx.load(str(onnx_raw)).graph.node)
    slim_nodes = len(onnx.load(str(onnx_fp32)).graph.node)
    assert slim_nodes < raw_nodes / 2
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 3, *IMAGE_SIZE)).astype(np.float32)
    for raw, slim in zip(
        _session(onnx_raw).run(None, {"images": images}),
        _session(onnx_fp32).run(None, {"images": images}),
        strict=True,
    ):
        np.testing.assert_allclose(slim, raw, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int8"}, "precision='int8'"),
        ({"height": 50}, "multiples of the patch size 16"),
        ({"width": 0}, "multiples of the patch size 16"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"opset": 13}, "opset=13 is not supported"),
    ],
)
def test_bad_arguments_are_rejected_with_the_value(
    model: PanopticSegmentationModel, tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        export_onnx(model, tmp_path / "model.onnx", **kwargs)


@pytest.mark.parametrize(
    ("module", "kwargs"),
    [("onnx", {}), ("onnxslim", {"verify": False}), ("onnxruntime", {"simplify": False})],
)
def test_missing_packages_name_the_extra(
    model: PanopticSegmentationModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    kwargs: dict,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "panoptic-train\[onnx\]"'):
        export_onnx(model, tmp_path / "model.onnx", **kwargs)
    assert not (tmp_path / "model.onnx").exists()


def test_the_model_methods_are_the_export_functions() -> None:
    # model.export_onnx(out, ...) is export_onnx(model, out, ...): one signature and docstring
    assert PanopticSegmentationModel.export_onnx is export_onnx
    assert PanopticSegmentationModel.export_tensorrt is export_tensorrt
