"""Mask-classification loss against hand-computed values, and the same loss from the network's
factored mask logits as from dense ones."""

from __future__ import annotations

import math

import torch

from panoptic_train.models.eomt import EoMT, EoMTConfig, MaskProjection
from panoptic_train.train.loss import (
    MaskClassificationLoss,
    dice_loss,
    sigmoid_bce_loss,
)
from panoptic_train.train.points import (
    logits_at,
    shared_logits_at,
    uncertain_points,
    valid_pixels,
)

H = W = 32


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_and_dice_match_hand_computation() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # Per-mask mean BCE: (ln 2 + softplus(2)) / 2 and (softplus(1) + softplus(-1)) / 2
    bce0 = (math.log(2) + _softplus(2)) / 2
    bce1 = (_softplus(1) + _softplus(-1)) / 2
    assert math.isclose(
        sigmoid_bce_loss(logits, targets, 2.0).item(), (bce0 + bce1) / 2, rel_tol=1e-6
    )
    s = [1 / (1 + math.exp(-v)) for v in (0.0, 2.0, -1.0, 1.0)]
    dice0 = 1 - (2 * s[0] + 1) / (s[0] + s[1] + 1 + 1)
    dice1 = 1 - (2 * (s[2] + s[3]) + 1) / (s[2] + s[3] + 2 + 1)
    assert math.isclose(dice_loss(logits, targets, 4.0).item(), (dice0 + dice1) / 4, rel_tol=1e-6)


def _example(
    mask_level: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """3 queries, 2 classes, one target of class 1 covering the whole image. Pixels x >= 20 are
    ignored; there the target is 1 but the logits are -10, so sampling them would blow up BCE.
    Query 0 predicts class 1 and a mask of constant logit `mask_level` on every valid pixel."""
    class_logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]])
    mask_logits = torch.full((1, 3, H // 4, W // 4), -10.0)
    mask_logits[0, 0, :, :6] = mask_level  # logit cells 0..5 cover every point with x < 20
    ignore = torch.zeros(H, W, dtype=torch.bool)
    ignore[:, 20:] = True
    target = {
        "masks": torch.ones(1, H, W, dtype=torch.bool),
        "labels": torch.tensor([1]),
        "ignore": ignore,
    }
    return class_logits, mask_logits, target


def _expected_terms(
    class_logits: torch.Tensor,
    mask_level: float,
    num_points: int,
    num_masks: float,
    class_total: float = 1 + 0.2,
):
    def ce(logits: list[float], label: int) -> float:
        return -logits[label] + math.log(sum(math.exp(v) for v in logits))

    rows = class_logits[0].tolist()
    # Query 0 matched to class 1 (weight 1); queries 1, 2 are "no object" (index 2, weight 0.1).
    loss_class = (ce(rows[0], 1) + 0.1 * ce(rows[1], 2) + 0.1 * ce(rows[2], 2)) / class_total
    loss_mask = _softplus(-mask_level) / num_masks
    s = 1 / (1 + math.exp(-mask_level))
    loss_dice = (1 - (2 * s * num_points + 1) / (s * num_points + num_points + 1)) / num_masks
    return loss_class, loss_mask, loss_dice


def test_loss_matches_closed_form_and_never_samples_ignored_pixels() -> None:
    torch.manual_seed(0)
    class_logits, mask_logits, target = _example(mask_level=1.5)
    loss = MaskClassificationLoss(num_classes=2, num_points=500)
    out = loss([class_logits], [mask_logits], [target])
    loss_class, loss_mask, loss_dice = _expected_terms(class_logits, 1.5, 500, 1.0)
    assert math.isclose(out.terms["loss_class"].item(), loss_class, rel_tol=1e-5)
    assert math.isclose(out.terms["loss_mask"].item(), loss_mask, rel_tol=1e-5)
    assert math.isclose(out.terms["loss_dice"].item(), loss_dice, rel_tol=1e-5)
    expected_total = 2 * loss_class + 5 * loss_mask + 5 * loss_dice
    assert math.isclose(out.total.item(), expected_total, rel_tol=1e-5)


def test_deep_supervision_sums_every_prediction_and_names_blocks() -> None:
    torch.manual_seed(0)
    levels = [1.0, 2.0, 3.0]
    examples = [_example(level) for level in levels]
    target = examples[0][2]
    loss = MaskClassificationLoss(num_classes=2, num_points=300)
    out = loss([e[0] for e in examples], [e[1] for e in examples], [target], first_joint_block=9)
    expected = 0.0
    for class_logits, level in zip([e[0] for e in examples], levels, strict=True):
        c, m, d = _expected_terms(class_logits, level, 300, 1.0)
        expected += 2 * c + 5 * m + 5 * d
    assert math.isclose(out.total.item(), expected, rel_tol=1e-5)
    assert set(out.terms) == {
        f"loss_{kind}{suffix}"
        for kind in ("class", "mask", "dice")
        for suffix in ("_block9", "_block10", "")
    }


def test_terms_are_normalised_by_the_global_batch_across_devices() -> None:
    torch.manual_seed(0)
    class_logits, mask_logits, target = _example(2.0)
    # This device has 1 mask and class weights 1 + 2 x 0.1; a simulated second device 7 masks
    # and class weights 4.6. Per device, half the global totals: 4 masks and 2.9.
    out = MaskClassificationLoss(num_classes=2, num_points=200)(
        [class_logits],
        [mask_logits],
        [target],
        all_reduce_sum=lambda counts: counts + torch.tensor([7.0, 4.6], dtype=counts.dtype),
        world_size=2,
    )
    loss_class, loss_mask, loss_dice = _expected_terms(class_logits, 2.0, 200, 4.0, 2.9)
    assert math.isclose(out.terms["loss_mask"].item(), loss_mask, rel_tol=1e-5)
    assert math.isclose(out.terms["loss_dice"].item(), loss_dice, rel_tol=1e-5)
    assert math.isclose(out.terms["loss_class"].item(), loss_class, rel_tol=1e-5)


def test_image_without_targets_learns_no_object_and_keeps_gradients() -> None:
    class_logits = torch.randn(1, 4, 3, requires_grad=True)
    mask_logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    target = {
        "masks": torch.zeros(0, H, W, dtype=torch.bool),
        "labels": torch.zeros(0, dtype=torch.long),
        "ignore": torch.zeros(H, W, dtype=torch.bool),
    }
    out = MaskClassificationLoss(num_classes=2, num_points=100)(
        [class_logits], [mask_logits], [target]
    )
    expected = torch.nn.functional.cross_entropy(class_logits[0], torch.full((4,), 2))
    assert torch.allclose(out.terms["loss_class"], expected)
    assert out.terms["loss_mask"].item() == 0.0
    out.total.backward()
    assert mask_logits.grad is not None and class_logits.grad is not None


def test_importance_sampling_prefers_uncertain_pixels_and_skips_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.full((2, H // 4, W // 4), 8.0)
    logits[:, :, 2:6] = 0.0  # exactly 0 (most uncertain) for pixel columns 10..21
    ignore = torch.zeros(H, W, dtype=torch.bool)
    ignore[:, 12:16] = True
    points = uncertain_points(logits, valid_pixels(ignore), H, W, 1000, 3.0, 0.75)
    cols = points.pixels % W
    assert not ignore.flatten()[points.pixels].any()
    assert points.pixels.shape == (2, 1000)
    in_uncertain = ((cols >= 10) & (cols <= 21)).float().mean(1)
    assert (in_uncertain >= 0.75).all()
    # Coordinates fall inside their pixel.
    assert torch.equal((points.xy[..., 0] * W).floor().long(), cols)
    assert torch.equal((points.xy[..., 1] * H).floor().long(), points.pixels // W)


def test_point_sampling_matches_grid_sample_values_and_gradients() -> None:
    """The gather-based bilinear sampling equals torch's grid_sample (align_corners=False,
    border padding), including points in the outer half-cells."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 9, generator=gen, requires_grad=True)
    xy = torch.rand(5, 40, 2, generator=gen)
    xy[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.01, 0.99], [0.999, 0.02]])
    reference = torch.nn.functional.grid_sample(
        logits[:, None], xy[:, None] * 2 - 1, padding_mode="border", align_corners=False
    )[:, 0, 0]
    sampled = logits_at(logits, xy)
    torch.testing.assert_close(sampled, reference)
    # Shared points: every mask sampled at mask 0's points.
    shared_reference = torch.nn.functional.grid_sample(
        logits[None], xy[None, :1] * 2 - 1, padding_mode="border", align_corners=False
    )[0, :, 0]
    torch.testing.assert_close(shared_logits_at(logits, xy[0]), shared_reference)
    (grad,) = torch.autograd.grad(sampled.sum(), logits)
    (reference_grad,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(grad, reference_grad)


def test_ignored_pixels_are_negatives_when_sampled_over_the_whole_crop() -> None:
    """One target covering x < 20, the pixels x >= 20 ignored, and query 0 predicting logit 10
    everywhere. "skip" samples only the target: BCE softplus(-10) = 4.5e-5. "negative" (EoMT)
    samples the whole crop uniformly (constant logits leave no uncertain points to prefer), so
    12/32 = 37.5 % of the points are negatives at softplus(10) = 10.00005: BCE 3.75."""
    class_logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]])
    mask_logits = torch.full((1, 3, H // 4, W // 4), -10.0)
    mask_logits[0, 0] = 10.0
    masks = torch.zeros(1, H, W, dtype=torch.bool)
    masks[0, :, :20] = True
    target = {"masks": masks, "labels": torch.tensor([1]), "ignore": ~masks[0]}
    bce = {}
    for ignored in (False, True):
        torch.manual_seed(0)
        loss = MaskClassificationLoss(num_classes=2, num_points=4000, sample_ignored_pixels=ignored)
        bce[ignored] = loss([class_logits], [mask_logits], [target]).terms["loss_mask"].item()
    assert math.isclose(bce[False], _softplus(-10), rel_tol=1e-4)
    # 4000 points: the share of negatives has a standard deviation of 0.8 %, i.e. 0.08 of BCE.
    assert abs(bce[True] - 0.375 * _softplus(10)) < 0.3, bce


def _rectangles(generator: torch.Generator, count: int, size: int) -> torch.Tensor:
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for mask in masks:
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        bottom, right = torch.randint(size // 2 + 4, size, (2,), generator=generator).tolist()
        mask[top:bottom, left:right] = True
    return masks


def test_factored_mask_logits_give_the_dense_loss_and_gradients() -> None:
    """The network's training output (`MaskProjection`s: only matched rows multiplied out, the
    matcher's points sampled from the features) gives the loss, its terms and every gradient of
    the dense (B, Q, h, w) logits, with the same points drawn."""
    torch.manual_seed(0)
    config = EoMTConfig("vitt16", num_classes=4, num_queries=9, image_size=(64, 64))
    network = EoMT(config).train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the init (zero biases, LayerScale 1e-5 would hide mistakes)
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    targets = []
    for count in (3, 1):
        ignore = torch.zeros(64, 64, dtype=torch.bool)
        ignore[:, :5] = True
        masks = _rectangles(generator, count, 64)
        targets.append({"masks": masks, "labels": torch.arange(count) % 4, "ignore": ignore})
    output = network(images)
    assert all(isinstance(masks, MaskProjection) for masks in output.mask_projections)
    parameters = [p for p in network.parameters() if p.requires_grad]
    results = []
    projections = output.mask_projections
    for mask_logits in (projections, [masks.logits() for masks in projections]):
        loss = MaskClassificationLoss(num_classes=4, num_points=700)(
            output.class_logits,
            mask_logits,
            targets,
            generators=[torch.Generator().manual_seed(seed) for seed in (5, 6)],
        )
        gradients = torch.autograd.grad(loss.total, parameters, retain_graph=True)
        results.append((loss, gradients))
    (factored, factored_grads), (dense, dense_grads) = results
    torch.testing.assert_close(factored.total, dense.total)
    torch.testing.assert_close(factored.terms, dense.terms)
    for actual, expected in zip(factored_grads, dense_grads, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)


def test_shared_points_of_a_projection_equal_those_of_its_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = MaskProjection(torch.randn(6, 4, generator=gen), torch.randn(4, 7, 9, generator=gen))
    xy = torch.rand(50, 2, generator=gen)
    xy[:2] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(shared_logits_at(masks, xy), shared_logits_at(masks.logits(), xy))
