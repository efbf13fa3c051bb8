"""Training under faults: a filesystem filling up, writes killed mid-file, a retry after a
failed data check."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from panoptic_train import cli, train_panoptic_segmentation
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.errors import DataError

from .conftest import MountTmpfs
from .test_atomic_writes import _KILLED_WRITER

# A tiny run: 2 steps of batch 2 at 32x32 take a few seconds.
RUN: dict[str, Any] = {
    "model": "dinov3/vitt16-eomt",
    "steps": 2,
    "batch_size": 2,
    "num_workers": 0,
    "accelerator": "cpu",
    "transform_args": {"image_size": [32, 32]},
    "model_args": {"backbone_weights": None, "num_queries": 4, "loss_num_points": 64},
    "logger_args": {"tensorboard": None},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_dataset(root, 4, image_size=(32, 48), seed=0, split="train"),
        "val": write_dataset(root, 2, image_size=(32, 48), seed=0, split="val"),
    }


def _kill_mid_write(target: Path) -> Path:
    """Start an atomic write of `target` in another process and SIGKILL it halfway; returns
    the temporary file it leaves."""
    before = set(target.parent.iterdir()) if target.parent.is_dir() else set()
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    (left,) = set(target.parent.iterdir()) - before
    return left


def test_a_full_disk_during_training_is_exit_code_3_naming_the_checkpoint(
    data: dict[str, Any], tmpfs: MountTmpfs, capsys: pytest.CaptureFixture[str]
) -> None:
    # Room for the log, the config and one 23 MB exported model, not for the 70 MB checkpoint.
    out = tmpfs("40m") / "run"
    argv = ["train", "--out", str(out), "--data", json.dumps(data), "--model", RUN["model"]]
    argv += ["--steps", "2", "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu"]
    argv += ["--transform-args", "image_size=[32,32]", "--logger-args", "tensorboard=null"]
    argv += ["--model-args", json.dumps(RUN["model_args"])]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert f"error: Cannot write '{out / 'checkpoints' / 'last.ckpt'}': No space left" in err
    assert not list(out.rglob(".*.tmp"))  # the failed write left no temporary file


def test_stale_temp_files_of_a_killed_run_are_removed_on_resume(
    data: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_panoptic_segmentation(out=out, data=data, **RUN)
    stale = [
        _kill_mid_write(out / "checkpoints" / "last.ckpt"),
        _kill_mid_write(out / "exported_models" / "exported_best.pt"),
        _kill_mid_write(out / "config.json"),
    ]
    assert all(path.is_file() for path in stale)
    train_panoptic_segmentation(out=out, data=data, resume_interrupted=True, **RUN)
    assert not any(path.exists() for path in stale)
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_a_run_stopped_by_the_data_check_does_not_block_the_retry(
    data: dict[str, Any], tmp_path: Path
) -> None:
    broken = json.loads(Path(data["train"]["annotations"]).read_text())
    broken["annotations"][0]["segments_info"][0]["category_id"] = 999
    broken_json = tmp_path / "broken.json"
    broken_json.write_text(json.dumps(broken))
    out = tmp_path / "run"
    with pytest.raises(DataError, match="999"):
        train_panoptic_segmentation(
            out=out, data={**data, "train": {**data["train"], "annotations": broken_json}}, **RUN
        )
    assert [path.name for path in out.iterdir()] == ["train.log"]
    train_panoptic_segmentation(out=out, data=data, **RUN)  # the fixed rerun, no overwrite
    log = (out / "train.log").read_text()
    assert "999" not in log and "Training finished at step 2" in log
