"""Shared fixtures of the training tests: a synthetic dataset and small, fast run settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from panoptic_train.data.synthetic import write_dataset

# A tiny EoMT at a small image size: a training step takes a fraction of a second on a CPU core.
FAST_MODEL_ARGS: dict[str, Any] = {
    "backbone_weights": None,
    "num_queries": 10,
    "loss_num_points": 256,
}
FAST_RUN: dict[str, Any] = {
    "model": "dinov3/vitt16-eomt",
    "batch_size": 2,
    "num_workers": 0,
    "accelerator": "cpu",
    "transform_args": {"image_size": (64, 64)},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Train on one thread: on a shared 2-core machine, two threads per process oversubscribe
    the cores and a step can take ten times longer; one thread keeps test times predictable.
    Module scope, so that it also covers the module-scoped training fixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The `data` argument of a synthetic dataset: 32 train and 8 val images of 96x128."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "train": write_dataset(root, 32, image_size=(96, 128), seed=0, split="train"),
        "val": write_dataset(root, 8, image_size=(96, 128), seed=0, split="val"),
    }


def fast_run(data: dict[str, Any], out: Path, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of `train_panoptic_segmentation` for a quick run; `model_args` given in
    `overrides` are merged into FAST_MODEL_ARGS."""
    model_args = {**FAST_MODEL_ARGS, **overrides.pop("model_args", {})}
    return {**FAST_RUN, "data": data, "out": str(out), "model_args": model_args, **overrides}
