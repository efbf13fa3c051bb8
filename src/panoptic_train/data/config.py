"""The `data` argument: typed, validated once at the entry, from a dict or a YAML/JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from panoptic_train._types import PathLike
from panoptic_train.errors import ConfigError, DataError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of user-facing argument models: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_args(model: type[ModelT], value: Any, argument: str) -> ModelT:
    """Validate `value` into `model`; a bad key or value becomes a ConfigError naming it.

    `argument` is the name the user typed (e.g. "transform_args"), so the message points at
    `transform_args.scale_jitter.min_scale` rather than at a pydantic class name.
    """
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as error:
        lines = []
        for detail in error.errors():
            location = ".".join(str(part) for part in (argument, *detail["loc"]))
            if detail["type"] == "extra_forbidden":
                allowed = _allowed_keys(model, detail["loc"][:-1])
                lines.append(
                    f"{location}: unknown key {str(detail['loc'][-1])!r}; allowed keys: {allowed}"
                )
            else:
                lines.append(f"{location}: {detail['msg']} (got {detail.get('input')!r})")
        raise ConfigError(f"Invalid {argument}:\n  " + "\n  ".join(lines)) from None


def _allowed_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `path`, to tell the user what they could have meant."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return sorted(getattr(current, "model_fields", {}))


class SplitArgs(StrictModel):
    """One split of a COCO panoptic dataset, as in the spec's `data` argument."""

    images: Path
    masks: Path
    annotations: Path


class DataArgs(StrictModel):
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
    base = Path()
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        data = _read_config_file(path)
        base = path.parent
    args = parse_args(DataArgs, data, "data")
    resolved = {
        split: SplitArgs(
            images=base / getattr(args, split).images,
            masks=base / getattr(args, split).masks,
            annotations=base / getattr(args, split).annotations,
        )
        for split in ("train", "val")
    }
    missing = [
        f"data.{split}.{key} = '{getattr(split_args, key)}'"
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


def _read_config_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(
            f"The data file '{path}' does not exist. Pass the 'data' argument as a dict or as "
            "the path of a YAML/JSON file with 'train' and 'val' entries."
        )
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot parse the data file '{path}': {error}") from error
