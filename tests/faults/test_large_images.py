"""Large images in `predict`: the maps are merged and written in row bands, so memory grows by
a few bytes per pixel instead of the ~60 a whole-image merge took."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_train.inference.model import load_model
from panoptic_train.inference.predict_files import panoptic_record, write_panoptic_png
from panoptic_train.runtime import postprocess

from .conftest import ONE_THREAD_ENV

LOOSE = {"threshold": 0.0, "overlap_threshold": 0.0}


def _gradient(path: Path, height: int, width: int) -> Path:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    Image.fromarray(pixels.astype(np.uint8)).save(path, compress_level=1)
    return path


def test_maps_streamed_in_bands_equal_the_whole_result(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(model_file, device="cpu")
    image = model.prepare(torch.randint(0, 255, (3, 90, 70), dtype=torch.uint8))
    config = model.postprocess.replace(**LOOSE)
    (whole,) = model.merge([image], config)
    monkeypatch.setattr(postprocess, "_MAX_BAND_ELEMENTS", 8 * 70 * 4)  # bands of 4 rows
    (banded,) = model.merge([image], config)
    assert len(list(banded.bands())) > 10 and len(list(whole.bands())) == 1
    result = model.result(whole)
    assert torch.equal(model.result(banded)["masks"], result["masks"])

    expected = panoptic_record(result)
    buffer = io.BytesIO()
    segments = (band for _, _, band in banded.bands())
    labels = model.categories(banded.labels)
    info = write_panoptic_png(buffer, 90, 70, segments, labels, banded.scores)
    assert info == expected.segments_info and len(info) > 1
    assert buffer.getvalue() == expected.png


def _peak_rss_of_predict(model_file: Path, image: Path, out: Path) -> int:
    """Peak resident memory (bytes) of `panoptic-train predict` on one image in a process of
    its own, every query kept (the merge's worst case)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking (pytest) process.
    code = (
        "import sys\n"
        "from panoptic_train.cli import main\n"
        "main(sys.argv[1:])\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
    )
    argv = ["predict", str(model_file), str(image), "--out", str(out), "--device", "cpu"]
    argv += ["--threshold", "0", "--overlap-threshold", "0"]
    run = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        check=True,
        env=ONE_THREAD_ENV,
    )
    return int(run.stdout.split()[-1]) * 1024  # kB


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_memory_grows_by_a_few_bytes_per_pixel(model_file: Path, tmp_path: Path) -> None:
    small = _gradient(tmp_path / "small.png", 64, 64)
    large = _gradient(tmp_path / "large.png", 3000, 3000)
    baseline = _peak_rss_of_predict(model_file, small, tmp_path / "out_small")
    growth = _peak_rss_of_predict(model_file, large, tmp_path / "out_large") - baseline
    # Decoding holds PIL's 4 and our 3 bytes per pixel at once, the merge 2 per pixel plus
    # buffers of a fixed size (a few of 32 MiB); merging the whole image took about 60 bytes per
    # pixel.
    assert growth < 10 * 3000 * 3000 + 256 * 2**20, f"{growth / 2**20:.0f} MiB"
