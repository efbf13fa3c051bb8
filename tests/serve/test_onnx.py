"""Serving an exported ONNX file: onnxruntime runs it, and the answers are the ONNX runner's."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from panoptic_train.inference.predict_files import panoptic_record
from panoptic_train.serve.launch import ServerProcess

from .conftest import TIGHT_TIMEOUT_S


@pytest.fixture
def onnx_client(onnx_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=onnx_server.url, timeout=60, trust_env=False) as client:
        yield client


def test_info_names_onnxruntime_and_the_graph_precision(onnx_client: httpx.Client) -> None:
    info = onnx_client.get("/info").json()
    assert (info["runtime"], info["device"], info["precision"]) == ("onnxruntime", "cpu", "fp32")
    assert info["model"] == "dinov3/vitt16-eomt"
    assert info["input_size"] == {"width": 64, "height": 64}
    assert info["batching"] == {
        "max_batch": 1,
        "max_wait_ms": 0.0,
        "max_queue": 1,
        "timeout_s": TIGHT_TIMEOUT_S,
    }


def test_predictions_are_the_onnx_runners(
    onnx_client: httpx.Client, onnx_file: Path, images: list[Path]
) -> None:
    from panoptic_train.export.onnx_predictor import OnnxPredictor

    predictor = OnnxPredictor(onnx_file)
    for path in images[:2]:
        response = onnx_client.post("/predict", content=path.read_bytes())
        assert response.status_code == 200, response.text
        body = response.json()
        expected = panoptic_record(predictor.predict(path))
        assert base64.b64decode(body["panoptic_png"]) == expected.png
        assert [s["id"] for s in body["segments"]] == [s["id"] for s in expected.segments_info]
        assert body["segments"][0]["score"] == expected.segments_info[0]["score"]


def test_a_precision_other_than_the_graphs_is_an_error(
    onnx_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from panoptic_train.cli import main

    assert main(["serve", str(onnx_file), "--port", "0", "--precision", "fp16"]) == 2
    error = capsys.readouterr().err
    assert "is an fp32 graph" in error and "fixed when it is exported" in error
