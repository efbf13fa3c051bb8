"""Tiny DINOv3 sizes registered for the duration of a test, and helpers to build peers."""

from __future__ import annotations

import pytest
import torch

from panoptic_train.models.backbones import BACKBONES, Backbone, DinoV3Arch, WeightSource

# Same structure as the real sizes (4 heads -> head dim 16, RoPE needs a multiple of 4).
TINY_ARCHS = {
    "test-mlp": DinoV3Arch(64, 4, 4, 128, swiglu=False),
    "test-glu": DinoV3Arch(64, 4, 4, 96, swiglu=True),
}


@pytest.fixture
def tiny_archs(monkeypatch: pytest.MonkeyPatch) -> dict[str, DinoV3Arch]:
    for name, arch in TINY_ARCHS.items():
        register_backbone(monkeypatch, name, arch)
    return TINY_ARCHS


def register_backbone(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    arch: DinoV3Arch,
    weights: WeightSource | None = None,
) -> Backbone:
    """A backbone record for the test's duration; by default its pretrained file is undeclared."""
    backbone = Backbone(name, arch, 2, 1_000, weights or WeightSource(filename=f"{name}.pth"))
    monkeypatch.setitem(BACKBONES, name, backbone)
    return backbone


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move every parameter off its init (LayerScale 1e-5, zero biases would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture
def perturb():
    return perturb_


def transformers_sizes(arch: DinoV3Arch) -> dict[str, int]:
    """The arguments of a transformers DINOv3 (or EoMT-DINOv3) config for `arch`'s sizes."""
    return {
        "hidden_size": arch.embed_dim,
        "num_hidden_layers": arch.depth,
        "num_attention_heads": arch.num_heads,
        "intermediate_size": arch.ffn_hidden,
        "num_register_tokens": 4,
        "image_size": 64,
    }
