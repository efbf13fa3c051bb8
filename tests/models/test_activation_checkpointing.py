"""Activation checkpointing of the upscaler and mask projections: the same gradients, the
activations it saves (measured with saved-tensor hooks against `checkpointed_bytes`, and for the
upscale blocks' tails against a hand count), and the "auto" rule; `model_args` carries the
setting to the network."""

from __future__ import annotations

import pytest
import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.models import eomt
from panoptic_train.models.eomt import EoMT, EoMTConfig, checkpointed_bytes
from panoptic_train.train.config import ModelArgs
from panoptic_train.train.model_init import build_initial_model

IMAGE_SIZE = (64, 96)


def _network(tiny_archs, perturb, setting: bool | str) -> EoMT:
    torch.manual_seed(0)
    network = EoMT(EoMTConfig("test-mlp", num_classes=3, num_queries=5, image_size=IMAGE_SIZE))
    perturb(network)
    network.attn_mask_probs.fill_(1.0)  # masked attention on every query: no random draws
    network.activation_checkpointing = setting
    return network.train()


def _loss(network: EoMT, images: torch.Tensor) -> torch.Tensor:
    output = network(images)
    return sum(
        masks.logits().square().mean() + classes.mean()
        for masks, classes in zip(output.mask_projections, output.class_logits, strict=True)
    )


def _saved_bytes(network: EoMT, images: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _loss(network, images)
    return sum(storages.values())


def test_checkpointing_gives_the_same_gradients(tiny_archs, perturb, monkeypatch) -> None:
    monkeypatch.setattr(eomt, "_available_memory", lambda device: 10**12)  # "auto": tails only
    images = torch.randn(2, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    gradients = []
    for setting in (False, True, "auto"):
        network = _network(tiny_archs, perturb, setting)
        _loss(network, images).backward()
        gradients.append({name: p.grad for name, p in network.named_parameters()})
    for recomputed in gradients[1:]:
        for name, expected in gradients[0].items():
            torch.testing.assert_close(recomputed[name], expected, rtol=1e-5, atol=1e-7)


def test_checkpointing_frees_the_estimated_activations(tiny_archs, perturb) -> None:
    images = torch.randn(2, 3, *IMAGE_SIZE)
    kept = _saved_bytes(_network(tiny_archs, perturb, False), images)
    checkpointed = _saved_bytes(_network(tiny_archs, perturb, True), images)
    estimate = checkpointed_bytes(_network(tiny_archs, perturb, False), 2, IMAGE_SIZE)
    assert kept - checkpointed == pytest.approx(estimate, rel=0.1)


def test_auto_recomputes_the_upscale_tails_two_maps_per_block(
    tiny_archs, perturb, monkeypatch
) -> None:
    monkeypatch.setattr(eomt, "_available_memory", lambda device: 10**12)
    images = torch.randn(2, 3, *IMAGE_SIZE)
    kept = _saved_bytes(_network(tiny_archs, perturb, False), images)
    network = _network(tiny_archs, perturb, "auto")
    tails = _saved_bytes(network, images)
    # Per prediction and upscale block, GELU's output and the depthwise conv's output are no
    # longer kept, nor LayerNorm's mean and 1/std per pixel: two (2, D, h, w) float maps and two
    # (2, h, w) at 8x12 and at 16x24 (the 64x96 input at 1/8 and 1/4). Autograd's saved
    # references to the two blocks' depthwise and LayerNorm parameters go too (held once).
    predictions = network.config.num_joint_blocks + 1
    dim = network.backbone.embed_dim
    pixels = 2 * (8 * 12 + 16 * 24)
    parameters = 2 * (dim * 3 * 3 + 2 * dim)
    assert kept - tails == 4 * (predictions * (2 * dim + 2) * pixels + parameters)


@pytest.mark.parametrize(("available", "expected"), [(10**12, False), (10**6, True), (None, False)])
def test_auto_checkpoints_when_the_activations_exceed_a_quarter_of_the_memory(
    tiny_archs, perturb, monkeypatch, available: int | None, expected: bool
) -> None:
    calls = []
    monkeypatch.setattr(eomt, "_available_memory", lambda device: calls.append(device) or available)
    network = _network(tiny_archs, perturb, "auto")
    for _ in range(2):
        _loss(network, torch.randn(1, 3, *IMAGE_SIZE))
    assert network._checkpoint_decision is expected
    assert len(calls) == 1  # decided once
    with torch.no_grad():
        network(torch.randn(1, 3, *IMAGE_SIZE))  # no decision outside training with gradients


def test_model_args_set_the_networks_checkpointing() -> None:
    classes = ClassMapping(class_ids=(1, 2), names=("a", "b"), is_thing=(True, False))
    for setting in (True, False, "auto"):
        args = ModelArgs(backbone_weights=None, num_queries=4, activation_checkpointing=setting)
        initial = build_initial_model("dinov3/vitt16-eomt", classes, args, (64, 64))
        assert initial.network.activation_checkpointing == setting
    with pytest.raises(ValueError, match="activation_checkpointing"):
        ModelArgs(activation_checkpointing="sometimes")
