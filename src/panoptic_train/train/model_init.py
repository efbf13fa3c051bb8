"""The network a training run starts from: a registry name, or a previous run's weights.

`model` is either a name from `list_models()` (DINOv3 backbone weights per
`model_args.backbone_weights`, or a COCO-fine-tuned network) or the path of an exported model
(`exported_*.pt`) or a training checkpoint (`.ckpt`) to fine-tune. When the dataset's classes
differ from the ones the weights were trained with, the class head starts afresh and a warning
names what changed; the same classes in another order only reorder the head's rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.errors import ConfigError, WeightsError
from panoptic_train.models import registry
from panoptic_train.models.eomt import EoMT
from panoptic_train.runtime.model_file import ExportedModel, read_model_dict
from panoptic_train.train.config import ModelArgs

_CLASS_HEAD = "class_head."


@dataclass(frozen=True)
class InitialModel:
    """The network to train and the registry name recorded in exported files."""

    network: EoMT
    model_name: str


def is_model_file(model: str) -> bool:
    """True when `model` names an existing file (fine-tuning) rather than a registry entry."""
    return not registry.is_model_name(model) and Path(model).expanduser().is_file()


def build_initial_model(
    model: str, classes: ClassMapping, model_args: ModelArgs, image_size: tuple[int, int]
) -> InitialModel:
    """Create the network for `classes` at the train `image_size` (see the module docstring)."""
    overrides: dict[str, Any] = {"image_size": tuple(image_size)}
    for name in ("num_queries", "num_joint_blocks"):
        value = getattr(model_args, name)
        if value != "auto":
            overrides[name] = value
    if is_model_file(model):
        initial = _from_file(Path(model).expanduser(), classes, overrides)
    else:
        network = registry.create_model(
            model, classes.num_classes, backbone_weights=model_args.backbone_weights, **overrides
        )
        source = registry.model_classes(model)
        if source is not None and model_args.backbone_weights is not None:
            _adapt_class_head(network, ClassMapping.from_list(source), classes, f"model {model!r}")
        initial = InitialModel(network=network, model_name=registry.get_model_info(model).name)
    initial.network.activation_checkpointing = model_args.activation_checkpointing
    return initial


def _from_file(path: Path, classes: ClassMapping, overrides: dict[str, Any]) -> InitialModel:
    exported = ExportedModel.from_dict(read_model_dict(path), source=f"'{path}'")
    for name in ("num_queries", "num_joint_blocks"):
        stored = getattr(exported.config, name)
        if name in overrides and overrides[name] != stored:
            raise ConfigError(
                f"model_args['{name}']={overrides[name]} differs from the {stored} "
                f"of the model in '{path}'. Fine-tuning keeps the architecture: leave "
                f"model_args['{name}'] unset (\"auto\"), or start from a model name instead."
            )
    config = replace(exported.config, num_classes=classes.num_classes, **overrides)
    network = registry.build_eomt(config)
    state = dict(exported.state_dict)
    head = {key: state.pop(key) for key in list(state) if key.startswith(_CLASS_HEAD)}
    result = network.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if not key.startswith(_CLASS_HEAD)]
    if missing or unexpected:
        raise WeightsError(
            f"The weights in '{path}' do not fit their own architecture (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); the file is damaged. Re-export it from its run."
        )
    _load_head(network, head, exported.classes, classes, f"'{path}'")
    return InitialModel(network=network, model_name=exported.model_name)


def _load_head(
    network: EoMT,
    head: dict[str, torch.Tensor],
    source: ClassMapping,
    target: ClassMapping,
    origin: str,
) -> None:
    """Copy a trained class head into `network`, reordered to `target`, if the classes agree."""
    order = _class_order(source, target)
    if order is None:
        _warn_new_head(source, target, origin)
        return
    rows = torch.tensor([*order, source.num_classes])  # the last row is "no object"
    with torch.no_grad():
        network.class_head.weight.copy_(head[_CLASS_HEAD + "weight"][rows])
        network.class_head.bias.copy_(head[_CLASS_HEAD + "bias"][rows])


def _adapt_class_head(
    network: EoMT, source: ClassMapping, target: ClassMapping, origin: str
) -> None:
    """For a network whose weights came with `source` classes: reorder or re-initialise."""
    head = {k: v.clone() for k, v in network.state_dict().items() if k.startswith(_CLASS_HEAD)}
    if head[_CLASS_HEAD + "weight"].shape[0] != source.num_classes + 1 or (
        _class_order(source, target) is None
    ):
        network.class_head.reset_parameters()
        _warn_new_head(source, target, origin)
        return
    _load_head(network, head, source, target, origin)


def _class_order(source: ClassMapping, target: ClassMapping) -> list[int] | None:
    """Row of `source` for each `target` class, or None unless both hold the same classes."""
    source_entries = {entry["id"]: entry for entry in source.to_list()}
    target_entries = {entry["id"]: entry for entry in target.to_list()}
    if source_entries != target_entries:
        return None
    position = {class_id: row for row, class_id in enumerate(source.class_ids)}
    return [position[class_id] for class_id in target.class_ids]


def _warn_new_head(source: ClassMapping, target: ClassMapping, origin: str) -> None:
    old = {entry["id"]: entry["name"] for entry in source.to_list()}
    new = {entry["id"]: entry["name"] for entry in target.to_list()}
    added = sorted(f"{i}:{n}" for i, n in new.items() if old.get(i) != n)
    removed = sorted(f"{i}:{n}" for i, n in old.items() if new.get(i) != n)
    warnings.warn(
        f"The dataset's {len(new)} classes differ from the {len(old)} classes of {origin} "
        f"(new: {_listing(added)}; no longer present: {_listing(removed)}). The class head is "
        "re-initialised; all other weights are kept.",
        UserWarning,
        stacklevel=3,
    )


def _listing(items: list[str], limit: int = 10) -> str:
    if not items:
        return "none"
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
