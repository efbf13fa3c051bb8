"""A small version of `benchmarks/serve_load.py` against the real server: concurrent clients
get no errors, their requests share batches, and each gets the answer for its own image."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from panoptic_train.serve.launch import ServerProcess

from .conftest import MAX_BATCH, serve_load


def _batched_images(health: dict) -> int:
    """Images that ran in batches of more than one."""
    return sum(
        int(size) * count
        for size, count in health["batching"]["batch_sizes"].items()
        if int(size) > 1
    )


def test_concurrent_clients_get_no_errors_and_share_batches(
    server: ServerProcess, client: httpx.Client, images: list[Path]
) -> None:
    before = client.get("/health").json()
    report = serve_load.run_load(
        server.url, [p.read_bytes() for p in images], clients=4, requests=5
    )
    after = client.get("/health").json()
    assert report.errors == []
    assert len(report.latencies) == 20
    assert _batched_images(after) > _batched_images(before)
    assert after["batching"]["largest_batch"] <= MAX_BATCH
    assert after["batching"]["failed"] == after["batching"]["rejected"] == 0


def test_batched_requests_each_get_their_own_result(
    client: httpx.Client, images: list[Path]
) -> None:
    def segment_ids(body: dict) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["panoptic_png"]))))

    alone = [client.post("/predict", content=path.read_bytes()).json() for path in images]
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(
            pool.map(lambda path: client.post("/predict", content=path.read_bytes()).json(), images)
        )
    for single, batched in zip(alone, together, strict=True):
        assert batched["image"] == single["image"]  # the images have two different sizes
        # the same image through a bigger batch: float rounding may move a border pixel at most
        assert (segment_ids(batched) == segment_ids(single)).all(axis=-1).mean() > 0.99
        assert [s["category_id"] for s in batched["segments"]] == [
            s["category_id"] for s in single["segments"]
        ]
