"""Loading weights into the network: reading a file, converting its layout (`convert`), and
checking every key against the model so that a wrong file fails with a message naming it.

A registered source (`WeightSource`) is loaded with what it declares: its layout is checked and
its `is_delta` decides whether its backbone is added to the pretrained one. A file the user
names carries no declarations: its layout is read from its keys and whether it holds differences
from its backbone (`convert.looks_like_delta`). Files are read on the CPU with
`weights_only=True` (a weights file never runs code).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from panoptic_train._types import PathLike
from panoptic_train.errors import WeightsError
from panoptic_train.models import convert, hub
from panoptic_train.models.backbones import BACKBONE_LAYOUTS, Layout, WeightSource, get_backbone
from panoptic_train.models.convert import MAX_LISTED_KEYS, StateDict
from panoptic_train.models.dinov3 import DinoV3ViT
from panoptic_train.models.eomt import EoMT

# Parts of a network whose shape follows the dataset or the schedule, not the pretraining.
_RESIZABLE = ("class_head.", "queries.", "attn_mask_probs")
# Derived buffers: never stored as differences, never added to.
_DERIVED = ("bias_mask", "periods")


def load_weights(model: EoMT, location: PathLike) -> Layout:
    """Load a backbone or whole-network file the user names (path or URL) into `model`; returns
    the detected layout.

    Whole-network files may come from another class count or query count: tensors whose shape
    differs (class head, queries, attention-mask schedule) keep their initialisation, so
    fine-tuning on a new dataset starts from everything else. Files whose backbone holds
    differences to DINOv3 (the EoMT authors' releases) are added to the pretrained backbone of the
    model's size.
    """
    path = hub.resolve_path(location)
    return _load_file(model, path, WeightSource(filename=path.name))


def load_source(model: EoMT, source: WeightSource) -> Layout:
    """Load a registered default file (from the cache, downloaded once) as it is declared."""
    return _load_file(model, hub.fetch(source), source)


def _load_file(model: EoMT, path: Path, source: WeightSource) -> Layout:
    state = read_state_dict(path)
    layout = convert.detect_layout(state)
    if source.layout is not None and layout != source.layout:
        raise WeightsError(
            f"{path} is in the {layout} layout, but the published {source.filename} is in the "
            f"{source.layout} layout, so it is not that file. Delete it (a default file is "
            "then downloaded again), or pass it as backbone_weights=<path> (weights= in "
            "load_model), which loads any supported layout."
        )
    if layout in BACKBONE_LAYOUTS:
        return load_backbone_state(model.backbone, state, str(path))
    network = convert.convert_network(state, layout)
    backbone = {k[9:]: v for k, v in network.items() if k.startswith("backbone.")}
    is_delta = source.is_delta
    if is_delta is None:
        is_delta = convert.looks_like_delta(backbone)
    if is_delta:
        load_source(model, get_backbone(model.config.backbone).weights)
        current = model.backbone.state_dict()
        for key, value in backbone.items():
            if key in current and not key.endswith(_DERIVED):
                network["backbone." + key] = current[key] + value.to(current[key].dtype)
    _load_network(model, network, f"{path} ({layout} layout)")
    return layout


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


def load_backbone_state(backbone: DinoV3ViT, state: Mapping[str, Tensor], origin: str) -> Layout:
    """Convert a backbone state dict of any layout into `backbone` exactly; returns the layout."""
    layout = convert.detect_layout(state)
    converted = convert.convert_backbone(state, layout)
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
        if key.endswith(_DERIVED):
            state[key] = value.clone()
        elif key.endswith("attn.qkv.bias") and key.replace(".bias", ".weight") in state:
            state[key] = torch.zeros_like(value)


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


def _check_keys(module: nn.Module, state: Mapping[str, Tensor], origin: str) -> None:
    """Raise a WeightsError naming missing/unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
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
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    more = len(items) - MAX_LISTED_KEYS
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"
