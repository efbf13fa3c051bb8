"""The `data` argument: typed, validated once at the entry, from a dict or a YAML/JSON file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from panoptic_train._types import PathLike
from panoptic_train._validate import StrictConfig, parse_config, read_config_file
from panoptic_train.errors import DataError


class SplitArgs(StrictConfig):
    """One split of a COCO panoptic dataset: its image folder, mask folder and JSON file."""

    images: Path
    masks: Path
    annotations: Path


class DataArgs(StrictConfig):
    """The `data` argument: train and val splits; `ignore_classes` are category ids made void;
    `allow_unlabeled` turns images without annotation into all-void negatives (else an error)."""

    train: SplitArgs
    val: SplitArgs
    ignore_classes: tuple[int, ...] = ()
    allow_unlabeled: bool = False


def load_data_args(data: DataArgs | dict[str, Any] | PathLike) -> DataArgs:
    """Validate the `data` argument, given as a dict or as a path to a YAML/JSON file.

    Relative paths inside a file are taken relative to that file's folder, so a dataset folder
    with its own `data.yaml` works from any working directory. Raises ConfigError for unknown or
    missing keys and DataError for paths that do not exist.
    """
    base, source = Path(), None
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        data = read_config_file(
            path,
            "data file",
            "Pass the 'data' argument as a dict or as the path of a YAML/JSON file with 'train' "
            "and 'val' entries.",
        )
        base, source = path.parent, f"data file '{path}'"
    args = parse_config(DataArgs, data, "data", source)
    resolved = {
        split: SplitArgs(
            images=base / getattr(args, split).images,
            masks=base / getattr(args, split).masks,
            annotations=base / getattr(args, split).annotations,
        )
        for split in ("train", "val")
    }
    missing = [
        f"data['{split}']['{key}']='{getattr(split_args, key)}'"
        for split, split_args in resolved.items()
        for key in ("images", "masks", "annotations")
        if not getattr(split_args, key).exists()
    ]
    if missing:
        raise DataError(
            "These dataset paths do not exist:\n  "
            + "\n  ".join(missing)
            + "\nFix the paths in the 'data' argument (relative paths are taken from "
            + ("the data file's folder)." if base != Path() else "the working directory).")
        )
    return args.model_copy(update=resolved)
