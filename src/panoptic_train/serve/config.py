"""The knobs of `panoptic-train serve`, checked once for the CLI and `create_app` alike.

Standard library only, so the CLI can show the defaults without importing the server stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from panoptic_train.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """Batching, back-pressure and input limits of the server.

    max_batch: most images one forward pass takes.
    max_wait_ms: how long the first request of a batch waits for others to join it.
    max_queue: requests waiting for the model beyond which new ones are refused (503).
    timeout_s: how long a request may wait for its result, queue and inference (then 504).
    max_image_pixels: larger images are refused (413) from their header, before decoding.
    """

    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    timeout_s: float = 30.0
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 milliseconds, got {self.max_wait_ms!r}.")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {self.timeout_s!r}.")
