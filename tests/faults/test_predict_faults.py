"""`panoptic-train predict` under faults: outputs that cannot be written, images over the pixel
limit, bad batch sizes, reused output folders, and a run SIGKILLed mid-way then resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic_train import cli
from panoptic_train.data.io import load_segment_ids
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.errors import ConfigError
from panoptic_train.inference.model import load_model
from panoptic_train.inference.predict_files import collect_images, predict_files
from panoptic_train.inference.prediction_folder import PROGRESS_FILE

from .conftest import ONE_THREAD_ENV, MountTmpfs


@pytest.fixture(autouse=True)
def predict_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"predict": cli.COMMANDS["predict"]})


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = write_dataset(tmp_path_factory.mktemp("data"), 3, image_size=(32, 48), seed=4)
    return Path(split["images"])


def _predict(model_file: Path, *argv: str) -> int:
    return cli.main(["predict", str(model_file), *argv, "--device", "cpu"])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels; its pixel data is missing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize("where", ["read-only filesystem", "under a regular file"])
def test_an_unwritable_out_fails_before_loading_the_model(
    images: Path, tmp_path: Path, tmpfs: MountTmpfs, capsys, where: str
) -> None:
    if where == "read-only filesystem":
        out, reason = tmpfs(read_only=True) / "predictions", "Read-only file system (EROFS)"
    else:
        (tmp_path / "notes.txt").write_text("a file")
        out, reason = tmp_path / "notes.txt" / "predictions", "is a file, not a folder"
    assert _predict(tmp_path / "absent.pt", str(images), "--out", str(out)) == 3
    assert reason in _error_line(capsys)


def test_an_image_over_the_pixel_limit_is_skipped_like_an_unreadable_one(
    model_file: Path, images: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for image in images.iterdir():
        (folder / image.name).write_bytes(image.read_bytes())
    _png_header_only(folder / "huge.png", 20_000, 20_000)  # over PIL's own limit too
    out = tmp_path / "out"
    assert _predict(model_file, str(folder), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "huge.png' is 20000x20000 (400,000,000 pixels), more than the limit" in err
    assert "--max-image-pixels" in err and "Traceback" not in err
    written = json.loads((out / "predictions.json").read_text())["annotations"]
    assert len(written) == 3  # every other image was predicted

    out = tmp_path / "limited"
    assert _predict(model_file, str(images), "--out", str(out), "--max-image-pixels", "1000") == 1
    assert "(1,536 pixels), more than the limit of 1,000 pixels" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_batch_size_is_refused(images: Path, tmp_path: Path, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _predict(
            tmp_path / "m.pt", str(images), "--out", str(tmp_path / "o"), "--batch-size", value
        )
    assert exit_info.value.code == 2
    assert f"--batch-size: expected a positive integer, got '{value}'" in capsys.readouterr().err


def test_bad_sizes_are_refused_by_the_api_too(
    model_file: Path, images: Path, tmp_path: Path
) -> None:
    model = load_model(model_file, device="cpu")
    for name in ("batch_size", "max_image_pixels"):
        with pytest.raises(ConfigError, match=f"predict_files {name} must be a positive integer"):
            predict_files(model, collect_images([images]), tmp_path / "api", **{name: 0})
    assert not (tmp_path / "api").exists()  # refused before anything was written


def test_a_used_out_is_refused_overwritten_or_resumed(
    model_file: Path, images: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    first = sorted(images.iterdir())[:2]
    assert _predict(model_file, *map(str, first), "--out", str(out)) == 0
    (out / "notes.txt").write_text("the user's own file")

    assert _predict(model_file, str(images), "--out", str(out)) == 2
    line = _error_line(capsys)
    assert "is not empty (notes.txt, panoptic, predictions.json)" in line
    assert "--overwrite" in line and "--resume" in line

    assert _predict(model_file, str(images), "--out", str(out), "--resume") == 0
    assert "Wrote 1 predictions (2 done before, kept)" in capsys.readouterr().out
    assert len(json.loads((out / "predictions.json").read_text())["annotations"]) == 3

    third = sorted(images.iterdir())[2]
    assert _predict(model_file, str(third), "--out", str(out), "--overwrite") == 0
    # The previous run's PNGs are gone: the folder holds exactly what its JSON lists.
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == [f"{third.stem}.png"]
    assert len(json.loads((out / "predictions.json").read_text())["annotations"]) == 1
    assert (out / "notes.txt").read_text() == "the user's own file"  # not ours: kept

    argv = [str(images), "--out", str(out), "--resume", "--threshold", "0.1"]
    assert _predict(model_file, *argv) == 2
    assert "used other settings (postprocess differ" in _error_line(capsys)


@pytest.mark.slow
def test_a_killed_run_resumes_without_a_partial_file(model_file: Path, tmp_path: Path) -> None:
    split = write_dataset(tmp_path / "many", 60, image_size=(24, 32), seed=5)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "panoptic_train.cli", "predict", str(model_file)]
    argv += [split["images"], "--out", str(out), "--device", "cpu", "--batch-size", "1"]
    run = subprocess.Popen(
        argv, env=ONE_THREAD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = out / PROGRESS_FILE
    deadline = time.monotonic() + 60
    while not (progress.is_file() and progress.read_text().count("\n") > 3):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended too early"
        time.sleep(0.002)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    assert not (out / "predictions.json").exists()
    killed_with = len(list((out / "panoptic").glob("*.png")))
    assert 0 < killed_with < 60

    assert cli.main([*argv[3:], "--resume"]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    names = sorted(a["file_name"] for a in predictions["annotations"])
    assert names == sorted(p.name for p in (out / "panoptic").iterdir())  # only complete PNGs
    assert len(names) == 60 and not progress.exists()
    assert not [p for p in out.rglob(".*.tmp")]
    for name in names[:: len(names) // 5]:
        size = Image.open(Path(split["images"]) / name).size
        assert load_segment_ids(out / "panoptic" / name).shape == (size[1], size[0])
    assert np.isfinite(
        [s["score"] for a in predictions["annotations"] for s in a["segments_info"]]
    ).all()
