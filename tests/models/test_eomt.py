"""EoMT network: agreement with transformers' EomtDinov3ForUniversalSegmentation, the training and
eval output contract, masked attention that really masks, and a traceable eval path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from panoptic_train.errors import ConfigError
from panoptic_train.models import hub, weights
from panoptic_train.models.backbones import DinoV3Arch, WeightSource
from panoptic_train.models.eomt import EoMT, EoMTConfig, _upsample_2x2

from .conftest import register_backbone, transformers_sizes

transformers = pytest.importorskip("transformers", minversion="5.1")


def tiny_eomt(arch: str = "test-mlp", queries: int = 7, joint_blocks: int = 2) -> EoMT:
    config = EoMTConfig(arch, num_classes=5, num_queries=queries, num_joint_blocks=joint_blocks)
    return EoMT(config)


def images(batch: int = 2, height: int = 64, width: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def transformers_eomt(arch: DinoV3Arch, perturb) -> torch.nn.Module:
    """A random transformers EomtDinov3ForUniversalSegmentation of our test arch's sizes, with
    its masks annealed (its eval path then computes no masks either, as ours)."""
    # MLP backbone only: transformers' EoMT applies `hidden_act` to the heads too, so a SwiGLU
    # (silu) backbone would put silu in its heads, where EoMT has GELU. The gated backbone's
    # parity is covered by test_dinov3.
    config = transformers.EomtDinov3Config(
        **transformers_sizes(arch),
        num_blocks=2,
        num_queries=7,
        num_labels=5,
        layer_norm_eps=1e-5,  # DINOv3's value; the config's default is DINOv2's 1e-6
    )
    peer = transformers.EomtDinov3ForUniversalSegmentation(config).eval()
    perturb(peer)
    peer.attn_mask_probs.zero_()
    return peer


def assert_same_logits(model: EoMT, peer: torch.nn.Module) -> None:
    x = images()
    with torch.no_grad():
        expected = peer(pixel_values=x)
        actual = model.eval()(x)
    assert len(actual.class_logits) == len(actual.mask_logits) == 1
    torch.testing.assert_close(
        actual.class_logits[0], expected.class_queries_logits, rtol=0, atol=1e-4
    )
    torch.testing.assert_close(
        actual.mask_logits[0], expected.masks_queries_logits, rtol=0, atol=1e-4
    )


def test_transformers_eomt_weights_give_identical_logits(
    tmp_path: Path, tiny_archs, perturb
) -> None:
    peer = transformers_eomt(tiny_archs["test-mlp"], perturb)
    peer.save_pretrained(tmp_path)
    model = tiny_eomt("test-mlp")
    assert weights.load_weights(model, tmp_path / "model.safetensors") == "hf-eomt"
    assert_same_logits(model, peer)


# transformers' EoMT names -> those of the EoMT authors' checkpoints (github.com/tue-mps/eomt:
# their training module's `network`, whose ViT wrapper renames transformers' DINOv3 embeddings
# `patch_embed` and its layers `blocks`), as transformers' conversion script reads them.
_TO_AUTHORS = (
    (r"^embeddings\.(cls_token|register_tokens)$", r"network.encoder.backbone.patch_embed.\1"),
    (r"^embeddings\.patch_embeddings\.", "network.encoder.backbone.patch_embed.patch_embeddings."),
    (r"^layers\.(\d+)\.", r"network.encoder.backbone.blocks.\1."),
    (r"^layernorm\.", "network.encoder.backbone.norm."),
    (r"^query\.", "network.q."),
    (r"^class_predictor\.", "network.class_head."),
    (r"^mask_head\.fc1\.", "network.mask_head.0."),
    (r"^mask_head\.fc2\.", "network.mask_head.2."),
    (r"^mask_head\.fc3\.", "network.mask_head.4."),
    (r"^upscale_block\.block\.(\d+)\.layernorm2d\.", r"network.upscale.\1.norm."),
    (r"^upscale_block\.block\.(\d+)\.", r"network.upscale.\1."),
    (r"^attn_mask_probs$", "network.attn_mask_probs"),
)


def test_the_eomt_authors_checkpoints_give_identical_logits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_archs, perturb
) -> None:
    """Their files store the backbone as differences to DINOv3: loading adds the size's
    pretrained backbone (here a transformers DINOv3 file in the cache, declared as the test
    size's default), whether the file is named by the user or declared as a default source."""
    arch = tiny_archs["test-mlp"]
    peer = transformers_eomt(arch, perturb)
    pretrained = transformers.DINOv3ViTModel(
        transformers.DINOv3ViTConfig(**transformers_sizes(arch))
    )
    perturb(pretrained, seed=3)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(hub.CACHE_ENV, str(cache))
    torch.save(pretrained.state_dict(), cache / "pretrained.bin")
    register_backbone(
        monkeypatch, "test-mlp", arch, WeightSource("pretrained.bin", layout="hf", is_delta=False)
    )
    # transformers' DINOv3 names its layers `[model.]layer`, its EoMT `layers`; its final norm
    # `norm`, its EoMT `layernorm`.
    renames = ((r"^(model\.)?layer\.", "layers."), (r"^norm\.", "layernorm."))
    base = {}
    for key, value in pretrained.state_dict().items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        base[key] = value
    state = {
        "network.encoder.pixel_mean": torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1),
        "network.encoder.pixel_std": torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1),
        "criterion.empty_weight": torch.ones(6),
    }
    for key, value in peer.state_dict().items():
        if key == "embeddings.mask_token" or key.startswith("criterion."):
            continue  # their ViT wrapper deletes the mask token
        pattern, replacement = next(rule for rule in _TO_AUTHORS if re.match(rule[0], key))
        renamed = re.sub(pattern, replacement, key)
        is_backbone = renamed.startswith("network.encoder.backbone.")
        state[renamed] = value - base[key] if is_backbone else value
    torch.save({"state_dict": state}, tmp_path / "pytorch_model.bin")

    named = tiny_eomt("test-mlp")
    assert weights.load_weights(named, tmp_path / "pytorch_model.bin") == "eomt-authors"
    assert_same_logits(named, peer)
    (tmp_path / "pytorch_model.bin").rename(cache / "authors.bin")
    declared = tiny_eomt("test-mlp")
    source = WeightSource("authors.bin", layout="eomt-authors", is_delta=True)
    assert weights.load_source(declared, source) == "eomt-authors"
    assert_same_logits(declared, peer)


def test_training_returns_one_prediction_per_joint_block_plus_final(tiny_archs) -> None:
    model = tiny_eomt(joint_blocks=3).train()
    out = model(images(height=48, width=80))
    assert len(out.class_logits) == len(out.mask_projections) == 4
    assert out.mask_logits == []
    assert all(t.shape == (2, 7, 6) for t in out.class_logits)
    assert all(masks.logits().shape == (2, 7, 12, 20) for masks in out.mask_projections)
    assert model.state_dict()["attn_mask_probs"].shape == (3,)


def test_eval_returns_only_the_final_prediction(tiny_archs) -> None:
    model = tiny_eomt(joint_blocks=3).eval()
    with torch.no_grad():
        out = model(images(height=48, width=80))
    assert len(out.class_logits) == len(out.mask_logits) == 1
    assert out.mask_projections == []
    assert out.mask_logits[0].shape == (2, 7, 12, 20)


def _patch_gradients(model: EoMT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a model with one joint block (the last block): whether each (image, query, patch)
    is outside the query's previous mask (logit <= 0 on the patch grid), and the gradient norm of
    the query's final class logits w.r.t. each patch token entering that block."""
    captured: list[torch.Tensor] = []

    def keep_input(module: torch.nn.Module, args: tuple) -> None:
        args[0].retain_grad()
        captured.append(args[0])

    handle = model.backbone.blocks[-1].register_forward_pre_hook(keep_input)
    out = model(x)
    handle.remove()
    grid = (x.shape[2] // 16, x.shape[3] // 16)
    previous = F.interpolate(
        out.mask_projections[0].logits(), size=grid, mode="bilinear", align_corners=False
    )
    excluded = previous.flatten(2) <= 0  # (B, Q, patches)
    queries = model.config.num_queries
    norms = []
    for query in range(queries):
        (grad,) = torch.autograd.grad(
            out.class_logits[-1][:, query].sum(), captured[0], retain_graph=True
        )
        norms.append(grad[:, queries + 5 :].norm(dim=-1))  # (B, patches)
    return excluded, torch.stack(norms, dim=1)


def test_masked_attention_blocks_gradient_from_excluded_patches(tiny_archs) -> None:
    model = tiny_eomt(queries=6, joint_blocks=1).train()
    model.attn_mask_probs.fill_(1.0)
    excluded, grads = _patch_gradients(model, images(height=64, width=80))
    assert excluded.any() and (~excluded).any()
    assert torch.all(grads[excluded] == 0)
    # a query still receives gradient from the patches its mask covers
    covered = (~excluded).any(dim=-1)
    assert torch.all((grads * ~excluded).sum(dim=-1)[covered] > 0)


def test_each_query_keeps_its_mask_with_probability_p(tiny_archs) -> None:
    torch.manual_seed(0)
    model = tiny_eomt(queries=24, joint_blocks=1).train()
    model.attn_mask_probs.fill_(0.5)
    excluded, grads = _patch_gradients(model, images(batch=6, height=48, width=48))
    restricted = excluded.any(dim=-1)
    kept = torch.all((grads * excluded) == 0, dim=-1)[restricted]
    assert kept.numel() > 60
    assert 0.3 < kept.float().mean().item() < 0.7


def test_probability_zero_equals_the_unmasked_eval_path(tiny_archs) -> None:
    model = tiny_eomt(joint_blocks=2)
    model.backbone.rope_embed.rescale = None  # make training mode deterministic
    model.attn_mask_probs.zero_()
    x = images(height=48, width=64)
    with torch.no_grad():
        trained = model.train()(x)
        evaluated = model.eval()(x)
    assert len(trained.class_logits) == 3
    torch.testing.assert_close(trained.class_logits[-1], evaluated.class_logits[0])
    torch.testing.assert_close(trained.mask_projections[-1].logits(), evaluated.mask_logits[0])


@pytest.mark.parametrize("channels_last", [True, False])
def test_upscaler_matmul_equals_the_transposed_convolution(channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, 2, 2, generator=generator, requires_grad=True)
    bias = torch.randn(5, generator=generator, requires_grad=True)
    x = torch.randn(2, 6, 3, 4, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    upsampled = _upsample_2x2(x, weight, bias)
    expected = F.conv_transpose2d(x, weight, bias, stride=2)
    torch.testing.assert_close(upsampled, expected)
    assert upsampled.is_contiguous(memory_format=torch.channels_last)
    output_grad = torch.randn(expected.shape, generator=generator)
    got = torch.autograd.grad(upsampled, (x, weight, bias), output_grad)
    want = torch.autograd.grad(expected, (x, weight, bias), output_grad)
    for actual, reference in zip(got, want, strict=True):
        torch.testing.assert_close(actual, reference)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_eval_path_traces_once_and_runs_at_other_sizes(tiny_archs) -> None:
    # ONNX export (TorchScript exporter) traces the eval path once; a dynamic batch and image
    # size then need shape-generic code without Python branches on tensor values.
    model = tiny_eomt().eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.network(x)
            return out.class_logits[-1], out.mask_logits[-1]

    with torch.no_grad():
        traced = torch.jit.trace(Logits(), images(batch=1, height=32, width=48))
        other = images(batch=3, height=64, width=32)
        for got, want in zip(traced(other), Logits()(other), strict=True):
            torch.testing.assert_close(got, want)


def test_config_round_trips_through_plain_values(tiny_archs) -> None:
    config = EoMTConfig("test-mlp", num_classes=4, num_queries=9, image_size=(32, 48))
    data = config.to_dict()
    assert data == {
        "backbone": "test-mlp",
        "num_classes": 4,
        "num_queries": 9,
        "num_joint_blocks": 3,
        "image_size": [32, 48],
    }
    assert EoMTConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_joint_blocks": 5}, "exceeds the 4 blocks"),
        ({"image_size": (40, 48)}, "multiples of 16"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"backbone": "vitz16"}, "Unknown DINOv3 backbone 'vitz16'"),
    ],
)
def test_config_rejects_bad_values(tiny_archs, changes: dict, message: str) -> None:
    values = {"backbone": "test-mlp", "num_classes": 3, **changes}
    with pytest.raises(ConfigError, match=message):
        EoMTConfig(**values)


def test_config_from_dict_rejects_unknown_keys(tiny_archs) -> None:
    with pytest.raises(ConfigError, match=r"Unknown EoMT config keys \['patch_size'\]"):
        EoMTConfig.from_dict({"backbone": "test-mlp", "num_classes": 3, "patch_size": 14})
