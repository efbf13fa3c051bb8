"""Mask-classification loss of EoMT (Mask2Former style) with deep supervision.

For every prediction of the network (one before each joint block and the final one) the queries
are matched to the target segments (`matcher.HungarianMatcher`), then
    class_weight * CE(class logits, matched label or "no object")      (no-object weight 0.1)
  + mask_weight  * BCE(mask logits, target mask)      on importance-sampled points
  + dice_weight  * dice(mask logits, target mask)     on the same points
are summed over all predictions. The points avoid ignored pixels (void, crowd, padding) unless
`sample_ignored_pixels`: then they cover the whole crop, those pixels negatives of every mask,
as in the EoMT code. The class term is the no-object-weighted mean over the queries
of the global batch, the mask terms are summed over matched pairs and divided by the number of
target masks of the global batch: on W devices each device's loss is W times its share of the
global batch's loss, so DDP's gradient average is the one-device gradient of the whole batch.

The mask logits may come factored (`MaskProjection`, from the network in training mode): then
only the matched queries' maps are multiplied out, and the matcher projects the features sampled
at its points; the loss is the same as from the dense logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_train.models.eomt import MaskProjection
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


def _per_image(mask_logits: Tensor | MaskProjection) -> list[Tensor | MaskProjection]:
    """A batch's mask logits image by image; one unbind, so that backward stacks the images'
    gradients once instead of scattering each into a zero batch. Features are unbound as
    (h, w, D) pixels: their stacked gradient is then channels-last like the features."""
    if isinstance(mask_logits, MaskProjection):
        pixels = mask_logits.features.permute(0, 2, 3, 1).unbind(0)
        parts = zip(mask_logits.embeddings.unbind(0), pixels, strict=True)
        return [MaskProjection(embeddings, image.permute(2, 0, 1)) for embeddings, image in parts]
    return list(mask_logits.unbind(0))


def _rows(masks: Tensor | MaskProjection, queries: Tensor) -> Tensor:
    """The dense mask logits (N, h, w) of one image's `queries`."""
    if isinstance(masks, MaskProjection):
        # (h * w, D) @ (D, N) viewed as (N, h, w): the features' gradient then comes out
        # channels-last like the features, with no transposing copy in backward (inference's
        # `MaskProjection.logits_of` multiplies the other way round, for rows the merge reads
        # contiguously).
        pixels = masks.features.flatten(1).T
        rows = pixels @ masks.embeddings[queries].T
        return rows.T.unflatten(1, masks.features.shape[-2:])
    return masks[queries]


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
        sample_ignored_pixels: bool = False,
    ) -> None:
        self.num_classes = num_classes
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.sample_ignored_pixels = sample_ignored_pixels
        self.matcher = HungarianMatcher(
            num_points=num_points,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
        )

    def __call__(
        self,
        class_logits: Sequence[Tensor],
        mask_logits: Sequence[Tensor | MaskProjection],
        targets: Sequence[Mapping[str, Tensor]],
        *,
        first_joint_block: int = 0,
        generators: Sequence[torch.Generator] | None = None,
        all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
        world_size: int = 1,
    ) -> LossOutput:
        """Loss over all predictions (class_logits[i] (B, Q, C+1), mask_logits[i] (B, Q, h, w)
        or its `MaskProjection`).

        `targets` are the train batch's per-image dicts (`masks`, `labels`, `ignore`); the
        intermediate predictions are named after their joint block, counted from
        `first_joint_block`. `generators` (one per image, on the logits' device) draw each
        image's points; torch's global generator when None. On several devices pass
        `all_reduce_sum` (sums a tensor over devices) and `world_size`: the normalisers are
        then the global batch's.
        """
        valid = [
            valid_pixels(target["ignore"], include_ignored=self.sample_ignored_pixels)
            for target in targets
        ]
        draws = list(generators) if generators is not None else [None] * len(targets)
        predictions = list(zip(class_logits, map(_per_image, mask_logits), strict=True))
        matches = [
            self._match(layer_class, layer_mask, targets, valid, draws)
            for layer_class, layer_mask in predictions
        ]
        num_masks, class_totals = self._normalizers(
            class_logits[0], targets, matches, all_reduce_sum, world_size
        )
        total = class_logits[0].new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        last = len(predictions) - 1
        for index, ((layer_class, layer_mask), layer_matches, class_total) in enumerate(
            zip(predictions, matches, class_totals, strict=True)
        ):
            loss_class, loss_mask, loss_dice = self._single(
                layer_class,
                layer_mask,
                targets,
                valid,
                draws,
                layer_matches,
                num_masks,
                class_total,
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

    def _match(
        self,
        class_logits: Tensor,
        mask_logits: Sequence[Tensor | MaskProjection],
        targets: Sequence[Mapping[str, Tensor]],
        valid: Sequence[Tensor],
        generators: Sequence[torch.Generator | None],
    ) -> list[tuple[Tensor, Tensor]]:
        """(query indices, target indices) per image for one prediction (mask logits per
        image)."""
        matches = []
        for image, (masks, target, pixels, generator) in enumerate(
            zip(mask_logits, targets, valid, generators, strict=True)
        ):
            if len(pixels) == 0:
                # Every pixel is ignored: nothing to supervise but "no object".
                empty = torch.zeros(0, dtype=torch.long, device=class_logits.device)
                matches.append((empty, empty))
                continue
            matches.append(
                self.matcher.match_image(
                    class_logits[image],
                    masks,
                    target["masks"],
                    target["labels"],
                    pixels,
                    generator,
                )
            )
        return matches

    def _normalizers(
        self,
        class_logits: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        matches: Sequence[Sequence[tuple[Tensor, Tensor]]],
        all_reduce_sum: Callable[[Tensor], Tensor] | None,
        world_size: int,
    ) -> tuple[float, list[float]]:
        """The global batch's number of target masks (at least 1) and, per prediction, its sum
        of class weights over the queries (1 matched, `no_object_weight` otherwise), each
        divided by `world_size`: one collective call for all of them."""
        batch, num_queries = class_logits.shape[:2]
        counts = [float(sum(len(target["labels"]) for target in targets))]
        for layer in matches:
            matched = sum(len(queries) for queries, _ in layer)
            unmatched = batch * num_queries - matched
            counts.append(matched + self.no_object_weight * unmatched)
        if all_reduce_sum is not None:
            counts = all_reduce_sum(
                torch.tensor(counts, dtype=torch.float64, device=class_logits.device)
            ).tolist()
        num_masks, *class_totals = (count / world_size for count in counts)
        return max(num_masks, 1.0 / world_size), class_totals

    def _single(
        self,
        class_logits: Tensor,
        mask_logits: Sequence[Tensor | MaskProjection],
        targets: Sequence[Mapping[str, Tensor]],
        valid: Sequence[Tensor],
        generators: Sequence[torch.Generator | None],
        matches: Sequence[tuple[Tensor, Tensor]],
        num_masks: float,
        class_total: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Class, mask BCE and dice losses of one prediction (mask logits per image)."""
        batch, num_queries = class_logits.shape[:2]
        target_classes = torch.full(
            (batch, num_queries), self.num_classes, dtype=torch.long, device=class_logits.device
        )
        point_logits: list[Tensor] = []
        point_targets: list[Tensor] = []
        for image, (target, (queries, indices)) in enumerate(zip(targets, matches, strict=True)):
            if len(queries) == 0:
                continue
            masks = target["masks"]
            target_classes[image, queries] = target["labels"][indices]
            height, width = masks.shape[-2:]
            matched_logits = _rows(mask_logits[image], queries)
            points = uncertain_points(
                matched_logits,
                valid[image],
                height,
                width,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
                generators[image],
            )
            point_logits.append(logits_at(matched_logits, points.xy))
            pixels_per_mask = height * width
            point_targets.append(
                torch.take(masks, indices[:, None] * pixels_per_mask + points.pixels)
            )

        class_weights = torch.ones(self.num_classes + 1, device=class_logits.device)
        class_weights[-1] = self.no_object_weight
        loss_class = (
            F.cross_entropy(
                class_logits.float().transpose(1, 2),
                target_classes,
                weight=class_weights,
                reduction="sum",
            )
            / class_total
        )
        if point_logits:
            all_logits = torch.cat(point_logits)
            all_targets = torch.cat(point_targets)
            loss_mask = sigmoid_bce_loss(all_logits, all_targets, num_masks)
            loss_dice = dice_loss(all_logits, all_targets, num_masks)
        else:
            # Keep the mask head in the graph (zero gradient) so DDP sees every parameter used.
            none = torch.zeros(0, dtype=torch.long, device=class_logits.device)
            loss_mask = loss_dice = _rows(mask_logits[0], none).float().sum() * 0.0
        return loss_class, loss_mask, loss_dice
