"""Model names: one record per name, and `create_model` on top.

A `ModelInfo` holds everything a name stands for: its DINOv3 size (`backbones.Backbone`, with the
architecture and the pretrained backbone file), the default input size and L2, the classes it
was fine-tuned on, and the weights `backbone_weights="default"` loads. `create_model` turns a
name into a network; `build_eomt` rebuilds an architecture from a stored `EoMTConfig` (exported
model files) with random weights, which the caller then overwrites with its state dict.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any

from panoptic_train._types import PathLike
from panoptic_train.errors import ConfigError
from panoptic_train.models import weights
from panoptic_train.models._coco_categories import COCO_PANOPTIC_CLASSES
from panoptic_train.models.backbones import BACKBONES, Backbone, WeightSource
from panoptic_train.models.eomt import EoMT, EoMTConfig

MODEL_ARGS = ("num_queries", "num_joint_blocks", "image_size")


@dataclass(frozen=True)
class ModelInfo:
    """What a model name stands for.

    Attributes:
        name: the public name, e.g. "dinov3/vits16-eomt-panoptic-coco".
        backbone: the DINOv3 size.
        image_size: default (height, width).
        num_joint_blocks: default L2.
        classes: (id, name, isthing) of the classes the whole network was fine-tuned on, in
            class index order; None when only the backbone is pretrained.
        weights: what `backbone_weights="default"` loads: the backbone's pretrained file, or
            the whole fine-tuned network.
    """

    name: str
    backbone: Backbone
    image_size: tuple[int, int]
    num_joint_blocks: int
    classes: tuple[tuple[int, str, bool], ...] | None
    weights: WeightSource

    @property
    def default_steps(self) -> int:
        """`steps="auto"`: the length of the published COCO protocol for this backbone size."""
        return self.backbone.coco_steps


def _pretrained_backbone(backbone: Backbone) -> ModelInfo:
    name = f"dinov3/{backbone.name}-eomt"
    return ModelInfo(name, backbone, (640, 640), backbone.joint_blocks, None, backbone.weights)


def _eomt_authors(repo: str) -> WeightSource:
    """The EoMT authors' public COCO panoptic checkpoint on the Hugging Face hub: their layout,
    the backbone stored as differences to DINOv3 (added to the size's pretrained backbone)."""
    return WeightSource(
        filename=f"tue-mps--{repo}.bin",
        layout="eomt-authors",
        url=f"https://huggingface.co/tue-mps/{repo}/resolve/main/pytorch_model.bin",
        is_delta=True,
    )


def _coco_panoptic(
    backbone: str, image_size: tuple[int, int] = (640, 640), published: str | None = None
) -> ModelInfo:
    """A COCO panoptic fine-tuned network: the EoMT authors' checkpoint `published` (a Hugging
    Face repository of tue-mps), or weights the user supplies."""
    suffix = "" if image_size == (640, 640) else f"-{image_size[0]}"
    name = f"dinov3/{backbone}-eomt-panoptic-coco{suffix}"
    if published is not None:
        weights = _eomt_authors(published)
    else:
        weights = WeightSource(
            filename=name.replace("/", "--") + ".pt",
            unavailable=(
                f"The COCO panoptic fine-tuned weights of {name!r} are not published as a "
                "downloadable file (the EoMT authors publish ViT-S, ViT-B and ViT-L ones: "
                "'dinov3/vits16-eomt-panoptic-coco', ...). To fine-tune from the pretrained "
                f"backbone instead, use model 'dinov3/{backbone}-eomt'."
            ),
        )
    size = BACKBONES[backbone]
    return ModelInfo(name, size, image_size, size.joint_blocks, COCO_PANOPTIC_CLASSES, weights)


_MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        _coco_panoptic("vitt16"),
        _coco_panoptic("vitt16plus"),
        _coco_panoptic("vits16", published="coco_panoptic_eomt_small_640_dinov3"),
        _coco_panoptic("vitb16", published="coco_panoptic_eomt_base_640_dinov3"),
        _coco_panoptic("vitl16", published="coco_panoptic_eomt_large_640_dinov3"),
        _coco_panoptic("vitl16", (1280, 1280), published="coco_panoptic_eomt_large_1280_dinov3"),
        *(_pretrained_backbone(backbone) for backbone in BACKBONES.values()),
    )
}

# Spellings accepted for convenience: "plus" before the patch size as well as after it.
_ALIASES: dict[str, str] = {
    "dinov3/vittplus16-eomt-panoptic-coco": "dinov3/vitt16plus-eomt-panoptic-coco",
}


def list_models() -> list[str]:
    """Names accepted by `create_model` and by `train_panoptic_segmentation(model=...)`."""
    return list(_MODELS)


def is_model_name(name: str) -> bool:
    """True for a registered name or alias (callers use it to tell names from file paths)."""
    return name in _MODELS or name in _ALIASES


def get_model_info(name: str) -> ModelInfo:
    """Resolve a model name (or alias) with an error that suggests and lists the valid names."""
    info = _MODELS.get(_ALIASES.get(name, name))
    if info is None:
        names = [*_MODELS, *_ALIASES]
        close = difflib.get_close_matches(name, names, n=3) or [n for n in names if name in n][:3]
        suggestion = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"Unknown model {name!r}.{suggestion} Valid models: {', '.join(_MODELS)}; or pass "
            "the path of an exported model file (exported_*.pt)."
        )
    return info


def model_classes(name: str) -> list[dict[str, Any]] | None:
    """The class list a model was fine-tuned with ({"id", "name", "isthing"} per class, in class
    index order), or None for models that only have a pretrained backbone."""
    classes = get_model_info(name).classes
    if classes is None:
        return None
    return [{"id": i, "name": n, "isthing": thing} for i, n, thing in classes]


def model_config(name: str, num_classes: int, **model_args: Any) -> EoMTConfig:
    """The EoMT architecture for a model name, with `model_args` overriding the defaults."""
    info = get_model_info(name)
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise ConfigError(
            f"Unknown model_args {unknown} for model {name!r}; valid keys are {list(MODEL_ARGS)}."
        )
    config = EoMTConfig(
        backbone=info.backbone.name,
        num_classes=num_classes,
        num_joint_blocks=info.num_joint_blocks,
        image_size=info.image_size,
    )
    return replace(config, **model_args) if model_args else config


def build_eomt(config: EoMTConfig) -> EoMT:
    """A randomly initialised EoMT for `config` (used to rebuild exported models)."""
    return EoMT(config)


def create_model(
    name: str,
    num_classes: int,
    backbone_weights: PathLike | None = "default",
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
    model = build_eomt(model_config(name, num_classes, **model_args))
    if isinstance(backbone_weights, str) and backbone_weights == "default":
        weights.load_source(model, get_model_info(name).weights)
    elif backbone_weights is not None:
        weights.load_weights(model, backbone_weights)
    return model
