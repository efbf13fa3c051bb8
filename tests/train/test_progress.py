"""The counters of a run and the means it logs between two log points."""

from __future__ import annotations

import pytest

from panoptic_train.train.checkpoints import Progress
from panoptic_train.train.progress import MeanWindow


def test_a_window_averages_its_steps_and_the_next_one_starts_empty() -> None:
    window = MeanWindow()
    window.add(1.0, {"loss_dice": 2.0}, seconds=0.5)
    window.add(3.0, {"loss_dice": 4.0, "grad_norm": 1.0}, seconds=1.5)
    means = window.take(images_per_step=4)
    assert (means.loss, means.terms) == (2.0, {"loss_dice": 3.0, "grad_norm": 0.5})
    assert means.images_per_second == pytest.approx(2 * 4 / 2.0)
    window.add(5.0, {"loss_dice": 1.0}, seconds=2.0)
    means = window.take(images_per_step=4)
    assert (means.loss, means.terms, means.images_per_second) == (5.0, {"loss_dice": 1.0}, 2.0)


def test_progress_counts_steps_and_positions_and_keeps_the_best_value() -> None:
    progress = Progress()
    progress.advance(16)
    progress.advance(16)
    assert (progress.step, progress.samples_seen) == (2, 32)
    assert progress.improves(0.0) and not progress.improves(float("nan"))
    progress.best_metric = 0.5
    assert progress.improves(0.6) and not progress.improves(0.5)
    saved = {"step": 2, "samples_seen": 32, "best_metric": 0.5, "best_step": 2, "model": {}}
    assert Progress.of(saved) == Progress(2, 32, 0.5, 2)
