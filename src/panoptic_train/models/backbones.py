"""The DINOv3 sizes: one record per backbone with its architecture, the EoMT settings that follow
from it, and the file its pretrained weights come from.

Data only (no torch), so that listing models stays cheap. The model names built on these sizes
are in `registry`; `WeightSource` describes every default weights file, for backbones here and
for whole networks there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from panoptic_train.errors import ConfigError

# Key layouts that `convert` reads; the first three hold a backbone, the last two a whole network.
Layout = Literal["meta", "hf", "timm", "hf-eomt", "eomt-authors", "eomt"]
BACKBONE_LAYOUTS: tuple[Layout, ...] = ("meta", "hf", "timm")

_META_README = "https://github.com/facebookresearch/dinov3#pretrained-models"


@dataclass(frozen=True)
class DinoV3Arch:
    """Hyperparameters of one DINOv3 size.

    `ffn_hidden` is the effective hidden width: for SwiGLU it is the width of `w1`/`w2`, which Meta
    derives as 2/3 of `ffn_ratio * dim` rounded up to a multiple of 8 (64 for ViT-7B).
    """

    embed_dim: int
    depth: int
    num_heads: int
    ffn_hidden: int
    swiglu: bool
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class WeightSource:
    """A default weights file: its name in the cache and what is declared about its contents.

    Attributes:
        filename: name in the cache directory (and in error messages).
        layout: the key layout of the published file, checked when it is loaded; None when no
            file is published and the user supplies one in any supported layout.
        url: public download location; None when no public file exists.
        is_delta: the file stores its backbone as differences to the size's pretrained backbone
            (`Backbone.weights`), which loading adds back; None when nothing is declared (a
            file the user supplies), and the file itself then tells.
        unavailable: why there is no public file and what to do instead (url is None).
    """

    filename: str
    layout: Layout | None = None
    url: str | None = None
    is_delta: bool | None = None
    unavailable: str = ""


@dataclass(frozen=True)
class Backbone:
    """One DINOv3 size.

    Attributes:
        name: the size's name, stored in exported model files (`EoMTConfig.backbone`).
        arch: its architecture.
        joint_blocks: EoMT's L2 for this size (paper: 3 for T/S/B, 4 for L, 5 for H and 7B).
        coco_steps: training steps of the published COCO protocol at batch 16 (7 393 steps an
            epoch): 48 epochs for the tiny sizes, 24 for S, S+ and B, 12 for L and larger.
        weights: the pretrained backbone file.
    """

    name: str
    arch: DinoV3Arch
    joint_blocks: int
    coco_steps: int
    weights: WeightSource


def _timm(size: str) -> WeightSource:
    """timm's public copy of Meta's weights on the Hugging Face hub."""
    repo = f"timm/vit_{size}_patch16_dinov3.lvd1689m"
    return WeightSource(
        filename=f"{repo.replace('/', '--')}.safetensors",
        layout="timm",
        url=f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
        is_delta=False,
    )


def _tiny(name: str) -> WeightSource:
    return WeightSource(
        filename=f"dinov3_{name}.pth",
        unavailable=(
            "The tiny DINOv3 backbones (ViT-T) were pretrained by Lightly for LightlyTrain, not "
            "by Meta, and are not published as files. Train from a random backbone with "
            "backbone_weights=None, or use 'dinov3/vits16-eomt'."
        ),
    )


# Meta's files are gated (a signed download link after accepting the license); timm's copies of
# the same weights are public, so they are the defaults wherever they exist.
_META_VITL16PLUS = WeightSource(
    filename="dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth",
    layout="meta",
    is_delta=False,
    unavailable=(
        "DINOv3 ViT-L+ weights are only distributed by Meta, after accepting the DINOv3 "
        f"license ({_META_README})."
    ),
)

# The tiny sizes are not Meta's: ViT-T widths in DINOv3's layout, without published weights.
# name, DinoV3Arch(dim, depth, heads, FFN hidden, SwiGLU, q/v biases), L2, COCO steps, weights
_BACKBONES = (
    Backbone("vitt16", DinoV3Arch(192, 12, 3, 768, False), 3, 360_000, _tiny("vitt16")),
    Backbone("vitt16plus", DinoV3Arch(192, 12, 3, 1152, False), 3, 360_000, _tiny("vitt16plus")),
    Backbone("vits16", DinoV3Arch(384, 12, 6, 1536, False), 3, 180_000, _timm("small")),
    Backbone("vits16plus", DinoV3Arch(384, 12, 6, 1536, True), 3, 180_000, _timm("small_plus")),
    Backbone("vitb16", DinoV3Arch(768, 12, 12, 3072, False), 3, 180_000, _timm("base")),
    Backbone("vitl16", DinoV3Arch(1024, 24, 16, 4096, False), 4, 90_000, _timm("large")),
    Backbone("vitl16plus", DinoV3Arch(1024, 24, 16, 4096, True), 4, 90_000, _META_VITL16PLUS),
    Backbone("vith16plus", DinoV3Arch(1280, 32, 20, 5120, True), 5, 90_000, _timm("huge_plus")),
    Backbone("vit7b16", DinoV3Arch(4096, 40, 32, 8192, True, False), 5, 90_000, _timm("7b")),
)  # fmt: skip

BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in _BACKBONES}


def get_backbone(name: str) -> Backbone:
    """Look up a DINOv3 size by name, with an error that lists the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown DINOv3 backbone {name!r}. Valid backbones: {', '.join(BACKBONES)}."
        ) from None
