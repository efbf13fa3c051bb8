"""Training quality regressions: a randomly initialised backbone must actually train.

The benchmark behind these (benchmarks/vs_lightly_train.py, RESULTS.md "Training quality") found
that with EoMT's AdamW eps of 1e-8 the weights inside the backbone blocks hardly move: the
gradient norm is clipped to 0.01, and behind a LayerScale still near its 1e-5 initialisation the
per-weight gradients are about 1e-10, so Adam's step g / (|g| + eps) is about 1 % of the
learning rate. On the synthetic set (40 train / 30 val images of 128 px, 300 steps of batch 4,
seeds 0, 1, 2) that run scored PQ 0.0 / 12.1 / 0.0 with no thing found; with eps 1e-12 it scores
30.4 / 42.3 / 53.0 (Things 0 / 0 / 20.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import panoptic_train

from .conftest import fast_run

STEPS = 12


def _block_movement(out: Path, initial: dict[str, torch.Tensor]) -> float:
    """Mean absolute change of the weights inside the non-joint backbone blocks."""
    trained = torch.load(out / "exported_models/exported_last.pt", weights_only=True)
    state = trained["state_dict"]
    changes = [
        (state[name] - initial[name]).abs().mean()
        for name in initial
        if name.startswith("backbone.blocks.")
        and int(name.split(".")[2]) < 9
        and name.endswith((".qkv.weight", ".fc1.weight", ".fc2.weight", ".proj.weight"))
    ]
    return float(torch.stack(changes).mean())


def _initial_weights(data: dict[str, Any], tmp_path: Path) -> dict[str, torch.Tensor]:
    """The network a seeded run starts from: the 0-step export of the same run."""
    out = tmp_path / "init"
    panoptic_train.train_panoptic_segmentation(
        **fast_run(data, out, steps=1, model_args={"lr": 1e-12}, logger_args={"tensorboard": None})
    )
    return torch.load(out / "exported_models/exported_last.pt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_backbone_blocks_train_from_a_random_init(
    synthetic_data: dict[str, Any], tmp_path: Path
) -> None:
    """With the default eps the blocks move tens of times more than with EoMT's 1e-8 over the
    same seeded steps (measured: 28x, 3.6e-5 against 1.3e-6); the old default fails the 10x
    bound."""
    initial = _initial_weights(synthetic_data, tmp_path)
    movement = {}
    for eps in (1e-12, 1e-8):
        out = tmp_path / f"eps{eps}"
        panoptic_train.train_panoptic_segmentation(
            **fast_run(
                synthetic_data,
                out,
                steps=STEPS,
                model_args={"optimizer_eps": eps, "lr_warmup_steps": (1, 1)},
                logger_args={"tensorboard": None},
            )
        )
        movement[eps] = _block_movement(out, initial)
    assert movement[1e-12] > 10 * movement[1e-8], movement
