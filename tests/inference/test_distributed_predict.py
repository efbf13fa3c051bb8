"""`panoptic-train predict` sharded over two processes (gloo on 127.0.0.1) writes what one
process writes: byte-identical PNGs, the same predictions.json up to order.

Each rank predicts runs of `--batch-size` images dealt round-robin, so that its batches are the
single process's; on one thread per process the network's numbers do not depend on the batch
either, which the resumed run (other batches: the done images drop out) relies on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from panoptic_train import cli
from panoptic_train._distributed import share
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.inference.prediction_folder import PROGRESS_FILE

NUM_IMAGES = 60
BATCH_SIZE = 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT = 240


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = write_dataset(tmp_path_factory.mktemp("many"), NUM_IMAGES, (24, 32), seed=5)
    return Path(split["images"])


def _options(model_file: Path, images: Path, out: Path) -> list[str]:
    # Threshold 0: the random network's queries become segments, so the PNGs are not all void.
    return [
        str(model_file), str(images), "--out", str(out), "--device", "cpu",
        "--batch-size", str(BATCH_SIZE), "--threshold", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(tiny_model_file: Path, images: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("one") / "out"
    assert cli.main(["predict", *_options(tiny_model_file, images, out)]) == 0
    return out


def _predict_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "panoptic_train", "predict", *options]


def _kill_job(pid: int) -> None:
    """SIGKILL a process and all of its descendants at once, as a scheduler ends a job (torchrun
    starts each worker in a session of its own)."""
    processes = [pid]
    for parent in processes:
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                processes += [int(child) for child in children.read_text().split()]
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.is_file() else 0


def _sorted_json(path: Path) -> dict[str, Any]:
    content = json.loads(path.read_text())
    for key in ("images", "annotations"):
        content[key].sort(key=lambda entry: json.dumps(entry, sort_keys=True))
    return content


def _assert_same_predictions(out: Path, expected: Path) -> None:
    names = sorted(path.name for path in (expected / "panoptic").iterdir())
    assert sorted(path.name for path in (out / "panoptic").iterdir()) == names
    for name in names:
        assert (out / "panoptic" / name).read_bytes() == (expected / "panoptic" / name).read_bytes()
    assert _sorted_json(out / "predictions.json") == _sorted_json(expected / "predictions.json")
    assert sorted(path.name for path in out.iterdir()) == ["panoptic", "predictions.json"]
    assert not list(out.rglob(".*.tmp"))


def test_shares_are_disjoint_runs_of_whole_batches() -> None:
    items = list(range(11))
    parts = [share(items, 2, rank, 3) for rank in range(3)]
    assert parts == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]
    assert sorted(item for part in parts for item in part) == items


@pytest.mark.slow
def test_a_killed_torchrun_job_resumes_with_devices_2_to_one_process_output(
    tiny_model_file: Path, images: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {**ENV, "TMPDIR": str(tmp_path)}  # torchrun's log folders go with the test's files
    options = _options(tiny_model_file, images, out)
    torchrun = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", "-m", "panoptic_train"]
    job = subprocess.Popen(
        [*torchrun, "predict", *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    # Settings + 3 images on rank 0, one image on rank 1: both shards are under way.
    while _lines(out / PROGRESS_FILE) < 4 or _lines(out / "predictions.partial.1.jsonl") < 1:
        assert job.poll() is None and time.monotonic() < deadline, "the job ended too early"
        time.sleep(0.002)
    _kill_job(job.pid)
    job.wait(timeout=30)
    assert not (out / "predictions.json").exists()
    written = {path.name for path in (out / "panoptic").glob("*.png")}
    assert 0 < len(written) < NUM_IMAGES - 1
    # What a kill mid-write would leave, had the PNG not been written atomically: a partial PNG
    # without its progress line. And the temporary file of an atomic write that was cut short.
    missing = sorted({path.name for path in (one_process / "panoptic").iterdir()} - written)
    partial = (one_process / "panoptic" / missing[0]).read_bytes()
    (out / "panoptic" / missing[0]).write_bytes(partial[: len(partial) // 2])
    (out / "panoptic" / f".{missing[1]}.0123abcd.tmp").write_bytes(partial[:10])

    # A used folder without --resume: rank 0 refuses it and both processes stop.
    refused = subprocess.run(
        _predict_command(*options, "--devices", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert refused.returncode == 2 and "is not empty" in refused.stderr
    resumed = subprocess.run(
        _predict_command(*options, "--devices", "2", "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    kept = re.search(r"Wrote (\d+) predictions \((\d+) done before, kept\)", resumed.stdout)
    assert kept is not None, resumed.stdout
    # Done: a progress line and its PNG. A PNG whose line the kill prevented is redone.
    assert 0 < int(kept[2]) <= len(written) and int(kept[1]) + int(kept[2]) == NUM_IMAGES
    _assert_same_predictions(out, one_process)
    # The two --devices 2 jobs left nothing in the temp directory; torchrun (torch's own
    # command) left its log folder.
    assert sorted(path.name.split("_")[0] for path in tmp_path.iterdir()) == ["out", "torchelastic"]


def test_devices_other_than_the_launchers_are_refused(
    tiny_model_file: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name, value in {
        "TORCHELASTIC_RUN_ID": "test",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "GROUP_RANK": "0",
    }.items():
        monkeypatch.setenv(name, value)
    options = _options(tiny_model_file, images, tmp_path / "out")
    assert cli.main(["predict", *options, "--devices", "3"]) == 2
    assert "Leave --devices out under torchrun" in capsys.readouterr().err
