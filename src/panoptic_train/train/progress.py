"""What a person watching a run sees: a progress bar (step, loss, lr, images/s, ETA),
messages that print above it and also go to `out/train.log` (only rank 0 shows anything), and
the training values averaged between two log points."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

LOGGER_NAME = "panoptic_train.train"


class _TqdmHandler(logging.Handler):
    """Print records through tqdm so they appear above the bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


@contextmanager
def run_logging(log_file: Path | None, console: bool = True) -> Iterator[logging.Logger]:
    """The run's logger: console (through tqdm) unless `console` is False, and `log_file` when
    given. Handlers are removed on exit so repeated runs in one process do not print twice."""
    logger = logging.getLogger(LOGGER_NAME)
    handlers: list[logging.Handler] = [_TqdmHandler()] if console else []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(file_handler)
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


class ProgressBar:
    """tqdm bar over optimiser steps; the ETA is tqdm's, from the recent step rate."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool) -> None:
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not enabled,
            file=sys.stdout,
        )
        self._last_time = time.perf_counter()

    def update(self, loss: float, lr: float, images: int) -> None:
        """Advance one step that trained on `images` images."""
        now = time.perf_counter()
        speed = images / max(now - self._last_time, 1e-9)
        self._last_time = now
        self.bar.set_postfix(
            loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}", refresh=False
        )
        self.bar.update(1)

    def pause(self) -> None:
        """Exclude time spent outside training steps (validation, saving) from the speed."""
        self._last_time = time.perf_counter()

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class WindowMeans:
    """The means of the training values over the steps of one logging window."""

    loss: float
    terms: dict[str, float]
    images_per_second: float


@dataclass
class _Sums:
    steps: int = 0
    seconds: float = 0.0
    loss: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)


class MeanWindow:
    """Sums of the per-step training values since the last log point; `take` returns their
    means and opens the next window."""

    def __init__(self) -> None:
        self._sums = _Sums()

    def add(self, loss: float, terms: Mapping[str, float], seconds: float) -> None:
        """Count one optimiser step: its loss, loss terms and the time it took."""
        sums = self._sums
        sums.steps += 1
        sums.seconds += seconds
        sums.loss += loss
        for name, value in terms.items():
            sums.terms[name] = sums.terms.get(name, 0.0) + value

    def take(self, images_per_step: int) -> WindowMeans:
        """The means since the last `take` (at least one step must have been added)."""
        sums, self._sums = self._sums, _Sums()
        return WindowMeans(
            loss=sums.loss / sums.steps,
            terms={name: value / sums.steps for name, value in sums.terms.items()},
            images_per_second=sums.steps * images_per_step / max(sums.seconds, 1e-9),
        )
