"""Typed configuration of `train_panoptic_segmentation`'s dict arguments.

Every dict a user passes (`model_args`, `logger_args`, `metric_args`, `loader_args`,
`save_checkpoint_args`, `torch_compile_args`) is validated once, at the entry, into one of the
configs below by `_validate.parse_config`: an unknown key or a bad value is a `ConfigError`
naming the argument, the key and the accepted keys or values; nothing is silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, model_validator

from panoptic_train._types import TrainPrecision
from panoptic_train._validate import StrictConfig
from panoptic_train.data.config import DataArgs
from panoptic_train.data.transforms import TransformArgs

Auto = Literal["auto"]


class ModelArgs(StrictConfig):
    """Architecture overrides and the EoMT training recipe.

    `backbone_weights`: "default" (the registry's source), None (random init) or a path/URL to
    DINOv3 weights. `lr` is the learning rate at global batch 16; it is scaled by
    sqrt(batch / 16). "auto" warmup and annealing windows follow the recipe, shortened in
    proportion when training is shorter than 90 000 steps.
    """

    backbone_weights: str | None = "default"
    num_queries: int | Auto = Field("auto")
    num_joint_blocks: int | Auto = Field("auto")
    # What of the upscaler backward recomputes (`models.eomt.EoMT`): "auto" the upscale blocks'
    # elementwise tails, and the whole upscaler when its activations would take over a quarter
    # of the device's available memory; True the whole upscaler; False nothing.
    activation_checkpointing: bool | Auto = "auto"

    loss_num_points: int = Field(12544, ge=1)
    loss_oversample_ratio: float = Field(3.0, ge=1.0)
    loss_importance_sample_ratio: float = Field(0.75, ge=0.0, le=1.0)
    loss_class_coefficient: float = Field(2.0, ge=0.0)
    loss_mask_coefficient: float = Field(5.0, ge=0.0)
    loss_dice_coefficient: float = Field(5.0, ge=0.0)
    loss_no_object_coefficient: float = Field(0.1, ge=0.0)
    # "skip": loss and matcher points avoid void, crowd and padding pixels; "negative": points
    # over the whole crop, those pixels negatives of every mask (the EoMT code).
    loss_ignored_pixels: Literal["skip", "negative"] = "skip"

    # "auto": 2e-4 (EoMT) for a trained backbone, 8e-4 for a random one (`optim.default_lr`).
    lr: PositiveFloat | Auto = "auto"
    llrd: float = Field(0.8, gt=0.0, le=1.0)
    llrd_joint_blocks: float = Field(1.0, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    # AdamW's eps; EoMT uses PyTorch's 1e-8 (see `optim.build_optimizer` for why ours is lower).
    optimizer_eps: float = Field(1e-12, gt=0.0)
    lr_warmup_steps: tuple[int, int] | Auto = "auto"
    poly_power: float = Field(0.9, gt=0.0)
    gradient_clip_val: float | None = Field(0.01, gt=0.0)
    attn_mask_annealing_steps_start: list[int] | Auto = "auto"
    attn_mask_annealing_steps_end: list[int] | Auto = "auto"

    threshold: float = Field(0.8, ge=0.0, le=1.0)
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0)
    mask_overlap_threshold: float = Field(0.8, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_windows(self) -> ModelArgs:
        start, end = self.attn_mask_annealing_steps_start, self.attn_mask_annealing_steps_end
        if (start == "auto") != (end == "auto"):
            raise ValueError(
                "give both attn_mask_annealing_steps_start and attn_mask_annealing_steps_end, "
                "or neither"
            )
        if isinstance(start, list) and isinstance(end, list):
            if len(start) != len(end):
                raise ValueError(
                    f"attn_mask_annealing_steps_start has {len(start)} entries but "
                    f"attn_mask_annealing_steps_end has {len(end)}; give one per joint block"
                )
            bad = [(s, e) for s, e in zip(start, end, strict=True) if not 0 <= s <= e]
            if bad:
                raise ValueError(f"annealing windows need 0 <= start <= end, got {bad}")
        for name in ("num_queries", "num_joint_blocks"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.lr_warmup_steps != "auto" and min(self.lr_warmup_steps) < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        return self


class TensorBoardArgs(StrictConfig):
    """TensorBoard event files go to `out/logs/tensorboard` (`tensorboard --logdir out`)."""

    flush_secs: int = Field(30, ge=1)


class MLflowArgs(StrictConfig):
    experiment_name: str = "panoptic_train"
    run_name: str | None = None
    tracking_uri: str | None = None
    tags: dict[str, str] | None = None


class WandbArgs(StrictConfig):
    project: str | None = None
    name: str | None = None
    entity: str | None = None
    log_model: bool = False
    offline: bool = False
    tags: list[str] | None = None


class LoggerArgs(StrictConfig):
    """Loggers (None turns one off) and how often to log and validate."""

    tensorboard: TensorBoardArgs | None = Field(default_factory=TensorBoardArgs)
    mlflow: MLflowArgs | None = None
    wandb: WandbArgs | None = None
    log_every_num_steps: int | Auto = "auto"
    val_every_num_steps: int | Auto = "auto"

    @model_validator(mode="after")
    def _positive(self) -> LoggerArgs:
        for name in ("log_every_num_steps", "val_every_num_steps"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        return self


WatchMetric = Literal[
    "val_metric/pq",
    "val_metric/sq",
    "val_metric/rq",
    "val_metric/pq_things",
    "val_metric/pq_stuff",
]


class MetricArgs(StrictConfig):
    """`watch_metric` picks `exported_best.pt` (higher is better); `classwise` also logs the
    PQ of every class."""

    watch_metric: WatchMetric = "val_metric/pq"
    classwise: bool = False


class LoaderArgs(StrictConfig):
    """DataLoader settings that do not change what is trained on."""

    pin_memory: bool | Auto = "auto"
    prefetch_factor: int | None = Field(None, ge=1)
    persistent_workers: bool = True
    timeout: float = Field(0.0, ge=0.0)


class SaveCheckpointArgs(StrictConfig):
    save_every_num_steps: int = Field(1000, ge=1)
    save_last: bool = True
    save_best: bool = True


class TorchCompileArgs(StrictConfig):
    """`torch.compile` of the network's forward; off unless `disable` is False."""

    disable: bool = True
    backend: str = "inductor"
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    fullgraph: bool = False
    dynamic: bool | None = None


class TrainConfig(StrictConfig):
    """All arguments of `train_panoptic_segmentation`, validated. Values that depend on the
    hardware ("auto" workers, accumulation, devices) are resolved by `plan.plan_run`."""

    out: Path
    data: DataArgs
    model: str
    checkpoint: Path | None = None
    steps: int = Field(90_000, ge=1)
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int | Auto = "auto"
    num_workers: int | Auto = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(1, ge=1)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    strategy: str = "auto"
    precision: TrainPrecision = "bf16-mixed"
    float32_matmul_precision: Literal["auto", "highest", "high", "medium"] = "auto"
    seed: int = Field(0, ge=0)
    resume_interrupted: bool = False
    overwrite: bool = False
    logger_args: LoggerArgs = Field(default_factory=LoggerArgs)
    model_args: ModelArgs = Field(default_factory=ModelArgs)
    transform_args: TransformArgs = Field(default_factory=TransformArgs)
    metric_args: MetricArgs = Field(default_factory=MetricArgs)
    loader_args: LoaderArgs = Field(default_factory=LoaderArgs)
    save_checkpoint_args: SaveCheckpointArgs = Field(default_factory=SaveCheckpointArgs)
    torch_compile_args: TorchCompileArgs = Field(default_factory=TorchCompileArgs)

    @model_validator(mode="after")
    def _positive_counts(self) -> TrainConfig:
        accumulation = self.gradient_accumulation_steps
        if accumulation != "auto" and accumulation < 1:
            raise ValueError(f"gradient_accumulation_steps must be at least 1, got {accumulation}")
        if self.num_workers != "auto" and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        return self
