"""`train_panoptic_segmentation`: the public training entry point.

Validates every argument once (typed configs; an unknown key or a bad value is a ConfigError
naming it), decides what happens to `out` (new run, overwrite or exact resume) and hands over to
the Fabric loop (`train.loop.Trainer`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

from panoptic_train._io import ensure_output_dir
from panoptic_train._types import PathLike, TrainPrecision
from panoptic_train._validate import parse_config
from panoptic_train.data.config import load_data_args
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.errors import ConfigError
from panoptic_train.models import registry
from panoptic_train.train import checkpoints as ckpt
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.loggers import check_dependencies
from panoptic_train.train.plan import ModelDefaults, apply_model_defaults

_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK")


def train_panoptic_segmentation(
    *,
    out: PathLike,
    data: dict[str, Any] | PathLike,
    model: PathLike,
    steps: int | Literal["auto"] = "auto",
    batch_size: int | Literal["auto"] = "auto",
    num_workers: int | Literal["auto"] = "auto",
    devices: int | str | list[int] = "auto",
    num_nodes: int = 1,
    resume_interrupted: bool = False,
    checkpoint: PathLike | None = None,
    overwrite: bool = False,
    accelerator: str = "auto",
    strategy: str = "auto",
    precision: TrainPrecision = "bf16-mixed",
    float32_matmul_precision: str = "auto",
    seed: int = 0,
    logger_args: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    transform_args: dict[str, Any] | None = None,
    metric_args: dict[str, Any] | None = None,
    loader_args: dict[str, Any] | None = None,
    save_checkpoint_args: dict[str, Any] | None = None,
    torch_compile_args: dict[str, Any] | None = None,
    gradient_accumulation_steps: int | Literal["auto"] = "auto",
) -> None:
    """Train an EoMT panoptic segmentation model on a COCO panoptic dataset.

    Writes `out/checkpoints/last.ckpt`, `out/exported_models/exported_best.pt` (best validation
    PQ) and `exported_last.pt`, TensorBoard logs under `out/logs`, `out/config.json` and
    `out/train.log`. See the README's training section for every argument; the essentials:

    out: output folder; must be empty unless `overwrite=True` (removes this tool's files there)
        or `resume_interrupted=True` (continues the interrupted run in it exactly). A folder
        holding only the train.log of an attempt that stopped before training counts as empty;
        temporary files of writes killed mid-file are removed. OutputError (exit code 3) when
        it cannot be written.
    data: {"train": {"images", "masks", "annotations"}, "val": {...}, "ignore_classes": [...],
        "allow_unlabeled": False} or the path of a YAML/JSON file holding that.
    transform_args: without `image_size`, training runs at the model's own input size (1280 for
        `dinov3/vitl16-eomt-panoptic-coco-1280`, the stored size for a model file, else 640).
    model: a name from `panoptic_train.list_models()`, or an `exported_*.pt` / `.ckpt` file to
        fine-tune (other classes re-initialise the class head, with a warning).
    steps: optimiser steps ("auto": the published COCO length for the model's backbone: 360 000
        for ViT-T/T+, 180 000 for S/S+/B, 90 000 for L and larger). batch_size: global batch
        over all devices and accumulation steps ("auto": 16). gradient_accumulation_steps
        ("auto": 1) splits each device's share into that many micro-batches: same result, less
        memory.
    precision: "bf16-mixed" (falls back to "32-true" on CPU, "16-mixed" on GPUs without bf16),
        "16-mixed", "32-true", ...
    checkpoint: a `.ckpt` / `exported_*.pt` whose weights and architecture initialise the network
        (takes precedence over the weights `model` would load).
    """
    if resume_interrupted and overwrite:
        raise ConfigError(
            "resume_interrupted=True and overwrite=True contradict each other: resuming continues "
            "the run in `out`, overwriting deletes it. Pass only one of them."
        )
    config = _validated(
        out=out,
        data=load_data_args(data),
        model=model,
        checkpoint=checkpoint,
        steps=steps,
        batch_size=16 if batch_size == "auto" else batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_workers=num_workers,
        devices=devices,
        num_nodes=num_nodes,
        accelerator=accelerator,
        strategy=strategy,
        precision=precision,
        float32_matmul_precision=float32_matmul_precision,
        seed=seed,
        resume_interrupted=resume_interrupted,
        overwrite=overwrite,
        logger_args=_or_empty(logger_args),
        model_args=_or_empty(model_args),
        transform_args=transform_args,
        metric_args=_or_empty(metric_args),
        loader_args=_or_empty(loader_args),
        save_checkpoint_args=_or_empty(save_checkpoint_args),
        torch_compile_args=_or_empty(torch_compile_args),
    )
    check_dependencies(config.logger_args)
    paths = ckpt.RunPaths(config.out)
    resume_from = None
    if resume_interrupted:
        if not paths.checkpoint.is_file():
            raise ConfigError(
                f"resume_interrupted=True but there is no checkpoint to resume at "
                f"'{paths.checkpoint}'. Check `out`, or start a new run without "
                "resume_interrupted."
            )
        if _launch_rank() == 0:
            ensure_output_dir(paths.out)
            paths.remove_stale_temp_files()
        resume_from = ckpt.load_checkpoint(paths.checkpoint)
    elif _launch_rank() == 0:
        _prepare_out(paths, overwrite)

    from panoptic_train.train.loop import Trainer

    Trainer(config, resume_from).fit()


def _or_empty(value: dict[str, Any] | None) -> dict[str, Any]:
    """None -> {} so that every dict argument is validated (defaults included) the same way."""
    return {} if value is None else value


def _validated(**arguments: Any) -> TrainConfig:
    arguments["out"] = Path(arguments["out"]).expanduser().resolve()
    model = arguments["model"]
    if not isinstance(model, str | os.PathLike):
        raise ConfigError(f"model must be a model name or a file path, got {model!r}.")
    model_path = Path(model).expanduser()
    if model_path.is_file():
        arguments["model"] = str(model_path.resolve())
    elif not registry.is_model_name(str(model)):
        raise ConfigError(
            f"model={str(model)!r} is neither a model name nor an existing file. Use one of "
            f"{', '.join(registry.list_models())}; or the path of an exported_*.pt / .ckpt file "
            "to fine-tune."
        )
    defaults = model_defaults(arguments["model"])
    arguments["steps"], arguments["transform_args"] = apply_model_defaults(
        arguments["steps"], load_transform_args(arguments["transform_args"]), defaults
    )
    if arguments["checkpoint"] is not None:
        checkpoint = Path(arguments["checkpoint"]).expanduser()
        if not checkpoint.is_file():
            raise ConfigError(
                f"checkpoint='{checkpoint}' does not exist. Pass an exported_*.pt or .ckpt file, "
                "or leave checkpoint=None."
            )
        arguments["checkpoint"] = checkpoint.resolve()
    return parse_config(TrainConfig, arguments, "")


def model_defaults(model: str) -> ModelDefaults:
    """`steps="auto"` and the training size when `transform_args` has none: the registry's
    values for the model name (for a model file: for the name it was trained from)."""
    if registry.is_model_name(model):
        info = registry.get_model_info(model)
        return ModelDefaults(info.default_steps, info.image_size)
    from panoptic_train.runtime.model_file import checked_image_size, read_model_dict

    stored = read_model_dict(model)
    name = stored.get("model_name")
    steps = (
        registry.get_model_info(name).default_steps
        if isinstance(name, str) and registry.is_model_name(name)
        else registry.get_model_info("dinov3/vitl16-eomt").default_steps
    )
    return ModelDefaults(steps, checked_image_size(stored["image_size"]))


def _launch_rank() -> int:
    """The global rank from the launcher's environment (torchrun, SLURM, Fabric's subprocesses);
    0 in a plain process. Only rank 0 prepares `out`."""
    for variable in _RANK_VARIABLES:
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


def _prepare_out(paths: ckpt.RunPaths, overwrite: bool) -> None:
    out = ensure_output_dir(paths.out)
    paths.remove_stale_temp_files()
    # An attempt that stopped before writing anything but its log (at the data check, say)
    # left no run to protect: its log is replaced.
    entries = sorted(entry for entry in out.iterdir() if entry != paths.log_file)
    if entries and not overwrite:
        listing = ", ".join(entry.name for entry in entries[:5]) + (
            ", ..." if len(entries) > 5 else ""
        )
        raise ConfigError(
            f"The output folder '{out}' is not empty ({listing}). Pass overwrite=True to replace "
            "a previous run there, resume_interrupted=True to continue it, or choose another out."
        )
    for path in paths.owned():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
