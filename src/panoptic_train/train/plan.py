"""Run planning: what a training run will do, decided from its arguments and the machine.

Everything here is a pure function of a validated `TrainConfig`, the facts of the machine
(`Machine`, read once by `Machine.detect`) and the network's shape, so that each rule (the batch
split, every "auto", the intervals, what a resume may change) is tested on its own with numbers
worked out by hand. `train.loop` carries the plan out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from panoptic_train._distributed import Launch, launched
from panoptic_train._types import TrainPrecision
from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.transforms import TransformArgs
from panoptic_train.errors import ConfigError
from panoptic_train.models import registry
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.optim import (
    default_annealing_windows,
    default_lr,
    default_warmup_steps,
    scaled_lr,
)

DEFAULT_LOG_EVERY = 20
DEFAULT_VAL_EVERY = 1000
MAX_AUTO_WORKERS = 8
# What Fabric's ModelParallelStrategy (strategy="fsdp") accepts.
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


@dataclass(frozen=True)
class Machine:
    """The facts of this machine and job that a plan depends on."""

    accelerator: str  # what the `accelerator` argument means here: "cpu", "cuda", "mps", ...
    bf16_supported: bool  # the CUDA device computes in bfloat16 (False off CUDA)
    cpus: int  # CPUs this process may use
    launch: Launch | None  # the job torchrun or srun started, None for a plain process

    @classmethod
    def detect(cls, accelerator: str) -> Machine:
        """Read the facts for the `accelerator` argument (CUDA is only queried when used)."""
        if accelerator in ("gpu", "cuda"):
            kind = "cuda"
        elif accelerator == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            kind = accelerator
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cls(
            accelerator=kind,
            bf16_supported=kind == "cuda" and torch.cuda.is_bf16_supported(),
            cpus=cpus or 1,
            launch=launched(),
        )


@dataclass(frozen=True)
class ModelDefaults:
    """What `steps="auto"` and an absent `transform_args["image_size"]` mean for a model."""

    steps: int
    image_size: tuple[int, int]


def apply_model_defaults(
    steps: int | Literal["auto"], transforms: TransformArgs, defaults: ModelDefaults
) -> tuple[int, TransformArgs]:
    """The run's steps and transforms with the model's defaults where the caller gave none."""
    if "image_size" not in transforms.model_fields_set:
        transforms = transforms.model_copy(update={"image_size": defaults.image_size})
    return (defaults.steps if steps == "auto" else steps), transforms


@dataclass(frozen=True)
class FabricArguments:
    """What Lightning Fabric is built from (`train.strategy.build_fabric`)."""

    accelerator: str
    strategy: str
    devices: int | str | list[int]
    num_nodes: int
    precision: TrainPrecision


def resolve_precision(precision: TrainPrecision, machine: Machine) -> TrainPrecision:
    """Mixed bf16 where the hardware has it; CPUs train in float32 (bf16 autocast on CPU is slow
    and the default must just work), GPUs without bf16 in fp16 mixed precision."""
    if precision != "bf16-mixed":
        return precision
    if machine.accelerator == "cpu":
        return "32-true"
    if machine.accelerator == "cuda" and not machine.bf16_supported:
        return "16-mixed"
    return precision


def fabric_arguments(config: TrainConfig, machine: Machine) -> FabricArguments:
    """Fabric's arguments. Under torchrun or srun, devices="auto" is the number of processes the
    launcher started per node, and devices x num_nodes must make all of its processes: else each
    process would train a copy of its own (on a CPU "auto" is one device), all in one `out`."""
    precision = resolve_precision(config.precision, machine)
    if config.strategy == "fsdp" and precision not in FSDP_PRECISIONS:
        raise ConfigError(
            f"strategy='fsdp' trains in precision {', '.join(map(repr, FSDP_PRECISIONS))}, not "
            f"{precision!r} (precision={config.precision!r} on this hardware). Pass "
            "precision='32-true', or strategy='ddp' for fp16 mixed precision."
        )
    devices = config.devices
    launch = machine.launch
    if launch is not None:
        if devices == "auto":
            devices = launch.processes_per_node
        if config.num_nodes != launch.num_nodes or (
            isinstance(devices, int) and devices != launch.processes_per_node
        ):
            raise launch_mismatch(config, launch)
    return FabricArguments(
        accelerator=config.accelerator,
        strategy=config.strategy,
        devices=devices,
        num_nodes=config.num_nodes,
        precision=precision,
    )


def launch_mismatch(config: TrainConfig, launch: Launch) -> ConfigError:
    """The error for devices x num_nodes that do not make the launcher's processes."""
    return ConfigError(
        f"The launcher started {launch.world_size} processes ({launch.processes_per_node} per "
        f"node on {launch.num_nodes} node(s)), but devices={config.devices!r} and "
        f"num_nodes={config.num_nodes} do not make {launch.world_size}. Pass "
        f"devices={launch.processes_per_node} (or 'auto') and num_nodes={launch.num_nodes}."
    )


def resolve_num_workers(config: TrainConfig, world_size: int, cpus: int) -> int:
    """ "auto": the CPUs this process may use, shared by the devices of a node, minus one for
    the training process itself, at most 8."""
    if config.num_workers != "auto":
        return config.num_workers
    local_devices = max(1, world_size // config.num_nodes)
    return max(0, min(MAX_AUTO_WORKERS, cpus // local_devices - 1))


def matmul_precision(setting: str, device_type: str) -> str | None:
    """`torch.set_float32_matmul_precision`'s value for the run; None keeps torch's default.
    "auto": TF32 on CUDA ("high"), torch's default elsewhere."""
    if setting != "auto":
        return setting
    return "high" if device_type == "cuda" else None


@dataclass(frozen=True)
class Interval:
    """Something done every `every` optimiser steps and after the last step of the run."""

    every: int
    last_step: int

    def due(self, step: int) -> bool:
        """Whether it is done after optimiser step `step` (1-based: steps done so far)."""
        return step % self.every == 0 or step == self.last_step


@dataclass(frozen=True)
class RunPlan:
    """The numbers a run trains with, resolved once from its arguments, the hardware Fabric
    found and the network's number of joint blocks."""

    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    num_workers: int
    precision: TrainPrecision
    lr: float
    warmup_steps: tuple[int, int]
    annealing_windows: tuple[tuple[int, int], ...]
    log_every: Interval
    val_every: Interval
    save_every: Interval

    def resolved(self) -> dict[str, Any]:
        """The values `config.json` records under "resolved" (besides the model name)."""
        return {
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_workers": self.num_workers,
            "precision": self.precision,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "annealing_windows": self.annealing_windows,
            "log_every_num_steps": self.log_every.every,
            "val_every_num_steps": self.val_every.every,
        }


def random_backbone(config: TrainConfig) -> bool:
    """Whether the run starts from a random backbone: a registry name with
    `backbone_weights=None` (a `checkpoint` or a model file brings trained weights)."""
    return (
        config.checkpoint is None
        and config.model_args.backbone_weights is None
        and registry.is_model_name(config.model)
    )


def plan_run(
    config: TrainConfig, world_size: int, num_joint_blocks: int, machine: Machine
) -> RunPlan:
    """Split the global batch over ranks and accumulation steps and resolve every "auto"."""
    accumulation = (
        1 if config.gradient_accumulation_steps == "auto" else config.gradient_accumulation_steps
    )
    if config.batch_size % (world_size * accumulation):
        raise ConfigError(
            f"batch_size={config.batch_size} (the global batch) must be divisible by the "
            f"{world_size} device(s) x gradient_accumulation_steps={accumulation}. Choose a "
            f"batch_size that is a multiple of {world_size * accumulation}."
        )
    args = config.model_args
    warmup = (
        default_warmup_steps(config.steps)
        if args.lr_warmup_steps == "auto"
        else args.lr_warmup_steps
    )
    starts, ends = args.attn_mask_annealing_steps_start, args.attn_mask_annealing_steps_end
    if starts == "auto" or ends == "auto":  # ModelArgs has both or neither
        windows = default_annealing_windows(num_joint_blocks, config.steps, warmup[1])
    else:
        windows = list(zip(starts, ends, strict=True))
        if len(windows) != num_joint_blocks:
            raise ConfigError(
                f"model_args attn_mask_annealing_steps_start/end have {len(windows)} entries but "
                f"the model has {num_joint_blocks} joint blocks; give one window per joint block."
            )
    logger_args = config.logger_args
    log_every, val_every = (
        min(default, config.steps) if every == "auto" else every
        for every, default in (
            (logger_args.log_every_num_steps, DEFAULT_LOG_EVERY),
            (logger_args.val_every_num_steps, DEFAULT_VAL_EVERY),
        )
    )
    return RunPlan(
        world_size=world_size,
        micro_batch_size=config.batch_size // (world_size * accumulation),
        gradient_accumulation_steps=accumulation,
        num_workers=resolve_num_workers(config, world_size, machine.cpus),
        precision=resolve_precision(config.precision, machine),
        lr=scaled_lr(
            default_lr(random_backbone(config)) if args.lr == "auto" else args.lr,
            config.batch_size,
        ),
        warmup_steps=(warmup[0], warmup[1]),
        annealing_windows=tuple((start, end) for start, end in windows),
        log_every=Interval(log_every, config.steps),
        val_every=Interval(val_every, config.steps),
        save_every=Interval(config.save_checkpoint_args.save_every_num_steps, config.steps),
    )


# ---------------------------------------------------------------------------------- resuming


def training_arguments(config: TrainConfig, plan: RunPlan) -> dict[str, Any]:
    """The arguments that shape the training trajectory; a resume must not change them.

    Plain JSON values (so a checkpoint round trip compares equal). Logging, checkpoint cadence,
    workers and loader settings may change on resume; they do not alter the result.
    """
    values = {
        "data": config.data.model_dump(mode="json"),
        "model": config.model,
        "checkpoint": None if config.checkpoint is None else str(config.checkpoint),
        "steps": config.steps,
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "world_size": plan.world_size,
        "precision": plan.precision,
        "seed": config.seed,
        "model_args": config.model_args.model_dump(mode="json"),
        "transform_args": config.transform_args.model_dump(mode="json"),
        "metric_args": config.metric_args.model_dump(mode="json"),
    }
    return json.loads(json.dumps(values))


def argument_differences(saved: Any, current: Any, name: str = "") -> list[str]:
    """Human-readable differences between two nested argument dicts, e.g.
    "model_args.lr: 0.0002 (interrupted run) -> 0.001 (now)"."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        differences = []
        for key in sorted(set(saved) | set(current), key=str):
            child = f"{name}.{key}" if name else str(key)
            differences += argument_differences(saved.get(key), current.get(key), child)
        return differences
    if saved != current:
        return [f"{name}: {saved!r} (interrupted run) -> {current!r} (now)"]
    return []


def check_resume_arguments(saved: Mapping[str, Any], current: Mapping[str, Any], out: Path) -> None:
    """Refuse to resume with training arguments other than the interrupted run's."""
    differences = argument_differences(saved, current)
    if differences:
        raise ConfigError(
            f"resume_interrupted=True continues the run in '{out}' exactly, but these training "
            "arguments differ from that run:\n  "
            + "\n  ".join(differences)
            + "\nResume with the original arguments, or start a new run (another `out`, or "
            "overwrite=True) that may start from its weights with "
            f"model='{out / 'checkpoints' / 'last.ckpt'}'."
        )


def check_resume_classes(saved: ClassMapping, current: ClassMapping, out: Path) -> None:
    """Refuse to resume on a dataset whose classes are not the interrupted run's."""
    if saved != current:
        raise ConfigError(
            f"The classes of the dataset ({list(current.names)}) are not those of the "
            f"interrupted run in '{out}' ({list(saved.names)}): the "
            "train annotations changed. Resume with the original data or start a new run."
        )
