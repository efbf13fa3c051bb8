"""The files a training run writes and reads back: `checkpoints/last.ckpt`, the exported models,
the resolved config.

`last.ckpt` holds everything an exact resume needs, as plain values and tensors, so it loads with
`torch.load(weights_only=True)` (nothing in it can run code):

    checkpoint_format        "panoptic_train.train_checkpoint"
    checkpoint_version       1 (not "format": that key marks exported-model dicts, so
                             `runtime.model_file.read_model_dict` finds the model under `model`)
    model                    the exported-model dict (`runtime.model_file`), so `load_model`
                             and fine-tuning read a .ckpt like an exported_*.pt
    optimizer                the optimiser state keyed by parameter name (full, unsharded)
    step, samples_seen       optimiser steps done and training positions consumed
    best_metric, best_step   the best validation value so far and its step (None before any)
    arguments                the training arguments of the run, to refuse a changed resume

No generator states: every random draw of training is seeded by (seed, sample position) or
(seed, step, micro-batch) (`train.data_order`), so the step and `samples_seen` restore them.

Every file is written atomically (temporary file + rename), so a crash at any moment leaves the
previous complete file in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from panoptic_train._io import atomic_torch_save, remove_stale_temp_files
from panoptic_train._validate import check_format_version
from panoptic_train.errors import WeightsError
from panoptic_train.runtime.model_file import CHECKPOINT_MODEL_KEY, verify_checksums

FORMAT = "panoptic_train.train_checkpoint"
FORMAT_VERSION = 1
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD_FULL = StateDictOptions(full_state_dict=True)


@dataclass(frozen=True)
class RunPaths:
    """Where a run in `out` keeps its files."""

    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.ckpt"

    @property
    def exported_best(self) -> Path:
        return self.out / "exported_models" / "exported_best.pt"

    @property
    def exported_last(self) -> Path:
        return self.out / "exported_models" / "exported_last.pt"

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def log_file(self) -> Path:
        return self.out / "train.log"

    def owned(self) -> list[Path]:
        """Everything a run writes directly under `out` (what `overwrite=True` removes)."""
        return [
            self.checkpoint.parent,
            self.exported_best.parent,
            self.logs,
            self.config,
            self.log_file,
        ]

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete what atomic writes of the run's files left behind when the run was killed
        mid-write (a 1 GB `.last.ckpt.*.tmp` would otherwise stay forever); call it on rank 0
        before the run writes anything."""
        targets = (self.checkpoint, self.exported_best, self.exported_last, self.config)
        removed = []
        for folder in {target.parent for target in targets}:
            names = frozenset(target.name for target in targets if target.parent == folder)
            removed += remove_stale_temp_files(folder, names)
        return removed


@dataclass
class Progress:
    """How far a run is, besides the weights and the optimiser: the counters `last.ckpt` keeps."""

    step: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None

    @classmethod
    def of(cls, checkpoint: Mapping[str, Any]) -> Progress:
        """The progress saved in a loaded `last.ckpt`."""
        return cls(
            step=int(checkpoint["step"]),
            samples_seen=int(checkpoint["samples_seen"]),
            best_metric=checkpoint["best_metric"],
            best_step=checkpoint["best_step"],
        )

    def advance(self, batch_size: int) -> None:
        """Count one optimiser step over `batch_size` training positions."""
        self.step += 1
        self.samples_seen += batch_size

    def improves(self, value: float) -> bool:
        """Whether a validation value beats the best so far (higher is better)."""
        return math.isfinite(value) and (self.best_metric is None or value > self.best_metric)


def network_state(network: nn.Module) -> dict[str, Tensor]:
    """The full (unsharded) state dict of the network on the CPU, also when FSDP shards it."""
    return cast(dict[str, Tensor], get_model_state_dict(network, options=_FULL))


def optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimiser state keyed by parameter name (independent of wrapping and sharding)."""
    return get_optimizer_state_dict(network, optimizer, options=_FULL)


def load_training_state(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    network_dict: Mapping[str, Tensor],
    optimizer_dict: Mapping[str, Any],
) -> None:
    """Put saved network and optimiser states back into the network (sharded or not) and its
    optimiser."""
    set_model_state_dict(network, dict(network_dict), options=_LOAD_FULL)
    set_optimizer_state_dict(network, optimizer, dict(optimizer_dict), options=_LOAD_FULL)


def save_checkpoint(
    path: Path,
    *,
    model: Mapping[str, Any],
    optimizer: Mapping[str, Any],
    progress: Progress,
    arguments: Mapping[str, Any],
) -> None:
    """Write `last.ckpt` atomically (see the module docstring for its layout)."""
    atomic_torch_save(
        {
            "checkpoint_format": FORMAT,
            "checkpoint_version": FORMAT_VERSION,
            CHECKPOINT_MODEL_KEY: dict(model),
            "optimizer": dict(optimizer),
            "step": progress.step,
            "samples_seen": progress.samples_seen,
            "best_metric": progress.best_metric,
            "best_step": progress.best_step,
            "arguments": dict(arguments),
        },
        path,
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read `last.ckpt` safely and check that it is a training checkpoint of ours, undamaged."""
    verify_checksums(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails with many types on foreign or damaged files
        raise WeightsError(
            f"Cannot read the training checkpoint '{path}' ({type(error).__name__}: {error}). "
            "It is damaged or not from panoptic_train; start a new run with overwrite=True."
        ) from error
    if not isinstance(content, Mapping) or content.get("checkpoint_format") != FORMAT:
        raise WeightsError(f"'{path}' is not a panoptic_train training checkpoint.")
    check_format_version(
        content.get("checkpoint_version"), FORMAT_VERSION, f"'{path}'", "checkpoint_version"
    )
    return dict(content)
