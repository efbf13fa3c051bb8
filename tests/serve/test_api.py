"""The HTTP API of a real `panoptic-train serve` process: what it answers matches the files of
`panoptic-train predict`, bad input gets a 4xx JSON error naming the problem, and the server
keeps serving."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from panoptic_train.data.synthetic import CATEGORIES
from panoptic_train.inference import _cli as predict_cli
from panoptic_train.serve.uploads import max_upload_bytes

from .conftest import LOOSE, MAX_BATCH, MAX_IMAGE_PIXELS


@pytest.fixture(scope="module")
def predicted_files(
    model_file: Path, images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`panoptic-train predict --overlay` on the test images, for the server to match."""
    out = tmp_path_factory.mktemp("predicted")
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    args = [str(model_file), *map(str, images), "--out", str(out), "--overlay", "--device", "cpu"]
    assert predict_cli.run(parser.parse_args(args)) == 0
    return out


def _png(base64_text: str) -> bytes:
    return base64.b64decode(base64_text, validate=True)


def _png_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_info_describes_the_model_and_the_limits(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["model"] == "dinov3/vitt16-eomt"
    assert (info["runtime"], info["device"], info["precision"]) == ("pytorch", "cpu", "fp32")
    assert info["input_size"] == {"width": 64, "height": 64}
    assert [{k: c[k] for k in ("id", "name", "isthing")} for c in info["classes"]] == [
        {"id": c["id"], "name": c["name"], "isthing": bool(c["isthing"])} for c in CATEGORIES
    ]
    assert all(len(c["color"]) == 7 and c["color"].startswith("#") for c in info["classes"])
    assert info["thresholds"] == {
        "threshold": LOOSE.threshold,
        "mask_threshold": LOOSE.mask_threshold,
        "overlap_threshold": LOOSE.overlap_threshold,
    }
    assert info["batching"] == {
        "max_batch": MAX_BATCH,
        "max_wait_ms": 50.0,
        "max_queue": 64,
        "timeout_s": 30.0,
    }
    assert info["max_image_pixels"] == MAX_IMAGE_PIXELS


def test_health_reports_the_batching_counters(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert {"queued", "batches", "largest_batch", "batch_sizes", "rejected"} <= set(
        health["batching"]
    )


def test_predict_matches_the_files_of_panoptic_train_predict(
    client: httpx.Client, images: list[Path], predicted_files: Path
) -> None:
    annotations = {
        a["file_name"]: a
        for a in json.loads((predicted_files / "predictions.json").read_text())["annotations"]
    }
    names = {c["id"]: (c["name"], bool(c["isthing"])) for c in CATEGORIES}
    for index, path in enumerate(images):
        data = path.read_bytes()
        # both ways of sending an image
        if index % 2:
            response = client.post("/predict", files={"file": (path.name, data, "image/png")})
        else:
            response = client.post("/predict", content=data)
        assert response.status_code == 200, response.text
        body = response.json()
        expected_png = (predicted_files / "panoptic" / f"{path.stem}.png").read_bytes()
        assert _png(body["panoptic_png"]) == expected_png
        width, height = Image.open(path).size
        assert body["image"] == {"width": width, "height": height}
        expected = annotations[f"{path.stem}.png"]["segments_info"]
        assert body["segments"], "the loose thresholds keep segments"
        assert body["segments"] == [
            {**s, "name": names[s["category_id"]][0], "isthing": names[s["category_id"]][1]}
            for s in expected
        ]
        assert body["overlay_png"] is None


def test_overlay_is_the_overlay_predict_writes(
    client: httpx.Client, images: list[Path], predicted_files: Path
) -> None:
    path = images[0]
    expected = (predicted_files / "overlays" / f"{path.stem}.png").read_bytes()
    response = client.post("/overlay", content=path.read_bytes())
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == expected
    inline = client.post("/predict", params={"overlay": "true"}, content=path.read_bytes())
    assert _png(inline.json()["overlay_png"]) == expected


def test_thresholds_apply_per_request(client: httpx.Client, images: list[Path]) -> None:
    data = images[0].read_bytes()
    # a query is kept only when its class score is above the threshold: none is above 1
    body = client.post("/predict", params={"threshold": 1.0}, content=data).json()
    assert body["segments"] == []
    ids = np.asarray(Image.open(io.BytesIO(_png(body["panoptic_png"]))))
    assert not ids.any()  # all void
    assert client.post("/predict", content=data).json()["segments"]  # the defaults keep some


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"content": b""}, 400, "The request body is empty"),
        ({"content": b"GIF89a but not really"}, 415, "is not an image"),
        (
            {"content": b"plain text", "headers": {"content-type": "text/plain"}},
            415,
            "not an image",
        ),
        ({"files": {"image": ("a.png", b"x", "image/png")}}, 400, "no field 'file' .*'image'"),
        ({"files": {"file": (None, "text")}}, 400, "'file' is text, not a file"),
        (
            {"files": {"file": ("a.png", b"x", "image/png"), "extra": (None, "0.5")}},
            400,
            "Unexpected multipart field.*'extra'.*query string",
        ),
        ({"files": {"file": ("empty.png", b"", "image/png")}}, 400, "'empty.png' is empty"),
        ({"params": {"threshold": 1.5}}, 422, r"threshold='1.5': Input should be less"),
        ({"params": {"mask_threshold": "high"}}, 422, "mask_threshold='high'"),
        ({"params": {"treshold": 0.5}}, 400, "Unknown query parameter.*'treshold'"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_problem(
    client: httpx.Client, images: list[Path], request_kwargs: dict, status: int, message: str
) -> None:
    if "content" not in request_kwargs and "files" not in request_kwargs:
        request_kwargs = {"content": images[0].read_bytes(), **request_kwargs}
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert re.search(message, response.json()["detail"]), response.json()["detail"]


def test_truncated_and_oversized_images_are_refused(
    client: httpx.Client, images: list[Path]
) -> None:
    data = images[0].read_bytes()
    truncated = client.post("/predict", content=data[: len(data) // 2])
    assert truncated.status_code == 422
    assert "truncated or corrupt" in truncated.json()["detail"]

    big = client.post("/overlay", content=_png_bytes((400, 300)))  # 120,000 pixels
    assert big.status_code == 413
    assert "400x300 image (120,000 pixels)" in big.json()["detail"]
    assert "--max-image-pixels" in big.json()["detail"]

    huge_body = b"\x00" * (max_upload_bytes(MAX_IMAGE_PIXELS) + 1)
    too_long = client.post("/predict", content=huge_body)
    assert too_long.status_code == 413
    assert "larger than" in too_long.json()["detail"]

    # none of that hurt the server
    assert client.post("/predict", content=data).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_openapi_documents_the_endpoints(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/overlay", "/health", "/info"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)
    parameters = {p["name"] for p in schema["paths"]["/predict"]["post"]["parameters"]}
    assert parameters == {"threshold", "mask_threshold", "overlap_threshold", "overlay"}
    assert client.get("/docs").status_code == 200


def test_the_page_is_self_contained(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<canvas" in page and "predict?" in page
    # nothing loaded from elsewhere (no CDN): no absolute URLs in src/href or fetch calls
    for marker in ('src="http', "src='http", 'href="http', "href='http", 'fetch("http', "//cdn"):
        assert marker not in page
