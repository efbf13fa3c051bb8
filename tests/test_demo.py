"""`panoptic-train demo` (what `make demo` runs) writes and reports every output. A shortened run:
the default settings train for a few minutes, this checks the same path in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from panoptic_train.cli import main


@pytest.fixture
def one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # predictable time on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def test_demo_writes_every_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: object
) -> None:
    out = tmp_path / "demo"
    code = main(
        ["demo", "--out", str(out), "--steps", "4", "--train-images", "4", "--val-images", "2",
         "--image-size", "64"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    expected = {
        "dataset": out / "data",
        "best model": out / "train/exported_models/exported_best.pt",
        "checkpoint": out / "train/checkpoints/last.ckpt",
        "predictions": out / "predictions",
        "metrics": out / "metrics.json",
        "overlay": out / "overlay.png",
    }
    for label, path in expected.items():
        assert path.exists(), label
        assert f"{label}" in printed and str(path) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"All", "Things", "Stuff"} <= set(metrics)
    overlay = Image.open(out / "overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (64, 48)
