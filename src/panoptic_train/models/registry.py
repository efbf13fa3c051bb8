"""Model names -> EoMT architectures, default image sizes and weight sources.

`create_model` is the one entry point that turns a name from the spec's model list into a network;
`build_eomt` rebuilds an architecture from a stored `EoMTConfig` (exported model files) with random
weights, which the caller then overwrites with its state dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from panoptic_train.errors import ConfigError

if TYPE_CHECKING:
    from panoptic_train.models.eomt import EoMT, EoMTConfig

# Joint blocks (L2) per backbone, as in the EoMT paper: 3 for T/S/B, 4 for L, 5 for H and 7B.
_JOINT_BLOCKS: dict[str, int] = {
    "vitt16": 3,
    "vitt16plus": 3,
    "vits16": 3,
    "vits16plus": 3,
    "vitb16": 3,
    "vitl16": 4,
    "vitl16plus": 4,
    "vith16plus": 5,
    "vit7b16": 5,
}

# Training steps of the published COCO protocol at batch 16 (7 393 steps an epoch): 48 epochs for
# the tiny backbones, 24 for S, S+ and B, 12 for L and larger.
_COCO_STEPS: dict[str, int] = {
    "vitt16": 360_000,
    "vitt16plus": 360_000,
    "vits16": 180_000,
    "vits16plus": 180_000,
    "vitb16": 180_000,
}
_COCO_STEPS_LARGE = 90_000

# Backbones with a COCO panoptic fine-tuned model in the spec's list.
_COCO_BACKBONES = ("vitt16", "vitt16plus", "vits16", "vitb16", "vitl16")

# Spellings accepted for convenience; the spec's benchmark table writes this one.
_ALIASES: dict[str, str] = {
    "dinov3/vittplus16-eomt-panoptic-coco": "dinov3/vitt16plus-eomt-panoptic-coco",
}

MODEL_ARGS = ("num_queries", "num_joint_blocks", "image_size")


@dataclass(frozen=True)
class ModelInfo:
    """What a model name stands for.

    Attributes:
        name: the public name, e.g. "dinov3/vits16-eomt-panoptic-coco".
        backbone: DINOv3 size (key of `dinov3.DINOV3_ARCHS`).
        image_size: default (height, width).
        num_joint_blocks: default L2.
        coco_panoptic: fine-tuned on COCO panoptic; its default weights cover the whole network
            and its classes are COCO's 133 panoptic categories.
    """

    name: str
    backbone: str
    image_size: tuple[int, int]
    num_joint_blocks: int
    coco_panoptic: bool

    @property
    def default_steps(self) -> int:
        """`steps="auto"`: the length of the published COCO protocol for this backbone size."""
        return _COCO_STEPS.get(self.backbone, _COCO_STEPS_LARGE)


def _build_registry() -> dict[str, ModelInfo]:
    models: dict[str, ModelInfo] = {}
    for backbone in _COCO_BACKBONES:
        name = f"dinov3/{backbone}-eomt-panoptic-coco"
        models[name] = ModelInfo(name, backbone, (640, 640), _JOINT_BLOCKS[backbone], True)
    name = "dinov3/vitl16-eomt-panoptic-coco-1280"
    models[name] = ModelInfo(name, "vitl16", (1280, 1280), _JOINT_BLOCKS["vitl16"], True)
    for backbone, joint_blocks in _JOINT_BLOCKS.items():
        name = f"dinov3/{backbone}-eomt"
        models[name] = ModelInfo(name, backbone, (640, 640), joint_blocks, False)
    return models


_MODELS = _build_registry()


def list_models() -> list[str]:
    """Names accepted by `create_model` and by `train_panoptic_segmentation(model=...)`."""
    return list(_MODELS)


def is_model_name(name: str) -> bool:
    """True for a registered name or alias (callers use it to tell names from file paths)."""
    return name in _MODELS or name in _ALIASES


def get_model_info(name: str) -> ModelInfo:
    """Resolve a model name (or alias) with an error that lists the valid names."""
    info = _MODELS.get(_ALIASES.get(name, name))
    if info is None:
        raise ConfigError(
            f"Unknown model {name!r}. Valid models: {', '.join(_MODELS)}; or pass the path of "
            "an exported model file (exported_*.pt)."
        )
    return info


def model_classes(name: str) -> list[dict[str, Any]] | None:
    """The class list a model was fine-tuned with ({"id", "name", "isthing"} per class, in class
    index order), or None for models that only have a pretrained backbone."""
    if not get_model_info(name).coco_panoptic:
        return None
    from panoptic_train.models._coco_categories import coco_panoptic_classes

    return coco_panoptic_classes()


def model_config(name: str, num_classes: int, **model_args: Any) -> EoMTConfig:
    """The EoMT architecture for a model name, with `model_args` overriding the defaults."""
    from panoptic_train.models.eomt import EoMTConfig

    info = get_model_info(name)
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise ConfigError(
            f"Unknown model_args {unknown} for model {name!r}; valid keys are {list(MODEL_ARGS)}."
        )
    config = EoMTConfig(
        backbone=info.backbone,
        num_classes=num_classes,
        num_joint_blocks=info.num_joint_blocks,
        image_size=info.image_size,
    )
    return replace(config, **model_args) if model_args else config


def build_eomt(config: EoMTConfig) -> EoMT:
    """A randomly initialised EoMT for `config` (used to rebuild exported models)."""
    from panoptic_train.models.eomt import EoMT

    return EoMT(config)


def create_model(
    name: str,
    num_classes: int,
    backbone_weights: str | os.PathLike[str] | None = "default",
    **model_args: Any,
) -> EoMT:
    """Create the EoMT network for a registered model name.

    Args:
        name: one of `list_models()`.
        num_classes: number of classes C of the dataset (the network predicts C + 1 logits).
        backbone_weights: "default" loads the name's published weights (the DINOv3 backbone, or
            the whole network for `-panoptic-coco` names; parts whose shape changed with
            `num_classes` or `num_queries` stay randomly initialised); a local path or URL loads
            that file (Meta `.pth`, Hugging Face `DINOv3ViTModel` or EoMT, timm, or this
            package's own state dict; the layout is detected from the keys); None keeps the
            random initialisation.
        **model_args: `num_queries`, `num_joint_blocks`, `image_size` (height, width).
    """
    config = model_config(name, num_classes, **model_args)
    model = build_eomt(config)
    if backbone_weights is not None:
        from panoptic_train.models import weights

        info = get_model_info(name)
        if isinstance(backbone_weights, str) and backbone_weights == "default":
            weights.load_default_weights(model, info)
        else:
            weights.load_weights(model, backbone_weights)
    return model
