"""The training loop on Lightning Fabric: devices, precision, DDP/FSDP, gradient accumulation.

One optimiser step = `gradient_accumulation_steps` micro-batches per rank, together exactly the
global `batch_size` images. Per step: set the learning rates and the masked-attention
probabilities for the step, forward + loss + backward per micro-batch, check the loss, clip the
gradient norm, update. Every `val_every_num_steps` and at the last step the network is validated
(PQ); every `save_every_num_steps` and at the end `checkpoints/last.ckpt` and the exported models
are written. Resuming restores weights, optimiser, step, data position and best PQ.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import ModelParallelStrategy
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Subset

from panoptic_train._distributed import Launch, launched
from panoptic_train._io import atomic_write_json
from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.dataset import build_datasets, collate_val
from panoptic_train.errors import ConfigError, PanopticTrainError
from panoptic_train.evaluation.report import format_summary
from panoptic_train.models.eomt import EoMT
from panoptic_train.runtime.model_file import ExportedModel
from panoptic_train.runtime.postprocess import PostprocessConfig
from panoptic_train.train import checkpoints as ckpt
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.data_order import (
    PositionSeededDataset,
    StreamBatchSampler,
    collate_positioned,
    loss_generators,
    seed_micro_batch,
)
from panoptic_train.train.loggers import Loggers, build_loggers
from panoptic_train.train.loss import MaskClassificationLoss
from panoptic_train.train.model_init import build_initial_model
from panoptic_train.train.optim import (
    TwoStageWarmupPoly,
    apply_learning_rates,
    build_optimizer,
    default_annealing_windows,
    default_warmup_steps,
    scaled_lr,
    set_attn_mask_probs,
)
from panoptic_train.train.progress import ProgressBar, run_logging
from panoptic_train.train.validate import evaluate_network, metrics_to_log

_DEFAULT_LOG_EVERY = 20
_DEFAULT_VAL_EVERY = 1000
_MAX_AUTO_WORKERS = 8
# What Fabric's ModelParallelStrategy (strategy="fsdp") accepts.
_FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


class TrainingDivergedError(PanopticTrainError, FloatingPointError):
    """The loss became NaN or infinite; the message says when and what to change."""


@dataclass(frozen=True)
class RunPlan:
    """The numbers that depend on the hardware Fabric found, resolved once per run."""

    world_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    num_workers: int
    precision: str
    lr: float
    warmup_steps: tuple[int, int]
    annealing_windows: tuple[tuple[int, int], ...]
    log_every_num_steps: int
    val_every_num_steps: int


def resolve_precision(precision: str, accelerator: str) -> str:
    """Mixed bf16 where the hardware has it; CPUs train in float32 (bf16 autocast on CPU is slow
    and the default must just work), GPUs without bf16 in fp16 mixed precision."""
    if precision != "bf16-mixed":
        return precision
    if accelerator == "cpu":
        return "32-true"
    if accelerator == "cuda" and not torch.cuda.is_bf16_supported():
        return "16-mixed"
    return precision


def _accelerator_type(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_num_workers(config: TrainConfig, world_size: int) -> int:
    """ "auto": the CPUs this process may use, shared by the devices of a node, minus one for
    the training process itself, at most 8."""
    if config.num_workers != "auto":
        return config.num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_devices = max(1, world_size // config.num_nodes)
    return max(0, min(_MAX_AUTO_WORKERS, (cpus or 1) // local_devices - 1))


def make_plan(config: TrainConfig, world_size: int, num_joint_blocks: int) -> RunPlan:
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
    if args.attn_mask_annealing_steps_start == "auto":
        windows = default_annealing_windows(num_joint_blocks, config.steps, warmup[1])
    else:
        windows = list(
            zip(
                args.attn_mask_annealing_steps_start,
                args.attn_mask_annealing_steps_end,
                strict=True,
            )
        )
        if len(windows) != num_joint_blocks:
            raise ConfigError(
                f"model_args attn_mask_annealing_steps_start/end have {len(windows)} entries but "
                f"the model has {num_joint_blocks} joint blocks; give one window per joint block."
            )
    logger_args = config.logger_args
    return RunPlan(
        world_size=world_size,
        micro_batch_size=config.batch_size // (world_size * accumulation),
        gradient_accumulation_steps=accumulation,
        num_workers=resolve_num_workers(config, world_size),
        precision=resolve_precision(config.precision, _accelerator_type(config.accelerator)),
        lr=scaled_lr(args.lr, config.batch_size),
        warmup_steps=tuple(warmup),
        annealing_windows=tuple(tuple(window) for window in windows),
        log_every_num_steps=(
            min(_DEFAULT_LOG_EVERY, config.steps)
            if logger_args.log_every_num_steps == "auto"
            else logger_args.log_every_num_steps
        ),
        val_every_num_steps=(
            min(_DEFAULT_VAL_EVERY, config.steps)
            if logger_args.val_every_num_steps == "auto"
            else logger_args.val_every_num_steps
        ),
    )


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


def _oom_error(config: TrainConfig, plan: RunPlan, error: BaseException) -> PanopticTrainError:
    return PanopticTrainError(
        f"Out of memory while training with {plan.micro_batch_size} image(s) per device and "
        f"step (batch_size={config.batch_size} over {plan.world_size} device(s) x "
        f"gradient_accumulation_steps={plan.gradient_accumulation_steps}), image size "
        f"{config.transform_args.image_size}, precision {plan.precision!r}. Lower the memory per "
        "step: raise gradient_accumulation_steps (same global batch, fewer images at once), lower "
        "batch_size, lower transform_args['image_size'], use precision='bf16-mixed', or lower "
        f"model_args['loss_num_points'] / ['num_queries']. ({error})"
    )


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError | MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def build_fabric(config: TrainConfig) -> Fabric:
    """Fabric for the run. Under torchrun or srun, devices="auto" is the number of processes the
    launcher started per node, and devices x num_nodes must make all of its processes: else each
    process would train a copy of its own (on a CPU "auto" is one device), all in one `out`."""
    launch = launched()
    devices = config.devices
    precision = resolve_precision(config.precision, _accelerator_type(config.accelerator))
    if config.strategy == "fsdp" and precision not in _FSDP_PRECISIONS:
        raise ConfigError(
            f"strategy='fsdp' trains in precision {', '.join(map(repr, _FSDP_PRECISIONS))}, not "
            f"{precision!r} (precision={config.precision!r} on this hardware). Pass "
            "precision='32-true', or strategy='ddp' for fp16 mixed precision."
        )
    if launch is not None:
        if devices == "auto":
            devices = launch.processes_per_node
        if config.num_nodes != launch.num_nodes or (
            isinstance(devices, int) and devices != launch.processes_per_node
        ):
            raise _launch_mismatch(config, launch)
    fabric = Fabric(
        accelerator=config.accelerator,
        strategy=fsdp_strategy() if config.strategy == "fsdp" else config.strategy,
        devices=devices,
        num_nodes=config.num_nodes,
        precision=precision,
    )
    if launch is not None and fabric.world_size != launch.world_size:
        raise _launch_mismatch(config, launch)
    return fabric


def fsdp_strategy() -> ModelParallelStrategy:
    """strategy="fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`), each backbone block one
    unit of parameter all-gather and gradient reduce-scatter, the embeddings, queries and heads
    the root's. Through Fabric's ModelParallelStrategy, whose device mesh is (nodes, devices per
    node): parameters are sharded across the devices of a node and replicated across nodes
    (HSDP). Unlike Fabric's FSDPStrategy (FSDP1, GPUs only) it also runs on CPUs with gloo."""
    return ModelParallelStrategy(parallelize_fn=_fully_shard)


def _fully_shard(module: torch.nn.Module, mesh: DeviceMesh) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    network = getattr(module, "_orig_mod", module)  # torch.compile's wrapper holds the network
    # The mask logits are einsum's output, a view, which FSDP2 warns might be modified in place
    # and lose its backward hook; nothing modifies the network's outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view")
    for block in network.backbone.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(network, mesh=mesh)
    return module


def _launch_mismatch(config: TrainConfig, launch: Launch) -> ConfigError:
    return ConfigError(
        f"The launcher started {launch.world_size} processes ({launch.processes_per_node} per "
        f"node on {launch.num_nodes} node(s)), but devices={config.devices!r} and "
        f"num_nodes={config.num_nodes} do not make {launch.world_size}. Pass "
        f"devices={launch.processes_per_node} (or 'auto') and num_nodes={launch.num_nodes}."
    )


class Trainer:
    """One training run; `fit()` is the whole of it. Built by `train.api` after validation."""

    def __init__(self, config: TrainConfig, checkpoint: Mapping[str, Any] | None) -> None:
        self.config = config
        self.resume_from = checkpoint
        self.paths = ckpt.RunPaths(config.out)
        self.fabric = build_fabric(config)

    # ------------------------------------------------------------------ setup

    def fit(self) -> None:
        fabric = self.fabric
        fabric.launch()
        rank_zero = fabric.is_global_zero
        with run_logging(self.paths.log_file if rank_zero else None, console=rank_zero) as log:
            self.log = log
            self._fit()

    def _fit(self) -> None:
        config, fabric = self.config, self.fabric
        if config.float32_matmul_precision != "auto":
            torch.set_float32_matmul_precision(config.float32_matmul_precision)
        elif fabric.device.type == "cuda":
            torch.set_float32_matmul_precision("high")

        fabric.seed_everything(config.seed, verbose=False)
        datasets = build_datasets(
            config.data,
            config.transform_args,
            num_workers=resolve_num_workers(config, fabric.world_size),
        )
        self.classes = datasets.classes
        network, model_name = self._initial_network(datasets.classes)
        self.network = network
        self.model_name = model_name
        self.plan = make_plan(config, fabric.world_size, network.config.num_joint_blocks)
        arguments = training_arguments(config, self.plan)
        state = ckpt.TrainState()
        if self.resume_from is not None:
            ckpt.check_resume_arguments(self.resume_from["arguments"], arguments, config.out)
            state = ckpt.train_state_of(self.resume_from)
        self.arguments = arguments
        self._setup_model_and_optimizer()
        args = config.model_args
        self.criterion = MaskClassificationLoss(
            num_classes=datasets.classes.num_classes,
            num_points=args.loss_num_points,
            oversample_ratio=args.loss_oversample_ratio,
            importance_sample_ratio=args.loss_importance_sample_ratio,
            class_weight=args.loss_class_coefficient,
            mask_weight=args.loss_mask_coefficient,
            dice_weight=args.loss_dice_coefficient,
            no_object_weight=args.loss_no_object_coefficient,
        )
        self.schedule = TwoStageWarmupPoly(config.steps, self.plan.warmup_steps, args.poly_power)
        self.postprocess = PostprocessConfig(
            threshold=args.threshold,
            mask_threshold=args.mask_threshold,
            overlap_threshold=args.mask_overlap_threshold,
        )
        train_loader = self._train_loader(datasets.train, state.samples_seen)
        val_loader = self._val_loader(datasets.val)
        if fabric.is_global_zero:
            atomic_write_json(self._resolved_config(), self.paths.config)
        loggers = build_loggers(
            config.logger_args,
            self.paths.logs,
            self._resolved_config(),
            start_step=state.step,
            is_rank_zero=fabric.is_global_zero,
        )
        self._announce(len(datasets.train), len(datasets.val), state)
        try:
            self._train(state, train_loader, val_loader, loggers)
        finally:
            best = self.paths.exported_best
            loggers.finish(best if best.is_file() else self.paths.exported_last)

    def _setup_model_and_optimizer(self) -> None:
        """Wrap the network for the strategy (and torch.compile), build the optimiser over its
        parameter groups and, when resuming, restore weights and optimiser."""
        config, fabric, network = self.config, self.fabric, self.network
        if config.torch_compile_args.disable:
            forward_module: torch.nn.Module = network
        else:
            compile_args = config.torch_compile_args.model_dump(exclude={"disable"})
            forward_module = torch.compile(network, **compile_args)
        # The depthwise convolutions' (C, 1, 3, 3) weight gradients come out channels-last, the
        # same memory as DDP's contiguous bucket views, but DDP warns about the strides.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        self.model = fabric.setup_module(forward_module)
        args = config.model_args
        self.optimizer = fabric.setup_optimizers(
            build_optimizer(
                network,
                lr=self.plan.lr,
                llrd=args.llrd,
                llrd_joint_blocks=args.llrd_joint_blocks,
                weight_decay=args.weight_decay,
                eps=args.optimizer_eps,
            )
        )
        if self.resume_from is not None:
            ckpt.load_training_state(
                self._root(),
                self.optimizer.optimizer,
                self.resume_from[ckpt.CHECKPOINT_MODEL_KEY]["state_dict"],
                self.resume_from["optimizer"],
            )

    def _initial_network(self, classes: ClassMapping) -> tuple[EoMT, str]:
        """Resume: the checkpoint's architecture (its weights are loaded after setup). New run:
        the `model` (or `checkpoint`) source, for these classes."""
        if self.resume_from is not None:
            exported = ExportedModel.from_dict(
                self.resume_from[ckpt.CHECKPOINT_MODEL_KEY], source=f"'{self.paths.checkpoint}'"
            )
            if exported.classes != classes:
                raise ConfigError(
                    f"The classes of the dataset ({list(classes.names)}) are not those of the "
                    f"interrupted run in '{self.config.out}' ({list(exported.classes.names)}): the "
                    "train annotations changed. Resume with the original data or start a new run."
                )
            return exported.build_network().train(), exported.model_name
        source = str(self.config.checkpoint or self.config.model)
        initial = build_initial_model(
            source, classes, self.config.model_args, self.config.transform_args.image_size
        )
        return initial.network.train(), initial.model_name

    def _train_loader(self, dataset: Any, samples_seen: int) -> DataLoader[Any]:
        fabric, plan = self.fabric, self.plan
        sampler = StreamBatchSampler(
            len(dataset),
            plan.micro_batch_size,
            rank=fabric.global_rank,
            world_size=fabric.world_size,
            seed=self.config.seed,
            start_position=samples_seen,
        )
        return DataLoader(
            PositionSeededDataset(dataset, self.config.seed),
            batch_sampler=sampler,
            collate_fn=collate_positioned,
            **self._loader_options(),
        )

    def _val_loader(self, dataset: Any) -> DataLoader[Any]:
        fabric = self.fabric
        # A strided shard per rank, without the padding DistributedSampler adds (it would count
        # some images twice in PQ).
        shard = Subset(dataset, range(fabric.global_rank, len(dataset), fabric.world_size))
        return DataLoader(
            shard,
            batch_size=self.plan.micro_batch_size,
            shuffle=False,
            collate_fn=collate_val,
            **self._loader_options(),
        )

    def _loader_options(self) -> dict[str, Any]:
        args = self.config.loader_args
        workers = self.plan.num_workers
        pin = self.fabric.device.type == "cuda" if args.pin_memory == "auto" else args.pin_memory
        options: dict[str, Any] = {
            "num_workers": workers,
            "pin_memory": pin,
            "timeout": args.timeout,
            # Each new iterator draws its workers' base seed from this generator; from the global
            # one it would shift the training RNG stream whenever a loader starts (resume).
            "generator": torch.Generator().manual_seed(self.config.seed),
        }
        if workers > 0:
            options["persistent_workers"] = args.persistent_workers
            if args.prefetch_factor is not None:
                options["prefetch_factor"] = args.prefetch_factor
        return options

    def _root(self) -> torch.nn.Module:
        """The module as the strategy wrapped it (DDP/FSDP/compiled): what the distributed
        state-dict helpers need to gather full, unsharded weights and optimiser states."""
        return self.model._forward_module

    def _resolved_config(self) -> dict[str, Any]:
        return {
            "arguments": self.config.model_dump(mode="json"),
            "resolved": {**asdict(self.plan), "model_name": self.model_name},
            "classes": self.classes.to_list(),
        }

    def _announce(self, num_train: int, num_val: int, state: ckpt.TrainState) -> None:
        config, plan = self.config, self.plan
        what = f"Resuming at step {state.step}" if state.step else "Training"
        self.log.info(
            f"{what} {self.model_name} for {config.steps} steps on {num_train} train / {num_val} "
            f"val images, {self.classes.num_classes} classes; global batch {config.batch_size} = "
            f"{plan.world_size} device(s) x {plan.micro_batch_size} x "
            f"{plan.gradient_accumulation_steps} accumulation; {self.fabric.device.type}, "
            f"precision {plan.precision}, lr {plan.lr:.3g}. Output: {config.out}"
        )

    # ------------------------------------------------------------------ loop

    def _train(
        self,
        state: ckpt.TrainState,
        train_loader: DataLoader[Any],
        val_loader: DataLoader[Any],
        loggers: Loggers,
    ) -> None:
        config, plan, fabric = self.config, self.plan, self.fabric
        batches = iter(train_loader)
        progress = ProgressBar(config.steps, state.step, enabled=fabric.is_global_zero)
        interval_loss, interval_steps, interval_seconds = 0.0, 0, 0.0
        interval_terms: dict[str, float] = {}
        save_every = config.save_checkpoint_args.save_every_num_steps
        try:
            while state.step < config.steps:
                started = time.perf_counter()
                try:
                    loss, terms = self._step(state.step, batches)
                except Exception as error:
                    if _is_oom(error):
                        raise _oom_error(config, plan, error) from error
                    raise
                if not math.isfinite(loss):
                    self._diverged(state, loss)
                state.step += 1
                state.samples_seen += config.batch_size
                head_lr = self._head_lr()
                progress.update(loss, head_lr, config.batch_size)
                interval_loss += loss
                interval_steps += 1
                interval_seconds += time.perf_counter() - started
                for name, value in terms.items():
                    interval_terms[name] = interval_terms.get(name, 0.0) + value
                last = state.step == config.steps
                if state.step % plan.log_every_num_steps == 0 or last:
                    metrics = {
                        "train_loss": interval_loss / interval_steps,
                        **{f"train/{k}": v / interval_steps for k, v in interval_terms.items()},
                        "lr": head_lr,
                        "lr_backbone": self._backbone_lr(),
                        "images_per_second": interval_steps
                        * config.batch_size
                        / max(interval_seconds, 1e-9),
                    }
                    loggers.log_metrics(metrics, state.step)
                    interval_loss, interval_steps, interval_seconds = 0.0, 0, 0.0
                    interval_terms = {}
                if state.step % plan.val_every_num_steps == 0 or last:
                    self._validate(state, val_loader, loggers)
                    progress.pause()
                if state.step % save_every == 0 or last:
                    self._save(state)
                    progress.pause()
        finally:
            progress.close()
        self._report_outputs(state)

    def _step(self, step: int, batches: Any) -> tuple[float, dict[str, float]]:
        """One optimiser step; returns the loss (averaged over ranks), the final prediction's
        loss terms and the gradient norm before clipping (`grad_norm`)."""
        fabric, plan = self.fabric, self.plan
        apply_learning_rates(self.optimizer, self.schedule, step)
        set_attn_mask_probs(
            self.network.attn_mask_probs,
            step,
            plan.annealing_windows,
            self.config.model_args.poly_power,
        )
        accumulation = plan.gradient_accumulation_steps
        total = torch.zeros((), device=fabric.device)
        terms: dict[str, Tensor] = {}
        for micro in range(accumulation):
            batch = next(batches)
            seed_micro_batch(self.config.seed, step, micro)
            images = batch["images"].to(fabric.device, non_blocking=True)
            targets = [
                {key: value.to(fabric.device, non_blocking=True) for key, value in t.items()}
                for t in batch["targets"]
            ]
            sync_skipped = micro < accumulation - 1 and fabric.world_size > 1
            with fabric.no_backward_sync(self.model, enabled=sync_skipped):
                output = self.model(images)
                loss = self.criterion(
                    output.class_logits,
                    output.mask_logits,
                    targets,
                    first_joint_block=self.network.first_joint_block,
                    generators=loss_generators(self.config.seed, batch["positions"], fabric.device),
                    all_reduce_sum=lambda counts: fabric.all_reduce(counts, reduce_op="sum"),
                    world_size=fabric.world_size,
                )
                fabric.backward(loss.total / accumulation)
            total += loss.total.detach() / accumulation
            for name in ("loss_class", "loss_mask", "loss_dice"):
                terms[name] = terms.get(name, 0.0) + loss.terms[name] / accumulation
        total = fabric.all_reduce(total, reduce_op="mean")
        loss_value = float(total)
        if math.isfinite(loss_value):
            # Clipping at infinity only measures: the pre-clip norm is logged either way, over
            # all shards (FSDP) since Fabric's clipping computes it.
            clip = self.config.model_args.gradient_clip_val
            norm = fabric.clip_gradients(
                self.model, self.optimizer, max_norm=math.inf if clip is None else clip
            )
            terms["grad_norm"] = norm.detach()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, {name: float(value) for name, value in terms.items()}

    def _head_lr(self) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if not g["is_backbone"])

    def _backbone_lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups if g["is_backbone"])

    # ------------------------------------------------------------------ validation and files

    def _validate(
        self, state: ckpt.TrainState, val_loader: DataLoader[Any], loggers: Loggers
    ) -> None:
        fabric = self.fabric
        most_batches = fabric.all_reduce(
            torch.tensor(len(val_loader), device=fabric.device), reduce_op="max"
        )
        results = evaluate_network(
            self.model,
            val_loader,
            self.classes,
            input_size=self.config.transform_args.val_image_size,
            postprocess=self.postprocess,
            device=fabric.device,
            all_reduce_sum=lambda stats: fabric.all_reduce(stats, reduce_op="sum"),
            forward_passes=int(most_batches),
        )
        metrics = metrics_to_log(results, self.config.metric_args.classwise)
        loggers.log_metrics(metrics, state.step)
        self.log.info(f"Validation at step {state.step}:\n{format_summary(results)}")
        value = metrics[self.config.metric_args.watch_metric]
        if state.improves(value):
            state.best_metric, state.best_step = value, state.step
            if self.config.save_checkpoint_args.save_best:
                exported = self._exported(self._network_state())
                if fabric.is_global_zero:
                    exported.save(self.paths.exported_best)
        fabric.barrier()

    def _network_state(self) -> dict[str, Tensor]:
        return ckpt.network_state(self._root())

    def _exported(self, state_dict: dict[str, Tensor]) -> ExportedModel:
        transforms = self.config.transform_args
        return ExportedModel(
            model_name=self.model_name,
            config=self.network.config,
            state_dict=state_dict,
            classes=self.classes,
            image_size=tuple(transforms.val_image_size),
            mean=tuple(transforms.val_normalize.mean),
            std=tuple(transforms.val_normalize.std),
            postprocess=self.postprocess,
        )

    def _save(self, state: ckpt.TrainState) -> None:
        """last.ckpt (always) and exported_last.pt (unless save_last is off); collective call."""
        fabric = self.fabric
        exported = self._exported(self._network_state())
        optimizer = ckpt.optimizer_state(self._root(), self.optimizer.optimizer)
        if fabric.is_global_zero:
            ckpt.save_checkpoint(
                self.paths.checkpoint,
                model=exported.to_dict(),
                optimizer=optimizer,
                state=state,
                arguments=self.arguments,
            )
            if self.config.save_checkpoint_args.save_last:
                exported.save(self.paths.exported_last)
        fabric.barrier()

    def _diverged(self, state: ckpt.TrainState, loss: float) -> None:
        """Save the last good state (the weights before this step) and stop."""
        saved = ""
        if self._weights_finite():
            self._save(state)
            saved = (
                f" The state before this step was saved to '{self.paths.checkpoint}'"
                + (
                    f" and '{self.paths.exported_last}'"
                    if self.config.save_checkpoint_args.save_last
                    else ""
                )
                + "."
            )
        raise TrainingDivergedError(
            f"Training stopped at step {state.step + 1}: the loss is {loss} (learning rate "
            f"{self._head_lr():.3g} for the heads, {self._backbone_lr():.3g} for the backbone)."
            f"{saved} Try a lower model_args['lr'], keep gradient clipping on "
            "(model_args['gradient_clip_val']), prefer precision 'bf16-mixed' or '32-true' over "
            "'16-mixed', and check the data with `panoptic-train check-data`."
        )

    def _weights_finite(self) -> bool:
        """Whether every weight is finite, on every rank (FSDP holds a shard of each)."""
        local = [p.to_local() if isinstance(p, DTensor) else p for p in self.network.parameters()]
        non_finite = torch.tensor(
            sum(int(not torch.isfinite(p).all()) for p in local), device=self.fabric.device
        )
        return int(self.fabric.all_reduce(non_finite, reduce_op="sum")) == 0

    def _report_outputs(self, state: ckpt.TrainState) -> None:
        paths = self.paths
        lines = [f"Training finished at step {state.step}."]
        if state.best_metric is not None:
            lines.append(
                f"Best {self.config.metric_args.watch_metric} = {100 * state.best_metric:.2f} at "
                f"step {state.best_step}."
            )
        for label, path in (
            ("best model", paths.exported_best),
            ("last model", paths.exported_last),
            ("checkpoint", paths.checkpoint),
            ("config", paths.config),
            ("logs", paths.logs),
        ):
            if path.exists():
                lines.append(f"  {label:11s} {path}")
        self.log.info("\n".join(lines))
