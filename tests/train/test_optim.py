"""Learning-rate schedule, layer-wise decay and mask annealing against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from panoptic_train.models.eomt import EoMT, EoMTConfig
from panoptic_train.train.optim import (
    TwoStageWarmupPoly,
    apply_learning_rates,
    attn_mask_probability,
    build_optimizer,
    default_annealing_windows,
    default_warmup_steps,
    scaled_lr,
    set_attn_mask_probs,
)


@pytest.mark.parametrize(
    ("step", "head", "backbone"),
    [
        (0, 0.1, 0.0),  # first head warmup step; backbone frozen
        (9, 1.0, 0.0),  # end of head warmup
        (10, 1.0, 1 / 20),  # head decay starts at 1; backbone warmup starts
        (29, (1 - 19 / 90) ** 0.9, 1.0),
        (55, (1 - 45 / 90) ** 0.9, (1 - 25 / 70) ** 0.9),
        (99, (1 - 89 / 90) ** 0.9, (1 - 69 / 70) ** 0.9),
    ],
)
def test_two_stage_warmup_poly_values(step: int, head: float, backbone: float) -> None:
    schedule = TwoStageWarmupPoly(total_steps=100, warmup_steps=(10, 20), power=0.9)
    assert math.isclose(schedule.factor(step, is_backbone=False), head, abs_tol=1e-12)
    assert math.isclose(schedule.factor(step, is_backbone=True), backbone, abs_tol=1e-12)


def test_default_warmup_scales_with_short_runs() -> None:
    assert default_warmup_steps(90_000) == (2000, 3000)
    assert default_warmup_steps(360_000) == (2000, 3000)
    assert default_warmup_steps(9_000) == (200, 300)
    assert default_warmup_steps(10) == (1, 1)


def test_annealing_windows_follow_the_recipe() -> None:
    # EoMT's COCO panoptic ViT-S config (24 epochs x 7391 steps = 177 384): blocks 1 and 2
    # anneal over steps 73 910-103 474 and 118 256-147 820; block 0 over the backbone warmup.
    assert default_annealing_windows(3, 177_384, 3000) == [
        (0, 3000),
        (73_910, 103_474),
        (118_256, 147_820),
    ]
    # EoMT's ViT-L config (12 epochs = 88 692 steps, 6 phases of 14 782): blocks 1-3 in phases
    # 2-4 (the config's windows for its blocks 1-3), the last phase unmasked.
    assert default_annealing_windows(4, 88_692, 3000) == [
        (0, 3000),
        (29_564, 44_346),
        (44_346, 59_128),
        (59_128, 73_910),
    ]


def test_attn_mask_probability() -> None:
    window = (100, 200)
    assert attn_mask_probability(99, window, 0.9) == 1.0
    assert attn_mask_probability(100, window, 0.9) == 1.0
    assert math.isclose(attn_mask_probability(150, window, 0.9), 0.5**0.9)
    assert attn_mask_probability(200, window, 0.9) == 0.0
    buffer = torch.ones(2)
    set_attn_mask_probs(buffer, 150, [(0, 100), window], 0.9)
    assert buffer.tolist() == pytest.approx([0.0, 0.5**0.9])


def test_lr_scaling_by_batch() -> None:
    assert math.isclose(scaled_lr(2e-4, 16), 2e-4)
    assert math.isclose(scaled_lr(2e-4, 4), 1e-4)


def test_layerwise_decay_and_schedule_on_eomt() -> None:
    model = EoMT(EoMTConfig("vitt16", num_classes=3, num_queries=4, image_size=(32, 32)))
    optimizer = build_optimizer(model, lr=1.0, llrd=0.5, llrd_joint_blocks=1.0, weight_decay=0.05)
    groups = {group["name"]: group for group in optimizer.param_groups}
    depth, joint = 12, 3
    for index in range(depth):
        expected = 1.0 if index >= depth - joint else 0.5 ** (depth - 1 - index)
        assert groups[f"backbone.blocks.{index}"]["base_lr"] == pytest.approx(expected)
        assert groups[f"backbone.blocks.{index}"]["is_backbone"]
    assert groups["backbone.norm"]["base_lr"] == 1.0
    assert groups["backbone.embeddings"]["base_lr"] == pytest.approx(0.5**11)
    assert groups["heads"]["base_lr"] == 1.0 and not groups["heads"]["is_backbone"]
    assert all(group["weight_decay"] == 0.05 for group in optimizer.param_groups)
    # Every trainable parameter is in exactly one group.
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    head_params = {id(p) for p in groups["heads"]["params"]}
    assert id(model.queries.weight) in head_params and id(model.class_head.weight) in head_params

    schedule = TwoStageWarmupPoly(total_steps=100, warmup_steps=(10, 20))
    apply_learning_rates(optimizer, schedule, step=0)
    assert groups["heads"]["lr"] == pytest.approx(0.1)
    assert groups["backbone.blocks.11"]["lr"] == 0.0
    apply_learning_rates(optimizer, schedule, step=19)
    assert groups["backbone.blocks.0"]["lr"] == pytest.approx(0.5**11 * 10 / 20)


@pytest.mark.parametrize(
    ("eps", "fraction"), [(1e-12, 1e-10 / (1e-10 + 1e-12)), (1e-8, 1e-10 / (1e-10 + 1e-8))]
)
def test_adam_eps_against_clipped_gradients(eps: float, fraction: float) -> None:
    """After clipping to norm 0.01, a weight behind a LayerScale of 1e-5 sees gradients of about
    1e-10. Adam's first step is lr * g / (|g| + eps): our default eps moves it at 99 % of its
    learning rate, EoMT's 1e-8 at 1 % (hand-computed)."""
    model = EoMT(EoMTConfig("vitt16", num_classes=3, num_queries=4, image_size=(32, 32)))
    optimizer = build_optimizer(
        model, lr=1e-3, llrd=1.0, llrd_joint_blocks=1.0, weight_decay=0.0, eps=eps
    )
    assert all(group["eps"] == eps for group in optimizer.param_groups)
    weight = model.backbone.blocks[0].mlp.fc1.weight
    before = weight.detach().clone()
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    weight.grad.fill_(1e-10)
    optimizer.step()
    assert (before - weight.detach()).mean().item() == pytest.approx(1e-3 * fraction, rel=1e-4)
