"""The knobs of `panoptic-train serve`, checked once for the CLI and `create_app` alike.

No server stack here, so the CLI can show the defaults without importing it.
"""

from __future__ import annotations

from pydantic import Field

from panoptic_train._validate import StrictConfig


class ServeConfig(StrictConfig):
    """Batching, back-pressure and input limits of the server.

    max_batch: most images one forward pass takes.
    max_wait_ms: how long the first request of a batch waits for others to join it.
    max_queue: requests waiting for the model beyond which new ones are refused (503).
    timeout_s: how long a request may wait for its result, queue and inference (then 504).
    max_image_pixels: larger images are refused (413) from their header, before decoding.
    """

    max_batch: int = Field(8, ge=1, strict=True)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(64, ge=1, strict=True)
    timeout_s: float = Field(30.0, gt=0)
    max_image_pixels: int = Field(40_000_000, ge=1, strict=True)
