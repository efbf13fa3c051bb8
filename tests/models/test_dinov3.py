"""DINOv3 ViT: RoPE as specified, and exact agreement with transformers' DINOv3ViTModel when
its weights are loaded from Hugging Face, Meta and timm layouts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from panoptic_train.errors import ConfigError
from panoptic_train.models import weights
from panoptic_train.models.dinov3 import DinoV3ViT, LayerScale
from panoptic_train.models.eomt import EoMT, EoMTConfig

from .conftest import transformers_sizes

transformers = pytest.importorskip("transformers")


def hf_dinov3(arch_name: str, archs: dict, perturb) -> torch.nn.Module:
    """A random transformers DINOv3ViTModel with the same sizes as our test arch."""
    arch = archs[arch_name]
    config = transformers.DINOv3ViTConfig(
        **transformers_sizes(arch),
        use_gated_mlp=arch.swiglu,
        hidden_act="silu" if arch.swiglu else "gelu",
    )
    model = transformers.DINOv3ViTModel(config).eval()
    perturb(model)
    return model


def network_for(arch_name: str) -> EoMT:
    return EoMT(EoMTConfig(arch_name, num_classes=3, num_queries=5, num_joint_blocks=2)).eval()


def images(height: int = 48, width: int = 80) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch_name", ["test-mlp", "test-glu"])
@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
def test_hf_weights_give_identical_features(
    tmp_path: Path, tiny_archs, perturb, arch_name: str, file_format: str
) -> None:
    peer = hf_dinov3(arch_name, tiny_archs, perturb)
    if file_format == "safetensors":
        peer.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(peer.state_dict(), path)
    model = network_for(arch_name)
    assert weights.load_weights(model, path) == "hf"
    x = images()  # 3 x 5 patches: non-square grid
    with torch.no_grad():
        expected = peer(pixel_values=x).last_hidden_state
        actual = model.backbone(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def meta_layout(peer: torch.nn.Module, periods: torch.Tensor) -> dict[str, torch.Tensor]:
    """Re-key a transformers DINOv3 state dict into Meta's `.pth` layout (models/convert.py)."""
    state = peer.state_dict()
    dim = state["embeddings.cls_token"].shape[-1]
    out = {
        "cls_token": state["embeddings.cls_token"],
        "storage_tokens": state["embeddings.register_tokens"],
        "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.bias"],
        "rope_embed.periods": periods,
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
        # the 7B model's extra norm for local crops, unused at inference
        "local_cls_norm.weight": torch.ones(dim),
        "local_cls_norm.bias": torch.zeros(dim),
    }
    gated = "model.layer.0.mlp.gate_proj.weight" in state
    mlp = (
        {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
        if gated
        else {"up_proj": "fc1", "down_proj": "fc2"}
    )
    index = 0
    while f"model.layer.{index}.norm1.weight" in state:
        hf, meta = f"model.layer.{index}.", f"blocks.{index}."
        att = hf + "attention."
        out[meta + "attn.qkv.weight"] = torch.cat([state[att + f"{p}_proj.weight"] for p in "qkv"])
        # a non-zero key bias that the mask must cancel
        out[meta + "attn.qkv.bias"] = torch.cat(
            [state[att + "q_proj.bias"], torch.full((dim,), 3.0), state[att + "v_proj.bias"]]
        )
        out[meta + "attn.qkv.bias_mask"] = torch.cat(
            [torch.ones(dim), torch.zeros(dim), torch.ones(dim)]
        )
        out[meta + "attn.proj.weight"] = state[att + "o_proj.weight"]
        out[meta + "attn.proj.bias"] = state[att + "o_proj.bias"]
        out[meta + "ls1.gamma"] = state[hf + "layer_scale1.lambda1"]
        out[meta + "ls2.gamma"] = state[hf + "layer_scale2.lambda1"]
        for norm in ("norm1", "norm2"):
            for param in ("weight", "bias"):
                out[f"{meta}{norm}.{param}"] = state[f"{hf}{norm}.{param}"]
        for hf_name, meta_name in mlp.items():
            for param in ("weight", "bias"):
                out[f"{meta}mlp.{meta_name}.{param}"] = state[f"{hf}mlp.{hf_name}.{param}"]
        index += 1
    return out


def reference_periods(head_dim: int) -> torch.Tensor:
    """DINOv3: base 100, head_dim / 4 periods, base ** (2i / (head_dim / 2))."""
    return torch.tensor([100.0 ** (2 * i / (head_dim / 2)) for i in range(head_dim // 4)])


@pytest.mark.parametrize("arch_name", ["test-mlp", "test-glu"])
def test_meta_pth_gives_identical_features(
    tmp_path: Path, tiny_archs, perturb, arch_name: str
) -> None:
    peer = hf_dinov3(arch_name, tiny_archs, perturb)
    path = tmp_path / "dinov3_test_pretrain.pth"
    torch.save(meta_layout(peer, reference_periods(16)), path)
    model = network_for(arch_name)
    assert weights.load_weights(model, path) == "meta"
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(
            model.backbone(x), peer(pixel_values=x).last_hidden_state, rtol=0, atol=1e-5
        )


def test_meta_rope_periods_are_taken_from_the_file(tmp_path: Path, tiny_archs, perturb) -> None:
    # Meta stores bfloat16-rounded periods; reproducing Meta's model means using them.
    peer = hf_dinov3("test-mlp", tiny_archs, perturb)
    stored = reference_periods(16).to(torch.bfloat16)
    path = tmp_path / "meta.pth"
    torch.save(meta_layout(peer, stored), path)
    model = network_for("test-mlp")
    weights.load_weights(model, path)
    assert torch.equal(model.backbone.rope_embed.periods, stored.float())


def test_timm_weights_give_identical_features(perturb) -> None:
    timm = pytest.importorskip("timm")
    from panoptic_train.models.backbones import DinoV3Arch

    for name in ("vit_small_patch16_dinov3", "vit_small_plus_patch16_dinov3"):
        peer = timm.create_model(name, num_classes=0, embed_dim=64, num_heads=4, depth=2).eval()
        perturb(peer)
        state = peer.state_dict()
        swiglu = "blocks.0.mlp.fc1_g.weight" in state
        hidden = state["blocks.0.mlp.fc1_g.weight" if swiglu else "blocks.0.mlp.fc1.weight"]
        arch = DinoV3Arch(64, 2, 4, hidden.shape[0], swiglu=swiglu)
        backbone = DinoV3ViT(arch).eval()
        assert weights.load_backbone_state(backbone, state, name) == "timm"
        x = images()
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), peer.forward_features(x), rtol=0, atol=1e-5)


def test_rope_angles_follow_patch_centre_formula(tiny_archs) -> None:
    backbone = DinoV3ViT(tiny_archs["test-mlp"]).eval()
    sin, cos = backbone.rope(2, 3)
    periods = reference_periods(16)
    # patch (row 1, col 2) of a 2 x 3 grid: centre y = +0.5, x = 2/3
    y, x = 2 * 1.5 / 2 - 1, 2 * 2.5 / 3 - 1
    half = [2 * math.pi * y / p for p in periods] + [2 * math.pi * x / p for p in periods]
    angles = torch.tensor(half + half)
    torch.testing.assert_close(sin[5], torch.sin(angles))
    torch.testing.assert_close(cos[5], torch.cos(angles))


def test_rope_coordinates_are_rescaled_only_while_training(tiny_archs) -> None:
    backbone = DinoV3ViT(tiny_archs["test-mlp"])

    def slowest_angle(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        # first patch, slowest frequency: the angle stays well below pi, so atan2 recovers it
        return torch.atan2(sin[0, 3], cos[0, 3])

    eval_angle = slowest_angle(*backbone.eval().rope(4, 4))
    backbone.train()
    factors = [float(slowest_angle(*backbone.rope(4, 4)) / eval_angle) for _ in range(40)]
    assert all(0.5 - 1e-4 <= f <= 2.0 + 1e-4 for f in factors)
    assert min(factors) < 0.9 and max(factors) > 1.1  # log-uniform over [0.5, 2]
    assert float(slowest_angle(*backbone.eval().rope(4, 4))) == float(eval_angle)


def test_any_multiple_of_16_works_and_other_sizes_are_rejected(tiny_archs) -> None:
    backbone = DinoV3ViT(tiny_archs["test-mlp"]).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 32, 112)).shape == (1, 5 + 2 * 7, 64)
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        backbone(torch.randn(1, 3, 40, 32))


@pytest.mark.parametrize(
    ("arch", "expected_millions"),
    [("vitt16", 6.0), ("vitt16plus", 7.7), ("vits16", 23.4), ("vitb16", 92.5), ("vitl16", 315.1)],
)
def test_parameter_counts_match_published_sizes(arch: str, expected_millions: float) -> None:
    with torch.device("meta"):
        model = EoMT(EoMTConfig(arch, num_classes=133, num_joint_blocks=3))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    # 0.5 %, but never tighter than the 0.05 M rounding of the published one-decimal figures
    assert abs(millions - expected_millions) <= max(0.005 * expected_millions, 0.05), millions


def test_layer_scale_folded_into_the_linear_layer_equals_scaling_its_output() -> None:
    """Values and gradients (input, weight, bias, gamma) as `layer(x) * gamma` computes them."""
    generator = torch.Generator().manual_seed(0)
    layer, scale = torch.nn.Linear(12, 8), LayerScale(8)
    with torch.no_grad():
        scale.gamma.copy_(torch.rand(8, generator=generator) + 0.5)
    x = torch.randn(2, 5, 12, generator=generator, requires_grad=True)
    upstream = torch.randn(2, 5, 8, generator=generator)
    leaves = (x, layer.weight, layer.bias, scale.gamma)
    folded = torch.autograd.grad((scale.linear(layer, x) * upstream).sum(), leaves)
    reference = torch.autograd.grad((layer(x) * scale.gamma * upstream).sum(), leaves)
    torch.testing.assert_close(scale.linear(layer, x), layer(x) * scale.gamma)
    for mine, expected in zip(folded, reference, strict=True):
        torch.testing.assert_close(mine, expected)
