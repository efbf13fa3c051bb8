"""Pretrained weights: obtaining the files and converting their layouts onto ours.

Layouts understood (detected from the keys, never from the file name):

- `meta`: Meta's DINOv3 `.pth` (`cls_token`, `storage_tokens`, `blocks.N.attn.qkv`, `ls1.gamma`);
  also this package's own `DinoV3ViT.state_dict()`, which uses the same names.
- `hf`: Hugging Face transformers `DINOv3ViTModel` (`embeddings.*`, `[model.]layer.N.*`).
- `timm`: timm `vit_*_patch16_dinov3` (`reg_token`, `blocks.N.gamma_1`, `mlp.fc1_g`).
- `hf-eomt`: transformers `EomtDinov3ForUniversalSegmentation` (a whole network).
- `eomt`: this package's own `EoMT.state_dict()` (a whole network).

Every conversion is exact: a tensor is renamed, or q/k/v pieces are concatenated; a missing key
bias becomes the zeros that the other layouts imply. Files are read on the CPU with
`weights_only=True` (a weights file never runs code).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from panoptic_train._io import atomic_open
from panoptic_train.errors import WeightsError
from panoptic_train.models.dinov3 import DinoV3ViT
from panoptic_train.models.eomt import EoMT
from panoptic_train.models.registry import ModelInfo

CACHE_ENV = "PANOPTIC_TRAIN_CACHE"
_META_README = "https://github.com/facebookresearch/dinov3#pretrained-models"
# Meta's file names end in the first hex digits of the file's SHA-256 (torch.hub convention).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")
_MAX_LISTED_KEYS = 8

StateDict = dict[str, Tensor]


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class WeightSource:
    """Where a default weights file lives.

    Attributes:
        filename: name in the cache directory (and in error messages).
        url: public download location; None when no public file exists.
        unavailable: why there is no public file and what to do instead (url is None).
    """

    filename: str
    url: str | None = None
    unavailable: str = ""


def _timm_source(repo: str) -> WeightSource:
    return WeightSource(
        filename=f"{repo.replace('/', '--')}.safetensors",
        url=f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
    )


def _meta_file(arch: str, sha_prefix: str) -> str:
    return f"dinov3_{arch}_pretrain_lvd1689m-{sha_prefix}.pth"


# Meta's files are gated (a signed download link after accepting the license); timm's copies of
# the same weights on the Hugging Face hub are public, so they are the defaults.
_META_FILES: dict[str, str] = {
    "vits16": _meta_file("vits16", "08c60483"),
    "vits16plus": _meta_file("vits16plus", "4057cbaa"),
    "vitb16": _meta_file("vitb16", "73cec8be"),
    "vitl16": _meta_file("vitl16", "8aa4cbdd"),
    "vitl16plus": _meta_file("vitl16plus", "46503df0"),
    "vith16plus": _meta_file("vith16plus", "7c1da9a5"),
    "vit7b16": _meta_file("vit7b16", "a955f4ea"),
}

BACKBONE_SOURCES: dict[str, WeightSource] = {
    "vits16": _timm_source("timm/vit_small_patch16_dinov3.lvd1689m"),
    "vits16plus": _timm_source("timm/vit_small_plus_patch16_dinov3.lvd1689m"),
    "vitb16": _timm_source("timm/vit_base_patch16_dinov3.lvd1689m"),
    "vitl16": _timm_source("timm/vit_large_patch16_dinov3.lvd1689m"),
    "vitl16plus": WeightSource(
        filename=_META_FILES["vitl16plus"],
        unavailable=(
            f"DINOv3 ViT-L+ weights are only distributed by Meta, after accepting the DINOv3 "
            f"license ({_META_README})."
        ),
    ),
    "vith16plus": _timm_source("timm/vit_huge_plus_patch16_dinov3.lvd1689m"),
    "vit7b16": _timm_source("timm/vit_7b_patch16_dinov3.lvd1689m"),
    "vitt16": WeightSource(
        filename="dinov3_vitt16.pth",
        unavailable=(
            "The tiny DINOv3 backbones were pretrained by the reference system's authors and "
            "are not published as files. Train from a random backbone with "
            "backbone_weights=None, or use 'dinov3/vits16-eomt'."
        ),
    ),
    "vitt16plus": WeightSource(
        filename="dinov3_vitt16plus.pth",
        unavailable=(
            "The tiny DINOv3 backbones were pretrained by the reference system's authors and "
            "are not published as files. Train from a random backbone with "
            "backbone_weights=None, or use 'dinov3/vits16-eomt'."
        ),
    ),
}

_EOMT_AUTHORS_L640 = "https://huggingface.co/tue-mps/coco_panoptic_eomt_large_640_dinov3"


def coco_source(info: ModelInfo) -> WeightSource:
    """The (unavailable) whole-network source of a `-panoptic-coco` model, with the reason."""
    hint = ""
    if info.name == "dinov3/vitl16-eomt-panoptic-coco":
        hint = (
            f" The EoMT authors publish ViT-L 640 COCO panoptic weights at {_EOMT_AUTHORS_L640} "
            "(transformers EomtDinov3 layout, stored as differences to the DINOv3 ViT-L "
            "weights); download its weights file and pass it as weights=<that file> to load_model "
            "(backbone_weights=<that file> to create_model or in model_args): the "
            "differences are added to the default ViT-L backbone automatically."
        )
    return WeightSource(
        filename=info.name.replace("/", "--") + ".pt",
        unavailable=(
            f"The COCO panoptic fine-tuned weights of {info.name!r} are not published as a "
            f"downloadable file.{hint} To fine-tune from the pretrained backbone instead, use "
            f"model 'dinov3/{info.backbone}-eomt'."
        ),
    )


def cache_dir() -> Path:
    """Download cache: $PANOPTIC_TRAIN_CACHE, else ~/.cache/panoptic_train."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "panoptic_train")


def _unavailable_error(source: WeightSource, reason: str) -> WeightsError:
    target = cache_dir() / source.filename
    return WeightsError(
        f"{reason} Point backbone_weights=<path or URL> (weights= in load_model) at a local "
        "copy of the weights, or "
        f"place the file at {target} (the cache directory is set by the {CACHE_ENV} "
        "environment variable), or pass backbone_weights=None for a random initialisation."
    )


def fetch(source: WeightSource) -> Path:
    """The local path of a default weights file, downloading it into the cache if needed."""
    target = cache_dir() / source.filename
    if target.is_file():
        return target
    if source.url is None:
        raise _unavailable_error(source, source.unavailable)
    return _download(source.url, target)


def _download(url: str, target: Path) -> Path:
    """Stream `url` into `target` atomically, checking the SHA-256 prefix in Meta-style names."""
    expected = _HASH_IN_NAME.search(target.name)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_open(target) as out:
            _copy(response, out, digest.update)
            if expected and not digest.hexdigest().startswith(expected.group(1)):
                raise WeightsError(
                    f"The file downloaded from {url} has SHA-256 {digest.hexdigest()[:16]}..., "
                    f"which does not match the {expected.group(1)} in its name; the download is "
                    "corrupt or the file was replaced. Nothing was saved; try again."
                )
    except (urllib.error.URLError, OSError) as error:
        source = WeightSource(filename=target.name, url=url)
        gated = isinstance(error, urllib.error.HTTPError) and error.code in (401, 403)
        why = "access is restricted (gated)" if gated else f"the download failed ({error})"
        raise _unavailable_error(source, f"Could not download {url}: {why}.") from error
    return target


def _copy(src: IO[bytes], dst: IO[bytes], update: Callable[[bytes], None]) -> None:
    while chunk := src.read(1 << 20):
        update(chunk)
        dst.write(chunk)


def resolve_path(location: str | os.PathLike[str]) -> Path:
    """A local file for a path or an http(s) URL (downloaded into the cache once)."""
    text = os.fspath(location)
    if text.startswith(("http://", "https://")):
        # Hub files share names (model.safetensors); a digest of the URL keeps them apart.
        name = Path(urllib.request.url2pathname(text.split("?")[0])).name
        tag = hashlib.sha256(text.encode()).hexdigest()[:10]
        target = cache_dir() / f"{tag}--{name}"
        return target if target.is_file() else _download(text, target)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {text!r} does not exist. Pass the path of a DINOv3 or EoMT weights "
            "file (Meta .pth, Hugging Face .safetensors/.bin, timm), a URL, or "
            "backbone_weights=None for a random initialisation."
        )
    return path


# --------------------------------------------------------------------------- reading


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a weights file (.safetensors or a torch pickle read with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file fails in many library-specific ways
        raise WeightsError(f"Could not read weights file {path}: {error}") from error
    return _unwrap(data, path)


def _unwrap(data: Any, path: Path) -> StateDict:
    """Find the tensor mapping inside common containers ({"model": ...}, {"state_dict": ...})."""
    for _ in range(3):
        if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
            return dict(data)
        if isinstance(data, Mapping):
            inner = next((data[k] for k in ("state_dict", "model") if k in data), None)
            if inner is not None:
                data = inner
                continue
        break
    raise WeightsError(
        f"Weights file {path} holds no state dict (a mapping of names to tensors); found "
        f"{type(data).__name__}. Pass a DINOv3 or EoMT weights file."
    )


# --------------------------------------------------------------------------- layouts


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """Name the layout of a state dict from its keys (see the module docstring)."""
    if "class_head.weight" in state and "backbone.cls_token" in state:
        return "eomt"
    if "class_predictor.weight" in state and "query.weight" in state:
        return "hf-eomt"
    if "embeddings.cls_token" in state:
        return "hf"
    if "reg_token" in state and "cls_token" in state:
        return "timm"
    if "storage_tokens" in state and "cls_token" in state:
        return "meta"
    sample = ", ".join(sorted(state)[:_MAX_LISTED_KEYS])
    raise WeightsError(
        f"Unrecognised weights layout (first keys: {sample}). Supported: Meta DINOv3 .pth, "
        "Hugging Face DINOv3ViTModel or EomtDinov3ForUniversalSegmentation, timm "
        "vit_*_patch16_dinov3, and this package's own state dicts."
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


def convert_backbone(state: Mapping[str, Tensor], layout: str) -> StateDict:
    """A backbone state dict in `layout` -> `DinoV3ViT` keys (not yet checked against a model)."""
    if layout == "meta":
        return _from_meta(state)
    if layout == "hf":
        return _from_hf(state, ("layer.", "model.layer."))
    if layout == "timm":
        return _from_timm(state)
    raise WeightsError(f"Layout {layout!r} is a whole network, not a backbone.")


_HF_EOMT_HEAD_RENAMES = (
    ("query.", "queries."),
    ("class_predictor.", "class_head."),
    ("upscale_block.block.", "upscale."),
    (".conv1.", ".deconv."),
    (".conv2.", ".dwconv."),
    (".layernorm2d.", ".norm."),
)


def convert_hf_eomt(state: Mapping[str, Tensor]) -> StateDict:
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


# --------------------------------------------------------------------------- loading


def _check_keys(
    module: nn.Module, state: Mapping[str, Tensor], origin: str, optional: tuple[str, ...] = ()
) -> None:
    """Raise a WeightsError naming missing/unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith(optional))
    unexpected = sorted(k for k in state if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches {_listing(shapes)}")
    if problems:
        raise WeightsError(
            f"{origin} does not fit this network: {'; '.join(problems)}. Check that the file is "
            "for the same DINOv3 size as the model name (e.g. a ViT-S/16 file for "
            "'dinov3/vits16-eomt')."
        )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    more = len(items) - _MAX_LISTED_KEYS
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"


def load_backbone_state(backbone: DinoV3ViT, state: Mapping[str, Tensor], origin: str) -> str:
    """Convert a backbone state dict of any layout into `backbone` exactly; returns the layout."""
    layout = detect_layout(state)
    converted = convert_backbone(state, layout)
    _fill_implied(backbone, converted)
    _check_keys(backbone, converted, f"{origin} ({layout} layout)")
    backbone.load_state_dict(converted)
    return layout


def _fill_implied(backbone: DinoV3ViT, state: StateDict) -> None:
    """Add what a layout leaves implicit: RoPE periods and the key-bias mask (derived values),
    and zero q/k/v biases for timm files that dropped them because they were all zero."""
    reference = backbone.state_dict()
    for key, value in reference.items():
        if key in state:
            continue
        if key == "rope_embed.periods" or key.endswith("attn.qkv.bias_mask"):
            state[key] = value.clone()
        elif key.endswith("attn.qkv.bias") and key.replace(".bias", ".weight") in state:
            state[key] = torch.zeros_like(value)


def load_weights(model: EoMT, location: str | os.PathLike[str]) -> str:
    """Load a backbone or whole-network file into `model`; returns the detected layout.

    Whole-network files may come from another class count or query count: tensors whose shape
    differs (class head, queries, attention-mask schedule) keep their initialisation, so
    fine-tuning on a new dataset starts from everything else. EoMT-authors files stored as
    differences to DINOv3 are recognised (final-norm scale near 0 instead of near 1) and added
    to the default backbone of the model's size.
    """
    path = resolve_path(location)
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout in ("meta", "hf", "timm"):
        return load_backbone_state(model.backbone, state, str(path))
    network = convert_hf_eomt(state) if layout == "hf-eomt" else dict(state)
    backbone = {k[9:]: v for k, v in network.items() if k.startswith("backbone.")}
    if _is_delta(backbone):
        base = fetch(BACKBONE_SOURCES[model.config.backbone])
        load_backbone_state(model.backbone, read_state_dict(base), str(base))
        current = model.backbone.state_dict()
        for key, value in backbone.items():
            if key in current and not key.endswith(("bias_mask", "periods")):
                network["backbone." + key] = current[key] + value.to(current[key].dtype)
    _load_network(model, network, f"{path} ({layout} layout)")
    return layout


def _is_delta(backbone: Mapping[str, Tensor]) -> bool:
    scale = backbone.get("norm.weight")
    return scale is not None and float(scale.float().abs().mean()) < 0.5


# Parts of a network whose shape follows the dataset or the schedule, not the pretraining.
_RESIZABLE = ("class_head.", "queries.", "attn_mask_probs")


def _load_network(model: EoMT, network: StateDict, origin: str) -> None:
    current = model.state_dict()
    kept = {
        k: v
        for k, v in network.items()
        if not (k.startswith(_RESIZABLE) and k in current and v.shape != current[k].shape)
    }
    backbone = {k[9:]: v for k, v in kept.items() if k.startswith("backbone.")}
    _fill_implied(model.backbone, backbone)
    kept.update({"backbone." + k: v for k, v in backbone.items()})
    for key in _RESIZABLE:  # resized or absent parts keep their initialisation
        for name in current:
            if name.startswith(key) and name not in kept:
                kept[name] = current[name]
    _check_keys(model, kept, origin)
    model.load_state_dict(kept)


def load_default_weights(model: EoMT, info: ModelInfo) -> None:
    """The published weights for a registry entry (downloaded once into the cache)."""
    if info.coco_panoptic:
        source = coco_source(info)
        cached = cache_dir() / source.filename
        if not cached.is_file():
            raise _unavailable_error(source, source.unavailable)
        load_weights(model, cached)
        return
    path = fetch(BACKBONE_SOURCES[info.backbone])
    load_backbone_state(model.backbone, read_state_dict(path), str(path))
