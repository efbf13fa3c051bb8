"""Bad runs fail loudly: diverging losses and bad arguments are errors that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from panoptic_train import train_panoptic_segmentation
from panoptic_train.errors import ConfigError
from panoptic_train.train.loop import TrainingDivergedError

from .conftest import fast_run


def test_nan_loss_stops_with_step_lr_and_hint(
    synthetic_data: dict[str, Any], tmp_path: Path
) -> None:
    # An absurd learning rate without clipping blows the weights up within a few steps.
    out = tmp_path / "run"
    arguments = fast_run(
        synthetic_data,
        out,
        steps=20,
        model_args={"lr": 1e30, "gradient_clip_val": None},
        logger_args={"tensorboard": None},
    )
    with pytest.raises(TrainingDivergedError) as info:
        train_panoptic_segmentation(**arguments)
    message = str(info.value)
    assert "Training stopped at step" in message and "learning rate" in message
    assert "model_args['lr']" in message
    # What was safe to save was saved: the finite weights from before the bad step.
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["step"] < 20
    assert all(torch.isfinite(v).all() for v in checkpoint["model"]["state_dict"].values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model_args": {"lrr": 1e-3}},
            r"model_args\['lrr'\]: unknown key .*'lr'\?",
        ),
        ({"logger_args": {"wandb": {"projct": "x"}}}, r"logger_args\['wandb'\]\['projct'\]"),
        ({"save_checkpoint_args": {"save_every": 5}}, r"save_checkpoint_args\['save_every'\]"),
        ({"loader_args": {"workers": 2}}, r"loader_args\['workers'\]"),
        ({"metric_args": {"watch_metric": "loss"}}, r"metric_args\['watch_metric'\]='loss'"),
        ({"torch_compile_args": {"mod": "x"}}, r"torch_compile_args\['mod'\]"),
        ({"steps": 0}, r"steps=0"),
        ({"precision": "fp8"}, r"precision='fp8'"),
        (
            {"model": "dinov3/vitq16-eomt"},
            r"model='dinov3/vitq16-eomt' is neither a model name nor an existing file",
        ),
    ],
)
def test_bad_arguments_are_named(
    synthetic_data: dict[str, Any], tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train_panoptic_segmentation(
            **{**fast_run(synthetic_data, tmp_path / "o", steps=1), **overrides}
        )


def test_batch_must_split_over_accumulation(synthetic_data: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch_size=2 .* gradient_accumulation_steps=4"):
        train_panoptic_segmentation(
            **fast_run(synthetic_data, tmp_path / "o", steps=1), gradient_accumulation_steps=4
        )
