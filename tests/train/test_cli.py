"""`panoptic-train train`: dict arguments as JSON or key=value, errors without tracebacks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from panoptic_train.cli import main
from panoptic_train.train._cli import parse_dict_argument


def test_key_value_pairs_with_nesting_and_json_values() -> None:
    parsed = parse_dict_argument(
        ["lr=1e-4", "num_queries=50", "backbone_weights=null", "wandb.project=demo", "x=[1,2]"],
        "--model-args",
    )
    assert parsed == {
        "lr": 1e-4,
        "num_queries": 50,
        "backbone_weights": None,
        "wandb": {"project": "demo"},
        "x": [1, 2],
    }
    assert parse_dict_argument(['{"lr": 0.001}'], "--model-args") == {"lr": 0.001}
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_dict_argument(["lr"], "--model-args")


def test_cli_trains(synthetic_data: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--out", str(out),
            "--data", json.dumps(synthetic_data),
            "--model", "dinov3/vitt16-eomt",
            "--steps", "1",
            "--batch-size", "2",
            "--num-workers", "0",
            "--accelerator", "cpu",
            "--model-args", "backbone_weights=null", "num_queries=6", "loss_num_points=64",
            "--transform-args", '{"image_size": [64, 64]}',
            "--logger-args", "tensorboard=null",
        ]
    )  # fmt: skip
    assert code == 0
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["step"] == 1
    assert checkpoint["arguments"]["model_args"]["num_queries"] == 6


def test_cli_reports_a_bad_key_without_traceback(
    synthetic_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--out", str(tmp_path / "o"),
            "--data", json.dumps(synthetic_data),
            "--model", "dinov3/vitt16-eomt",
            "--model-args", "learning_rate=1",
        ]
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "model_args['learning_rate']" in error and "Traceback" not in error
