"""Mask-classification loss of EoMT (Mask2Former style) with deep supervision.

For every prediction of the network (one before each joint block and the final one) the queries
are matched to the target segments (`matcher.HungarianMatcher`), then
    class_weight * CE(class logits, matched label or "no object")      (no-object weight 0.1)
  + mask_weight  * BCE(mask logits, target mask)      on importance-sampled points
  + dice_weight  * dice(mask logits, target mask)     on the same points
are summed over all predictions. Mask terms are summed over matched pairs and divided by the
number of target masks averaged over all devices, so every device's gradient has the same scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_train.train.matcher import HungarianMatcher
from panoptic_train.train.points import logits_at, uncertain_points, valid_pixels


def sigmoid_bce_loss(point_logits: Tensor, point_targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean binary cross-entropy over its points, summed over masks / num_masks."""
    loss = F.binary_cross_entropy_with_logits(
        point_logits.float(), point_targets.float(), reduction="none"
    )
    return loss.mean(1).sum() / num_masks


def dice_loss(point_logits: Tensor, point_targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask 1 - (2|p·t| + 1) / (|p| + |t| + 1), p = sigmoid(logits); summed / num_masks."""
    probs = point_logits.float().sigmoid()
    targets = point_targets.float()
    numerator = 2 * (probs * targets).sum(1)
    denominator = probs.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def average_num_masks(
    targets: Sequence[Mapping[str, Tensor]], reduce_mean: Callable[[Tensor], Tensor] | None = None
) -> float:
    """Number of target masks in this batch averaged over devices (at least 1), the loss's
    normaliser. `reduce_mean` averages a tensor across devices (identity on one device)."""
    device = targets[0]["labels"].device if targets else torch.device("cpu")
    count = torch.tensor(float(sum(len(target["labels"]) for target in targets)), device=device)
    if reduce_mean is not None:
        count = reduce_mean(count)
    return max(float(count), 1.0)


@dataclass(frozen=True)
class LossOutput:
    """`total` to backpropagate; `terms` the unweighted parts for logging, named
    `loss_{class,mask,dice}` for the final prediction and `..._block{i}` for the one before
    joint block i."""

    total: Tensor
    terms: dict[str, Tensor]


class MaskClassificationLoss:
    """Deeply supervised mask-classification loss; see the module docstring."""

    def __init__(
        self,
        *,
        num_classes: int,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
    ) -> None:
        self.num_classes = num_classes
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.matcher = HungarianMatcher(
            num_points=num_points,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
        )

    def __call__(
        self,
        class_logits: Sequence[Tensor],
        mask_logits: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        num_masks: float,
        first_joint_block: int = 0,
    ) -> LossOutput:
        """Loss over all predictions (class_logits[i] (B, Q, C+1), mask_logits[i] (B, Q, h, w)).

        `targets` are the train batch's per-image dicts (`masks`, `labels`, `ignore`); the
        intermediate predictions are named after their joint block, counted from
        `first_joint_block`.
        """
        valid = [valid_pixels(target["ignore"]) for target in targets]
        total = class_logits[0].new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        last = len(class_logits) - 1
        for index, (layer_class, layer_mask) in enumerate(
            zip(class_logits, mask_logits, strict=True)
        ):
            loss_class, loss_mask, loss_dice = self._single(
                layer_class, layer_mask, targets, valid, num_masks
            )
            total = total + (
                self.class_weight * loss_class
                + self.mask_weight * loss_mask
                + self.dice_weight * loss_dice
            )
            suffix = "" if index == last else f"_block{first_joint_block + index}"
            terms[f"loss_class{suffix}"] = loss_class.detach()
            terms[f"loss_mask{suffix}"] = loss_mask.detach()
            terms[f"loss_dice{suffix}"] = loss_dice.detach()
        return LossOutput(total=total, terms=terms)

    def _single(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        valid: Sequence[Tensor],
        num_masks: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Class, mask BCE and dice losses of one prediction."""
        batch, num_queries = class_logits.shape[:2]
        target_classes = torch.full(
            (batch, num_queries), self.num_classes, dtype=torch.long, device=class_logits.device
        )
        point_logits: list[Tensor] = []
        point_targets: list[Tensor] = []
        for image, target in enumerate(targets):
            masks, labels = target["masks"], target["labels"]
            if len(valid[image]) == 0:
                # Every pixel is ignored: nothing to supervise but "no object".
                continue
            queries, indices = self.matcher.match_image(
                class_logits[image], mask_logits[image], masks, labels, valid[image]
            )
            if len(queries) == 0:
                continue
            target_classes[image, queries] = labels[indices]
            height, width = masks.shape[-2:]
            matched_logits = mask_logits[image, queries]
            points = uncertain_points(
                matched_logits,
                valid[image],
                height,
                width,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_logits.append(logits_at(matched_logits, points.xy))
            pixels_per_mask = height * width
            point_targets.append(
                torch.take(masks, indices[:, None] * pixels_per_mask + points.pixels)
            )

        class_weights = torch.ones(self.num_classes + 1, device=class_logits.device)
        class_weights[-1] = self.no_object_weight
        loss_class = F.cross_entropy(
            class_logits.float().transpose(1, 2), target_classes, weight=class_weights
        )
        if point_logits:
            all_logits = torch.cat(point_logits)
            all_targets = torch.cat(point_targets)
            loss_mask = sigmoid_bce_loss(all_logits, all_targets, num_masks)
            loss_dice = dice_loss(all_logits, all_targets, num_masks)
        else:
            # Keep the mask head in the graph (zero gradient) so DDP sees every parameter used.
            loss_mask = loss_dice = mask_logits.float().sum() * 0.0
        return loss_class, loss_mask, loss_dice
