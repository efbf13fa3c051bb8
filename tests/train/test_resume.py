"""Resuming a killed run continues it exactly; changed training arguments are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from panoptic_train import train_panoptic_segmentation
from panoptic_train.errors import ConfigError

from .conftest import fast_run

SCRIPT = Path(__file__).with_name("train_subprocess.py")
STEPS = 16
# One thread per process: the same floating-point reduction order in every run.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _arguments(data: dict[str, Any], out: Path, num_workers: int) -> dict[str, Any]:
    return fast_run(
        data,
        out,
        steps=STEPS,
        seed=3,
        num_workers=num_workers,
        logger_args={"val_every_num_steps": 4, "tensorboard": None},
        save_checkpoint_args={"save_every_num_steps": 2},
    )


def _checkpoint_step(path: Path) -> int:
    if not path.is_file():
        return -1
    return int(torch.load(path, weights_only=True)["step"])


def _run(arguments: dict[str, Any]) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(arguments)], check=True, env=ENV, timeout=240
    )


@pytest.fixture(scope="module")
def runs(synthetic_data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted run, and a run SIGKILLed mid-way then resumed (with a DataLoader worker,
    to show that the data order does not depend on the workers)."""
    root = tmp_path_factory.mktemp("resume")
    reference = _arguments(synthetic_data, root / "reference", num_workers=0)
    _run(reference)

    interrupted = _arguments(synthetic_data, root / "interrupted", num_workers=1)
    checkpoint = root / "interrupted" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, str(SCRIPT), json.dumps(interrupted)], env=ENV)
    deadline = time.monotonic() + 240
    while _checkpoint_step(checkpoint) < 4 and process.poll() is None:
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _checkpoint_step(checkpoint)
    _run({**interrupted, "resume_interrupted": True})
    return {
        "root": root,
        "reference": reference,
        "interrupted": interrupted,
        "killed_at": killed_at,
    }


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(runs: dict) -> None:
    # The kill really interrupted training (otherwise this test would prove nothing).
    assert 4 <= runs["killed_at"] < STEPS
    root = runs["root"]
    expected = torch.load(root / "reference/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(root / "interrupted/checkpoints/last.ckpt", weights_only=True)
    assert resumed["step"] == expected["step"] == STEPS
    assert resumed["samples_seen"] == expected["samples_seen"]
    assert resumed["best_metric"] == pytest.approx(expected["best_metric"], abs=1e-9)
    assert resumed["best_step"] == expected["best_step"]
    weights, reference_weights = resumed["model"]["state_dict"], expected["model"]["state_dict"]
    assert weights.keys() == reference_weights.keys()
    for name, value in reference_weights.items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)
    for name, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(
                resumed["optimizer"]["state"][name][key], value, atol=1e-6, rtol=0
            )


@pytest.mark.slow
def test_changed_training_argument_on_resume_is_refused(runs: dict) -> None:
    arguments = {**runs["reference"], "resume_interrupted": True}
    arguments["model_args"] = {**arguments["model_args"], "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"model_args\.lr: 'auto' \(interrupted run\) -> 0\.001"):
        train_panoptic_segmentation(**arguments)


def test_resume_needs_a_checkpoint(synthetic_data: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        train_panoptic_segmentation(
            **fast_run(synthetic_data, tmp_path / "empty", steps=2), resume_interrupted=True
        )


@pytest.mark.slow
def test_non_empty_out_is_refused_without_overwrite(runs: dict) -> None:
    with pytest.raises(ConfigError, match="is not empty"):
        train_panoptic_segmentation(**runs["reference"])
