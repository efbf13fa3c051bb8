"""The DataLoaders of a run: the endless training stream of this rank and its validation shard."""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader, Subset

from panoptic_train.data.dataset import PanopticTrainDataset, PanopticValDataset, collate_val
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.data_order import (
    PositionSeededDataset,
    StreamBatchSampler,
    collate_positioned,
)
from panoptic_train.train.plan import RunPlan


def build_train_loader(
    dataset: PanopticTrainDataset,
    config: TrainConfig,
    plan: RunPlan,
    fabric: Fabric,
    samples_seen: int,
) -> DataLoader[Any]:
    """This rank's micro-batches of the sample stream, from position `samples_seen` on."""
    sampler = StreamBatchSampler(
        len(dataset),
        plan.micro_batch_size,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
        seed=config.seed,
        start_position=samples_seen,
    )
    return DataLoader(
        PositionSeededDataset(dataset, config.seed),
        batch_sampler=sampler,
        collate_fn=collate_positioned,
        **_options(config, plan, fabric),
    )


def build_val_loader(
    dataset: PanopticValDataset, config: TrainConfig, plan: RunPlan, fabric: Fabric
) -> DataLoader[Any]:
    """A strided shard of the validation images per rank, without the padding
    DistributedSampler adds (it would count some images twice in PQ)."""
    shard = Subset(dataset, range(fabric.global_rank, len(dataset), fabric.world_size))
    return DataLoader(
        shard,
        batch_size=plan.micro_batch_size,
        shuffle=False,
        collate_fn=collate_val,
        **_options(config, plan, fabric),
    )


def _options(config: TrainConfig, plan: RunPlan, fabric: Fabric) -> dict[str, Any]:
    args = config.loader_args
    workers = plan.num_workers
    pin = fabric.device.type == "cuda" if args.pin_memory == "auto" else args.pin_memory
    options: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": pin,
        "timeout": args.timeout,
        # Each new iterator draws its workers' base seed from this generator; from the global
        # one it would shift the training RNG stream whenever a loader starts (resume).
        "generator": torch.Generator().manual_seed(config.seed),
    }
    if workers > 0:
        options["persistent_workers"] = args.persistent_workers
        if args.prefetch_factor is not None:
            options["prefetch_factor"] = args.prefetch_factor
    return options
