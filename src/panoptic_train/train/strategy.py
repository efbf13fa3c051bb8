"""Lightning Fabric for a run: devices, precision, and the DDP or FSDP strategy."""

from __future__ import annotations

import warnings
from typing import cast

import torch
from lightning_fabric import Fabric
from lightning_fabric.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh

from panoptic_train.models.eomt import EoMT
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.plan import Machine, fabric_arguments, launch_mismatch


def build_fabric(config: TrainConfig, machine: Machine) -> Fabric:
    """Fabric as `plan.fabric_arguments` says; under a launcher, Fabric must see all of the
    launcher's processes."""
    arguments = fabric_arguments(config, machine)
    fabric = Fabric(
        accelerator=arguments.accelerator,
        strategy=fsdp_strategy() if arguments.strategy == "fsdp" else arguments.strategy,
        devices=arguments.devices,
        num_nodes=arguments.num_nodes,
        precision=arguments.precision,
    )
    launch = machine.launch
    if launch is not None and fabric.world_size != launch.world_size:
        raise launch_mismatch(config, launch)
    return fabric


def fsdp_strategy() -> ModelParallelStrategy:
    """strategy="fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`), each backbone block one
    unit of parameter all-gather and gradient reduce-scatter, the embeddings, queries and heads
    the root's. Through Fabric's ModelParallelStrategy, whose device mesh is (nodes, devices per
    node): parameters are sharded across the devices of a node and replicated across nodes
    (HSDP). Unlike Fabric's FSDPStrategy (FSDP1, GPUs only) it also runs on CPUs with gloo."""
    return ModelParallelStrategy(parallelize_fn=_fully_shard)


def _fully_shard(network: torch.nn.Module, mesh: DeviceMesh) -> torch.nn.Module:
    """Shard the network in place (Fabric passes it without torch.compile's wrapper)."""
    from torch.distributed.fsdp import fully_shard

    # The mask logits are einsum's output, a view, which FSDP2 warns might be modified in place
    # and lose its backward hook; nothing modifies the network's outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view")
    for block in cast(EoMT, network).backbone.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(network, mesh=mesh)
    return network
