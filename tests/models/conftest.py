"""Tiny DINOv3 sizes registered for the duration of a test, and helpers to build peers."""

from __future__ import annotations

import pytest
import torch

from panoptic_train.models.dinov3 import DINOV3_ARCHS, DinoV3Arch

# Same structure as the real sizes (4 heads -> head dim 16, RoPE needs a multiple of 4).
TINY_ARCHS = {
    "test-mlp": DinoV3Arch(64, 4, 4, 128, swiglu=False),
    "test-glu": DinoV3Arch(64, 4, 4, 96, swiglu=True),
}


@pytest.fixture
def tiny_archs(monkeypatch: pytest.MonkeyPatch) -> dict[str, DinoV3Arch]:
    for name, arch in TINY_ARCHS.items():
        monkeypatch.setitem(DINOV3_ARCHS, name, arch)
    return TINY_ARCHS


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move every parameter off its init (LayerScale 1e-5, zero biases would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture
def perturb():
    return perturb_
