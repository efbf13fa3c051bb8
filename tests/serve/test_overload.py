"""Back-pressure on a real server (the ONNX one, see conftest): with one queue place and a short
timeout, a burst of slow requests gets 503 + Retry-After and 504, never a hang, and the server
serves on afterwards."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from panoptic_train.serve.launch import ServerProcess

from .conftest import TIGHT_TIMEOUT_S

# Over a second for the tiny graph on two CPU cores (the merge runs at full resolution), well
# beyond the server's timeout however busy the machine is.
SLOW_IMAGE_SIDE = 3000


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_a_burst_gets_503_with_retry_after_and_504_then_service_resumes(
    onnx_server: ServerProcess, images: list[Path]
) -> None:
    slow = _png(SLOW_IMAGE_SIDE)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=onnx_server.url, timeout=30, trust_env=False) as client:
            return client.post("/predict", content=slow)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert time.monotonic() - started < 20  # nobody waited for all the slow images in turn

    by_status: dict[int, list[httpx.Response]] = {}
    for response in responses:
        by_status.setdefault(response.status_code, []).append(response)
    assert set(by_status) == {503, 504}, {s: r[0].text for s, r in by_status.items()}
    for refused in by_status[503]:
        assert int(refused.headers["retry-after"]) >= 1
        assert "--max-queue" in refused.json()["detail"]
    assert f"No result within {TIGHT_TIMEOUT_S:g} s" in by_status[504][0].json()["detail"]

    with httpx.Client(base_url=onnx_server.url, timeout=30, trust_env=False) as client:
        stats = client.get("/health").json()["batching"]
        assert stats["rejected"] == len(by_status[503])
        assert stats["timed_out"] == len(by_status[504])
        small = images[0].read_bytes()
        # the worker may still be finishing a slow image nobody waits for any more
        for _ in range(40):
            response = client.post("/predict", content=small)
            if response.status_code == 200:
                break
            time.sleep(0.25)
        assert response.status_code == 200, response.text
