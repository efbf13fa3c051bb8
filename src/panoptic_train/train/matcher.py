"""Hungarian matching of predicted queries to target segments (Mask2Former / EoMT).

Each target segment is assigned the one query whose prediction costs least, where
cost = class_weight * (-p(class)) + mask_weight * BCE + dice_weight * dice, the mask terms being
computed on random points shared by every query and target of an image. Unmatched queries learn
"no object". The assignment is `scipy.optimize.linear_sum_assignment` on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from panoptic_train.models.eomt import MaskProjection
from panoptic_train.train.points import random_points, shared_logits_at

# Finite stand-in for NaN/inf costs: matching still completes, the loss then carries the NaN and
# the training loop reports it with the step and learning rate.
_NONFINITE_COST = 1e8


def pairwise_mask_costs(point_logits: Tensor, point_targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean sigmoid BCE and dice loss of every (prediction, target) pair.

    point_logits (Q, P) float, point_targets (N, P) in {0, 1} -> two (Q, N) tensors.
    """
    logits = point_logits.float()
    targets = point_targets.float()
    num_points = logits.shape[1]
    # BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(x) = softplus(-x) + x, so the sum over
    # points of all pairs is rowsum(softplus(-x)) + x @ (1 - t)^T: one softplus, one matmul.
    # softplus(-x) = relu(-x) + log(1 + exp(-|x|)), in ops the CPU vectorises (softplus and
    # log1p are not: 1.6x slower).
    softplus = F.relu(-logits) + torch.log(1 + torch.exp(-logits.abs()))
    bce = (softplus.sum(-1, keepdim=True) + logits @ (1 - targets).T) / num_points
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


class HungarianMatcher:
    """Matches queries to targets image by image; see the module docstring for the cost."""

    def __init__(
        self,
        *,
        num_points: int = 12544,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
    ) -> None:
        self.num_points = num_points
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight

    def cost_matrix(
        self, class_logits: Tensor, point_logits: Tensor, labels: Tensor, point_targets: Tensor
    ) -> Tensor:
        """(Q, N) matching cost from class logits (Q, C+1), point logits (Q, P), target labels
        (N,) and target point values (N, P)."""
        probs = class_logits.float().softmax(-1)
        class_cost = -probs[:, labels]
        bce, dice = pairwise_mask_costs(point_logits, point_targets)
        return self.class_weight * class_cost + self.mask_weight * bce + self.dice_weight * dice

    @torch.no_grad()
    def match_image(
        self,
        class_logits: Tensor,
        mask_logits: Tensor | MaskProjection,
        masks: Tensor,
        labels: Tensor,
        valid: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Matched (query indices, target indices) of one image, both int64 on the logits' device.

        class_logits (Q, C+1), mask_logits (Q, h, w) or their `MaskProjection`, masks bool
        (N, H, W), labels (N,), valid flat indices of the pixels that may be sampled (see
        `points.valid_pixels`); the points are drawn from `generator` (torch's global one when
        None).
        """
        device = class_logits.device
        if len(labels) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        height, width = masks.shape[-2:]
        points = random_points(valid, (self.num_points,), height, width, generator)
        point_logits = shared_logits_at(mask_logits, points.xy)
        point_targets = masks.flatten(1).index_select(1, points.pixels)
        cost = self.cost_matrix(class_logits, point_logits, labels, point_targets)
        cost = torch.nan_to_num(
            cost, nan=_NONFINITE_COST, posinf=_NONFINITE_COST, neginf=-_NONFINITE_COST
        )
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return (
            torch.as_tensor(rows.astype(np.int64), device=device),
            torch.as_tensor(cols.astype(np.int64), device=device),
        )
