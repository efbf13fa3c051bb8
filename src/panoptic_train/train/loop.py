"""The training loop on Lightning Fabric: devices, precision, DDP/FSDP, gradient accumulation.

One optimiser step = `gradient_accumulation_steps` micro-batches per rank, together exactly the
global `batch_size` images. Per step: set the learning rates and the masked-attention
probabilities for the step, forward + loss + backward per micro-batch, check the loss, clip the
gradient norm, update. Every `val_every_num_steps` and at the last step the network is validated
(PQ); every `save_every_num_steps` and at the end `checkpoints/last.ckpt` and the exported models
are written. Resuming restores weights, optimiser, step, data position and best PQ.

What the run does is decided up front by `train.plan`; everything the loop works with is built
in one place (`Trainer._setup`) into one `TrainState`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from panoptic_train._host_memory import tune_for_tensors
from panoptic_train._io import atomic_write_json
from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.dataset import build_datasets
from panoptic_train.errors import PanopticTrainError
from panoptic_train.evaluation.report import format_summary
from panoptic_train.models.eomt import EoMT
from panoptic_train.runtime.model_file import ExportedModel
from panoptic_train.runtime.postprocess import PostprocessConfig
from panoptic_train.train import checkpoints as ckpt
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.data_order import loss_generators, seed_micro_batch
from panoptic_train.train.loaders import build_train_loader, build_val_loader
from panoptic_train.train.loggers import Loggers, build_loggers
from panoptic_train.train.loss import MaskClassificationLoss
from panoptic_train.train.model_init import build_initial_model
from panoptic_train.train.optim import (
    TwoStageWarmupPoly,
    apply_learning_rates,
    build_optimizer,
    set_attn_mask_probs,
)
from panoptic_train.train.plan import (
    Machine,
    RunPlan,
    check_resume_arguments,
    check_resume_classes,
    matmul_precision,
    plan_run,
    resolve_num_workers,
    training_arguments,
)
from panoptic_train.train.progress import LOGGER_NAME, MeanWindow, ProgressBar, run_logging
from panoptic_train.train.strategy import build_fabric
from panoptic_train.train.validate import evaluate_network, metrics_to_log

if TYPE_CHECKING:
    from lightning_fabric.wrappers import _FabricModule, _FabricOptimizer

_log = logging.getLogger(LOGGER_NAME)


class TrainingDivergedError(PanopticTrainError, FloatingPointError):
    """The loss became NaN or infinite; the message says when and what to change."""


@dataclass(frozen=True)
class TrainState:
    """Everything a run trains with, built once by `Trainer._setup`. What changes from step to
    step is the weights, the optimiser state and the counters in `progress`."""

    plan: RunPlan
    model: _FabricModule  # the network as Fabric set it up for the strategy (and torch.compile)
    optimizer: _FabricOptimizer
    schedule: TwoStageWarmupPoly
    criterion: MaskClassificationLoss
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    loggers: Loggers
    progress: ckpt.Progress
    classes: ClassMapping
    model_name: str
    postprocess: PostprocessConfig
    arguments: dict[str, Any]  # the training arguments a resume must repeat

    @property
    def network(self) -> EoMT:
        """The EoMT inside Fabric's wrapper (sharded in place under FSDP): its attributes, and
        the module the distributed state-dict helpers read full weights from."""
        return cast(EoMT, self.model.module)


class Trainer:
    """One training run; `fit()` is the whole of it. Built by `train.api` after validation."""

    def __init__(self, config: TrainConfig, checkpoint: Mapping[str, Any] | None) -> None:
        self.config = config
        self.resume_from = checkpoint
        self.paths = ckpt.RunPaths(config.out)
        self.machine = Machine.detect(config.accelerator)
        self.fabric = build_fabric(config, self.machine)

    def fit(self) -> None:
        fabric = self.fabric
        joins_a_job = not _in_process_group()
        fabric.launch()
        if fabric.device.type == "cpu":
            tune_for_tensors()
        rank_zero = fabric.is_global_zero
        with run_logging(self.paths.log_file if rank_zero else None, console=rank_zero):
            state = self._setup()
            try:
                self._train(state)
            finally:
                best = self.paths.exported_best
                state.loggers.finish(best if best.is_file() else self.paths.exported_last)
        if joins_a_job and _in_process_group():
            # The process group Fabric set up goes with the run, gloo's or NCCL's threads with
            # it, not at interpreter exit (see `_distributed.process_group`). After a failure
            # the process ends instead: a peer may still be in a collective.
            fabric.barrier()
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------------ setup

    def _setup(self) -> TrainState:
        """Data, network, plan, optimiser, loaders and loggers, in the order that fixes the
        random draws of initialisation; writes `config.json`."""
        config, fabric, paths = self.config, self.fabric, self.paths
        precision = matmul_precision(config.float32_matmul_precision, fabric.device.type)
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        fabric.seed_everything(config.seed, verbose=False)
        datasets = build_datasets(
            config.data,
            config.transform_args,
            num_workers=resolve_num_workers(config, fabric.world_size, self.machine.cpus),
        )
        classes = datasets.classes
        network, model_name = self._initial_network(classes)
        plan = plan_run(config, fabric.world_size, network.config.num_joint_blocks, self.machine)
        arguments = training_arguments(config, plan)
        progress = ckpt.Progress()
        if self.resume_from is not None:
            check_resume_arguments(self.resume_from["arguments"], arguments, config.out)
            progress = ckpt.Progress.of(self.resume_from)
        model, optimizer = self._setup_model_and_optimizer(network, plan)
        args = config.model_args
        criterion = MaskClassificationLoss(
            num_classes=classes.num_classes,
            num_points=args.loss_num_points,
            oversample_ratio=args.loss_oversample_ratio,
            importance_sample_ratio=args.loss_importance_sample_ratio,
            class_weight=args.loss_class_coefficient,
            mask_weight=args.loss_mask_coefficient,
            dice_weight=args.loss_dice_coefficient,
            no_object_weight=args.loss_no_object_coefficient,
            sample_ignored_pixels=args.loss_ignored_pixels == "negative",
        )
        train_loader = build_train_loader(
            datasets.train, config, plan, fabric, progress.samples_seen
        )
        val_loader = build_val_loader(datasets.val, config, plan, fabric)
        resolved = {
            "arguments": config.model_dump(mode="json"),
            "resolved": {**plan.resolved(), "model_name": model_name},
            "classes": classes.to_list(),
        }
        if fabric.is_global_zero:
            atomic_write_json(resolved, paths.config)
        state = TrainState(
            plan=plan,
            model=model,
            optimizer=optimizer,
            schedule=TwoStageWarmupPoly(config.steps, plan.warmup_steps, args.poly_power),
            criterion=criterion,
            train_loader=train_loader,
            val_loader=val_loader,
            loggers=build_loggers(
                config.logger_args,
                paths.logs,
                resolved,
                start_step=progress.step,
                is_rank_zero=fabric.is_global_zero,
            ),
            progress=progress,
            classes=classes,
            model_name=model_name,
            postprocess=PostprocessConfig(
                threshold=args.threshold,
                mask_threshold=args.mask_threshold,
                overlap_threshold=args.mask_overlap_threshold,
            ),
            arguments=arguments,
        )
        self._announce(state, len(datasets.train), len(datasets.val))
        return state

    def _initial_network(self, classes: ClassMapping) -> tuple[EoMT, str]:
        """Resume: the checkpoint's architecture (its weights are loaded after setup). New run:
        the `model` (or `checkpoint`) source, for these classes."""
        if self.resume_from is not None:
            exported = ExportedModel.from_dict(
                self.resume_from[ckpt.CHECKPOINT_MODEL_KEY], source=f"'{self.paths.checkpoint}'"
            )
            check_resume_classes(exported.classes, classes, self.config.out)
            return exported.build_network().train(), exported.model_name
        source = str(self.config.checkpoint or self.config.model)
        initial = build_initial_model(
            source, classes, self.config.model_args, self.config.transform_args.image_size
        )
        return initial.network.train(), initial.model_name

    def _setup_model_and_optimizer(
        self, network: EoMT, plan: RunPlan
    ) -> tuple[_FabricModule, _FabricOptimizer]:
        """Wrap the network for the strategy (and torch.compile), build the optimiser over its
        parameter groups and, when resuming, restore weights and optimiser."""
        config, fabric = self.config, self.fabric
        if config.torch_compile_args.disable:
            forward_module: torch.nn.Module = network
        else:
            compile_args = config.torch_compile_args.model_dump(exclude={"disable"})
            forward_module = cast(torch.nn.Module, torch.compile(network, **compile_args))
        # The depthwise convolutions' (C, 1, 3, 3) weight gradients come out channels-last, the
        # same memory as DDP's contiguous bucket views, but DDP warns about the strides.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = fabric.setup_module(forward_module)
        args = config.model_args
        optimizer = cast(
            "_FabricOptimizer",
            fabric.setup_optimizers(
                build_optimizer(
                    network,
                    lr=plan.lr,
                    llrd=args.llrd,
                    llrd_joint_blocks=args.llrd_joint_blocks,
                    weight_decay=args.weight_decay,
                    eps=args.optimizer_eps,
                )
            ),
        )
        if self.resume_from is not None:
            ckpt.load_training_state(
                network,
                optimizer.optimizer,
                self.resume_from[ckpt.CHECKPOINT_MODEL_KEY]["state_dict"],
                self.resume_from["optimizer"],
            )
        return model, optimizer

    def _announce(self, state: TrainState, num_train: int, num_val: int) -> None:
        config, plan = self.config, state.plan
        step = state.progress.step
        what = f"Resuming at step {step}" if step else "Training"
        _log.info(
            f"{what} {state.model_name} for {config.steps} steps on {num_train} train / "
            f"{num_val} val images, {state.classes.num_classes} classes; global batch "
            f"{config.batch_size} = {plan.world_size} device(s) x {plan.micro_batch_size} x "
            f"{plan.gradient_accumulation_steps} accumulation; {self.fabric.device.type}, "
            f"precision {plan.precision}, lr {plan.lr:.3g}. Output: {config.out}"
        )

    # ------------------------------------------------------------------ loop

    def _train(self, state: TrainState) -> None:
        config, plan, progress = self.config, state.plan, state.progress
        batches = iter(state.train_loader)
        bar = ProgressBar(config.steps, progress.step, enabled=self.fabric.is_global_zero)
        window = MeanWindow()
        try:
            while progress.step < config.steps:
                started = time.perf_counter()
                try:
                    loss, terms = self._step(state, batches)
                except Exception as error:
                    if _is_oom(error):
                        raise _oom_error(config, plan, error) from error
                    raise
                if not math.isfinite(loss):
                    self._diverged(state, loss)
                progress.advance(config.batch_size)
                head_lr = _head_lr(state.optimizer.optimizer)
                bar.update(loss, head_lr, config.batch_size)
                window.add(loss, terms, time.perf_counter() - started)
                if plan.log_every.due(progress.step):
                    means = window.take(config.batch_size)
                    metrics = {
                        "train_loss": means.loss,
                        **{f"train/{name}": value for name, value in means.terms.items()},
                        "lr": head_lr,
                        "lr_backbone": _backbone_lr(state.optimizer.optimizer),
                        "images_per_second": means.images_per_second,
                    }
                    state.loggers.log_metrics(metrics, progress.step)
                if plan.val_every.due(progress.step):
                    self._validate(state)
                    bar.pause()
                if plan.save_every.due(progress.step):
                    self._save(state)
                    bar.pause()
        finally:
            bar.close()
        self._report_outputs(state)

    def _step(
        self, state: TrainState, batches: Iterator[dict[str, Any]]
    ) -> tuple[float, dict[str, float]]:
        """One optimiser step; returns the loss (averaged over ranks), the final prediction's
        loss terms and the gradient norm before clipping (`grad_norm`)."""
        config, fabric, plan = self.config, self.fabric, state.plan
        step, model, optimizer = state.progress.step, state.model, state.optimizer
        apply_learning_rates(optimizer.optimizer, state.schedule, step)
        set_attn_mask_probs(
            state.network.attn_mask_probs,
            step,
            plan.annealing_windows,
            config.model_args.poly_power,
        )
        accumulation = plan.gradient_accumulation_steps
        total = torch.zeros((), device=fabric.device)
        terms: dict[str, Tensor] = {}
        for micro in range(accumulation):
            batch = next(batches)
            seed_micro_batch(config.seed, step, micro)
            images = batch["images"].to(fabric.device, non_blocking=True)
            targets = [
                {key: value.to(fabric.device, non_blocking=True) for key, value in t.items()}
                for t in batch["targets"]
            ]
            sync_skipped = micro < accumulation - 1 and fabric.world_size > 1
            with fabric.no_backward_sync(model, enabled=sync_skipped):
                output = model(images)
                loss = state.criterion(
                    output.class_logits,
                    output.mask_projections,
                    targets,
                    first_joint_block=state.network.first_joint_block,
                    generators=loss_generators(config.seed, batch["positions"], fabric.device),
                    all_reduce_sum=self._all_reduce,
                    world_size=fabric.world_size,
                )
                fabric.backward(loss.total / accumulation)
            total += loss.total.detach() / accumulation
            for name in ("loss_class", "loss_mask", "loss_dice"):
                terms[name] = terms.get(name, 0.0) + loss.terms[name] / accumulation
        total = self._all_reduce(total, "mean")
        loss_value = float(total)
        if math.isfinite(loss_value):
            # Clipping at infinity only measures: the pre-clip norm is logged either way, over
            # all shards (FSDP) since Fabric's clipping computes it.
            clip = config.model_args.gradient_clip_val
            norm = fabric.clip_gradients(
                model, optimizer, max_norm=math.inf if clip is None else clip
            )
            terms["grad_norm"] = cast(Tensor, norm).detach()  # a norm, as max_norm is given
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value, {name: float(value) for name, value in terms.items()}

    # ------------------------------------------------------------------ validation and files

    def _validate(self, state: TrainState) -> None:
        config, fabric, progress = self.config, self.fabric, state.progress
        most_batches = self._all_reduce(
            torch.tensor(len(state.val_loader), device=fabric.device), "max"
        )
        results = evaluate_network(
            state.model,
            state.val_loader,
            state.classes,
            input_size=config.transform_args.val_image_size,
            postprocess=state.postprocess,
            device=fabric.device,
            all_reduce_sum=self._all_reduce,
            forward_passes=int(most_batches),
        )
        metrics = metrics_to_log(results, config.metric_args.classwise)
        state.loggers.log_metrics(metrics, progress.step)
        _log.info(f"Validation at step {progress.step}:\n{format_summary(results)}")
        value = metrics[config.metric_args.watch_metric]
        if progress.improves(value):
            progress.best_metric, progress.best_step = value, progress.step
            if config.save_checkpoint_args.save_best:
                exported = self._exported(state)
                if fabric.is_global_zero:
                    exported.save(self.paths.exported_best)
        fabric.barrier()

    def _exported(self, state: TrainState) -> ExportedModel:
        """The current weights as an exported model; a collective call (FSDP gathers them)."""
        transforms = self.config.transform_args
        return ExportedModel(
            model_name=state.model_name,
            config=state.network.config,
            state_dict=ckpt.network_state(state.network),
            classes=state.classes,
            image_size=transforms.val_image_size,
            mean=transforms.val_normalize.mean,
            std=transforms.val_normalize.std,
            postprocess=state.postprocess,
        )

    def _save(self, state: TrainState) -> None:
        """last.ckpt (always) and exported_last.pt (unless save_last is off); collective call."""
        exported = self._exported(state)
        optimizer = ckpt.optimizer_state(state.network, state.optimizer.optimizer)
        if self.fabric.is_global_zero:
            ckpt.save_checkpoint(
                self.paths.checkpoint,
                model=exported.to_dict(),
                optimizer=optimizer,
                progress=state.progress,
                arguments=state.arguments,
            )
            if self.config.save_checkpoint_args.save_last:
                exported.save(self.paths.exported_last)
        self.fabric.barrier()

    def _diverged(self, state: TrainState, loss: float) -> None:
        """Save the last good state (the weights before this step) and stop."""
        saved = ""
        if self._weights_finite(state):
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
            f"Training stopped at step {state.progress.step + 1}: the loss is {loss} (learning "
            f"rate {_head_lr(state.optimizer.optimizer):.3g} for the heads, "
            f"{_backbone_lr(state.optimizer.optimizer):.3g} for the backbone).{saved} Try a lower "
            "model_args['lr'], keep gradient clipping on (model_args['gradient_clip_val']), "
            "prefer precision 'bf16-mixed' or '32-true' over '16-mixed', and check the data "
            "with `panoptic-train check-data`."
        )

    def _weights_finite(self, state: TrainState) -> bool:
        """Whether every weight is finite, on every rank (FSDP holds a shard of each)."""
        local = [p.to_local() if isinstance(p, DTensor) else p for p in state.network.parameters()]
        non_finite = torch.tensor(
            sum(int(not torch.isfinite(p).all()) for p in local), device=self.fabric.device
        )
        return int(self._all_reduce(non_finite)) == 0

    def _all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """`fabric.all_reduce` of one tensor over the ranks (the tensor itself on one)."""
        return cast(Tensor, self.fabric.all_reduce(tensor, reduce_op=op))

    def _report_outputs(self, state: TrainState) -> None:
        paths, progress = self.paths, state.progress
        lines = [f"Training finished at step {progress.step}."]
        if progress.best_metric is not None:
            lines.append(
                f"Best {self.config.metric_args.watch_metric} = {100 * progress.best_metric:.2f} "
                f"at step {progress.best_step}."
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
        _log.info("\n".join(lines))


def _head_lr(optimizer: torch.optim.Optimizer) -> float:
    return next(g["lr"] for g in optimizer.param_groups if not g["is_backbone"])


def _backbone_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups if g["is_backbone"])


def _in_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError | MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


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
