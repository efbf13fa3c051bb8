"""Hungarian matcher: costs against the formulas, assignment against brute-force search."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from panoptic_train.train.matcher import HungarianMatcher, pairwise_mask_costs
from panoptic_train.train.points import valid_pixels


def test_pairwise_costs_match_per_pair_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen) * 3
    logits[0, :6] = torch.tensor([-200.0, -90.0, -30.0, 30.0, 90.0, 200.0])  # saturated
    targets = (torch.rand(3, 50, generator=gen) > 0.5).float()
    bce, dice = pairwise_mask_costs(logits, targets)
    for q in range(4):
        for n in range(3):
            expected_bce = F.binary_cross_entropy_with_logits(logits[q], targets[n])
            p = logits[q].sigmoid()
            expected_dice = 1 - (2 * (p * targets[n]).sum() + 1) / (p.sum() + targets[n].sum() + 1)
            assert torch.allclose(bce[q, n], expected_bce, atol=1e-6)
            assert torch.allclose(dice[q, n], expected_dice, atol=1e-6)


def _exact_cost(
    class_logits: torch.Tensor,
    level: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    q: int,
    n: int,
) -> float:
    """Cost of query q (spatially constant mask logit `level[q]`) for target n, with the point
    averages replaced by exact averages over the valid pixels."""
    prob = class_logits[q].softmax(-1)[labels[n]].item()
    x = level[q].item()
    frac = masks[n][valid].float().mean().item()
    count = valid.sum().item()
    bce = frac * math.log1p(math.exp(-x)) + (1 - frac) * math.log1p(math.exp(x))
    s = 1 / (1 + math.exp(-x))
    dice = 1 - (2 * s * frac * count + 1) / (s * count + frac * count + 1)
    return -2 * prob + 5 * bce + 5 * dice


def test_assignment_is_the_brute_force_optimum() -> None:
    torch.manual_seed(0)
    height, width, num_queries = 32, 32, 5
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = torch.stack([xx < 10, (xx >= 10) & (yy < 16), (xx >= 10) & (yy >= 16)])
    labels = torch.tensor([2, 0, 1])
    ignore = torch.zeros(height, width, dtype=torch.bool)
    ignore[:, 30:] = True
    gen = torch.Generator().manual_seed(4)
    class_logits = torch.randn(num_queries, 4, generator=gen) * 2
    level = torch.randn(num_queries, generator=gen) * 2
    mask_logits = level[:, None, None].expand(num_queries, height // 4, width // 4).clone()

    matcher = HungarianMatcher(num_points=200_000)
    rows, cols = matcher.match_image(class_logits, mask_logits, masks, labels, valid_pixels(ignore))

    valid = ~ignore
    costs = {
        (q, n): _exact_cost(class_logits, level, masks, labels, valid, q, n)
        for q in range(num_queries)
        for n in range(3)
    }

    def total(queries: tuple[int, ...]) -> float:
        return sum(costs[q, n] for n, q in enumerate(queries))

    best, runner_up = sorted(itertools.permutations(range(num_queries), 3), key=total)[:2]
    # The optimum wins by far more than the point-sampling noise (~0.02 at 200k points).
    assert total(runner_up) - total(best) > 0.5
    got = dict(zip(cols.tolist(), rows.tolist(), strict=True))
    assert [got[n] for n in range(3)] == list(best)


def test_no_targets_gives_empty_match() -> None:
    matcher = HungarianMatcher(num_points=10)
    rows, cols = matcher.match_image(
        torch.randn(3, 2),
        torch.randn(3, 4, 4),
        torch.zeros(0, 16, 16, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
        valid_pixels(torch.zeros(16, 16, dtype=torch.bool)),
    )
    assert rows.numel() == 0 and cols.numel() == 0


def test_nonfinite_logits_still_match() -> None:
    """A NaN prediction must not crash matching: the loss turns NaN and the loop reports it."""
    matcher = HungarianMatcher(num_points=64)
    class_logits = torch.full((3, 2), float("nan"))
    rows, _ = matcher.match_image(
        class_logits,
        torch.randn(3, 4, 4),
        torch.ones(1, 16, 16, dtype=torch.bool),
        torch.tensor([0]),
        valid_pixels(torch.zeros(16, 16, dtype=torch.bool)),
    )
    assert len(rows) == 1
