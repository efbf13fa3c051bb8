"""Checkpoint layouts -> this package's state dicts: pure functions on tensor mappings.

Layouts understood (detected from the keys, never from the file name):

- `meta`: Meta's DINOv3 `.pth` (`cls_token`, `storage_tokens`, `blocks.N.attn.qkv`, `ls1.gamma`);
  also this package's own `DinoV3ViT.state_dict()`, which uses the same names.
- `hf`: Hugging Face transformers `DINOv3ViTModel` (`embeddings.*`, `[model.]layer.N.*`).
- `timm`: timm `vit_*_patch16_dinov3` (`reg_token`, `blocks.N.gamma_1`, `mlp.fc1_g`).
- `hf-eomt`: transformers `EomtDinov3ForUniversalSegmentation` (a whole network).
- `eomt-authors`: the EoMT authors' checkpoints (github.com/tue-mps/eomt, e.g. Hugging Face
  `tue-mps/coco_panoptic_eomt_large_640_dinov3`): their training module's `network.*` keys, with
  transformers' DINOv3 under `network.encoder.backbone.` (embeddings renamed `patch_embed`,
  layers `blocks`), stored as differences to DINOv3 (a whole network).
- `eomt`: this package's own `EoMT.state_dict()` (a whole network).

Every conversion is exact: a tensor is renamed, or q/k/v pieces are concatenated; a missing key
bias becomes the zeros that the other layouts imply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from panoptic_train.errors import WeightsError
from panoptic_train.models.backbones import Layout

StateDict = dict[str, Tensor]

MAX_LISTED_KEYS = 8  # keys quoted in an error message


def detect_layout(state: Mapping[str, Tensor]) -> Layout:
    """Name the layout of a state dict from its keys (see the module docstring)."""
    if "class_head.weight" in state and "backbone.cls_token" in state:
        return "eomt"
    if "class_predictor.weight" in state and "query.weight" in state:
        return "hf-eomt"
    if "network.class_head.weight" in state and "network.q.weight" in state:
        return "eomt-authors"
    if "embeddings.cls_token" in state:
        return "hf"
    if "reg_token" in state and "cls_token" in state:
        return "timm"
    if "storage_tokens" in state and "cls_token" in state:
        return "meta"
    sample = ", ".join(sorted(state)[:MAX_LISTED_KEYS])
    raise WeightsError(
        f"Unrecognised weights layout (first keys: {sample}). Supported: Meta DINOv3 .pth, "
        "Hugging Face DINOv3ViTModel or EomtDinov3ForUniversalSegmentation, timm "
        "vit_*_patch16_dinov3, the EoMT authors' checkpoints, and this package's own state dicts."
    )


def _split_layer(key: str, prefixes: tuple[str, ...]) -> tuple[int, str] | None:
    """(block index, rest) for keys like `<prefix>N.rest`, else None."""
    for prefix in prefixes:
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].partition(".")
            if index.isdigit():
                return int(index), rest
    return None


_HF_BLOCK_RENAMES = {
    "attention.o_proj.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_MLP = {"up_proj": "fc1", "down_proj": "fc2"}
_HF_GATED_MLP = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
_HF_QKV = re.compile(r"attention\.([qkv])_proj\.(weight|bias)")


def _from_hf(state: Mapping[str, Tensor], layer_prefixes: tuple[str, ...]) -> StateDict:
    """transformers DINOv3 backbone keys -> ours (also the backbone part of HF EoMT files)."""
    gated = any(".mlp.gate_proj." in key for key in state)
    mlp_names = _HF_GATED_MLP if gated else _HF_MLP
    out: StateDict = {}
    qkv: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        split = _split_layer(key, layer_prefixes)
        if key == "embeddings.mask_token":
            continue  # pretraining only
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.register_tokens":
            out["storage_tokens"] = value
        elif key.startswith("embeddings.patch_embeddings."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif split is None:
            out[key] = value  # `norm.*`; anything else is reported as unexpected
        elif match := _HF_QKV.fullmatch(split[1]):
            qkv.setdefault(split[0], {})[f"{match[1]}.{match[2]}"] = value
        else:
            index, rest = split
            for old, new in _HF_BLOCK_RENAMES.items():
                rest = rest.replace(old, new)
            if rest.startswith("mlp."):
                name, _, param = rest[4:].partition(".")
                rest = f"mlp.{mlp_names.get(name, name)}.{param}"
            out[f"blocks.{index}.{rest}"] = value
    for index, parts in qkv.items():
        _put_qkv(out, index, parts.get("q.weight"), parts.get("k.weight"), parts.get("v.weight"))
        if "q.bias" in parts or "v.bias" in parts:
            _put_qkv_bias(out, index, parts.get("q.bias"), parts.get("v.bias"))
    return out


def _put_qkv(
    out: StateDict, index: int, q: Tensor | None, k: Tensor | None, v: Tensor | None
) -> None:
    if q is None or k is None or v is None:
        missing = [n for n, t in (("q", q), ("k", k), ("v", v)) if t is None]
        raise WeightsError(f"Block {index} lacks the {'/'.join(missing)} projection weights.")
    out[f"blocks.{index}.attn.qkv.weight"] = torch.cat((q, k, v), dim=0)


def _put_qkv_bias(out: StateDict, index: int, q: Tensor | None, v: Tensor | None) -> None:
    """Fused bias [q, 0, v]; a missing piece is zero (the layouts drop all-zero biases).

    A key bias, where a file has one, is dropped exactly: it adds q.b_k to every score of a
    query, which the softmax cancels (and Meta's checkpoints mask it to zero anyway).
    """
    present = [t for t in (q, v) if t is not None]
    zeros = torch.zeros_like(present[0])
    pieces = (zeros if q is None else q, zeros, zeros if v is None else v)
    out[f"blocks.{index}.attn.qkv.bias"] = torch.cat(pieces)


_TIMM_RENAMES = {
    "gamma_1": "ls1.gamma",
    "gamma_2": "ls2.gamma",
    "mlp.fc1_g.": "mlp.w1.",
    "mlp.fc1_x.": "mlp.w2.",
}


def _from_timm(state: Mapping[str, Tensor]) -> StateDict:
    """timm Eva-DINOv3 keys -> ours."""
    swiglu = any(".mlp.fc1_g." in key for key in state)
    out: StateDict = {}
    biases: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key == "reg_token":
            out["storage_tokens"] = value
            continue
        split = _split_layer(key, ("blocks.",))
        if split is None:
            out[key] = value
            continue
        index, rest = split
        if rest in ("attn.q_bias", "attn.v_bias"):
            biases.setdefault(index, {})[rest[5]] = value
            continue
        for old, new in _TIMM_RENAMES.items():
            rest = rest.replace(old, new)
        if swiglu and rest.startswith("mlp.fc2."):
            rest = "mlp.w3." + rest[len("mlp.fc2.") :]
        out[f"blocks.{index}.{rest}"] = value
    for index, parts in biases.items():
        _put_qkv_bias(out, index, parts.get("q"), parts.get("v"))
    return out


# Meta keys that only matter for pretraining.
_META_PRETRAIN_ONLY = ("mask_token", "local_cls_norm.")


def _from_meta(state: Mapping[str, Tensor]) -> StateDict:
    return {k: v for k, v in state.items() if not k.startswith(_META_PRETRAIN_ONLY)}


def convert_backbone(state: Mapping[str, Tensor], layout: Layout) -> StateDict:
    """A backbone state dict in `layout` -> `DinoV3ViT` keys (not yet checked against a model)."""
    if layout == "meta":
        return _from_meta(state)
    if layout == "hf":
        return _from_hf(state, ("layer.", "model.layer."))
    if layout == "timm":
        return _from_timm(state)
    raise WeightsError(f"Layout {layout!r} is a whole network, not a backbone.")


# The upscale blocks' convolutions as both EoMT layouts name them (the authors' `ScaleBlock`,
# which transformers kept): the 2x2 transposed one, then the depthwise 3x3.
_UPSCALE_CONVS = {"conv1": "deconv", "conv2": "dwconv"}
_HF_EOMT_HEAD_RENAMES = (
    ("query.", "queries."),
    ("class_predictor.", "class_head."),
    ("upscale_block.block.", "upscale."),
    *((f".{old}.", f".{new}.") for old, new in _UPSCALE_CONVS.items()),
    (".layernorm2d.", ".norm."),
)


def convert_network(state: Mapping[str, Tensor], layout: Layout) -> StateDict:
    """A whole-network state dict in `layout` -> `EoMT` keys (not yet checked against a model)."""
    if layout == "eomt":
        return dict(state)
    if layout == "hf-eomt":
        return _from_hf_eomt(state)
    if layout == "eomt-authors":
        return _from_eomt_authors(state)
    raise WeightsError(f"Layout {layout!r} is a backbone, not a whole network.")


def _from_hf_eomt(state: Mapping[str, Tensor]) -> StateDict:
    """transformers `EomtDinov3ForUniversalSegmentation` keys -> `EoMT` keys."""
    backbone_part: StateDict = {}
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith(("embeddings.", "layers.")):
            backbone_part[key] = value
        elif key.startswith("layernorm."):
            backbone_part["norm." + key[len("layernorm.") :]] = value
        elif not key.startswith("criterion."):  # the loss's class weights are not network state
            for old, new in _HF_EOMT_HEAD_RENAMES:
                key = key.replace(old, new)
            out[key] = value
    backbone = _from_hf(backbone_part, ("layers.",))
    out.update({"backbone." + k: v for k, v in backbone.items()})
    return out


_AUTHORS_BACKBONE = "network.encoder.backbone."
# Not network state: the encoder's input normalisation (ImageNet's, which preprocessing applies)
# and the loss's class weights.
_AUTHORS_SKIPPED = ("network.encoder.pixel_mean", "network.encoder.pixel_std", "criterion.")
_AUTHORS_MASK_MLP = {"0": "fc1", "2": "fc2", "4": "fc3"}  # nn.Sequential(fc, GELU, fc, GELU, fc)
_AUTHORS_HEAD_RENAMES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^network\.q\."), "queries."),
    (
        re.compile(r"^network\.mask_head\.([024])\."),
        lambda m: f"mask_head.{_AUTHORS_MASK_MLP[m[1]]}.",
    ),
    (
        re.compile(r"^network\.upscale\.(\d+)\.(conv[12])\."),
        lambda m: f"upscale.{m[1]}.{_UPSCALE_CONVS[m[2]]}.",
    ),
    (re.compile(r"^network\."), ""),  # class_head, upscale.N.norm, attn_mask_probs
)


def _from_eomt_authors(state: Mapping[str, Tensor]) -> StateDict:
    """The EoMT authors' `network.*` keys -> `EoMT` keys (the backbone through `_from_hf`)."""
    backbone_part: StateDict = {}
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith(_AUTHORS_SKIPPED):
            continue
        if key.startswith(_AUTHORS_BACKBONE):
            key = key[len(_AUTHORS_BACKBONE) :]
            if key.startswith("patch_embed."):
                key = "embeddings." + key[len("patch_embed.") :]
            backbone_part[key] = value
            continue
        for pattern, replacement in _AUTHORS_HEAD_RENAMES:
            key, renamed = pattern.subn(replacement, key, count=1)
            if renamed:
                break
        out[key] = value  # anything not renamed is reported as unexpected
    backbone = _from_hf(backbone_part, ("blocks.",))
    out.update({"backbone." + k: v for k, v in backbone.items()})
    return out


def looks_like_delta(backbone: Mapping[str, Tensor]) -> bool:
    """For a file nothing is declared about: does its backbone hold differences to DINOv3?

    A pretrained or fine-tuned DINOv3 keeps its final-norm scale near 1; the EoMT authors'
    difference files have it near 0. Registered sources declare this instead
    (`WeightSource.is_delta`).
    """
    scale = backbone.get("norm.weight")
    return scale is not None and float(scale.float().abs().mean()) < 0.5
