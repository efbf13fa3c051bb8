"""EoMT panoptic post-processing: per-query class and mask logits -> one panoptic map per image.

The single implementation behind validation, `predict`, the `predict` CLI and the exported-model
runners, so that the PQ reported during training is the PQ a user gets. The merge follows
EoMT / Mask2Former: keep confident queries, give every pixel to the query maximising
score * sigmoid(mask), drop queries that lost too much of their own mask to others, merge stuff
queries of one class, and leave everything else void (-1).

Everything is vectorised over pixels and queries; the only Python loops run over images and over
row bands of very large images (to bound memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from panoptic_train.errors import ConfigError

# Upper bound on the number of per-query probabilities held at once at full resolution
# (2**23 float32 = 32 MiB). Typical images fit in one band; a 12 MP photo is processed in bands.
_MAX_BAND_ELEMENTS = 2**23


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of the panoptic merge (EoMT's defaults).

    threshold: a query is kept when its best class (not "no object") has a softmax score above it.
    mask_threshold: a pixel belongs to a query's own mask when sigmoid(mask logit) >= it.
    overlap_threshold: a query becomes a segment when the pixels it wins cover at least this
        fraction of its own mask.
    """

    threshold: float = 0.8
    mask_threshold: float = 0.5
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        for name in ("threshold", "mask_threshold", "overlap_threshold"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or not 0 <= value <= 1:
                raise ConfigError(
                    f"Post-processing {name}={value!r} is invalid: it must be a number in [0, 1] "
                    f"(default {getattr(PostprocessConfig, name)})."
                )

    def replace(
        self,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
    ) -> PostprocessConfig:
        """A copy with the given thresholds overridden (None keeps the current value)."""
        return PostprocessConfig(
            threshold=self.threshold if threshold is None else threshold,
            mask_threshold=self.mask_threshold if mask_threshold is None else mask_threshold,
            overlap_threshold=(
                self.overlap_threshold if overlap_threshold is None else overlap_threshold
            ),
        )


class PanopticPrediction(TypedDict):
    """One image's panoptic result with contiguous class indices (callers map to category ids).

    masks: int64 (H0, W0, 2): (class index, segment id) per pixel; void pixels are -1 in both.
    segment_ids: int64 (S,): 0..S-1, in the order of the query that founded each segment.
    scores: float32 (S,): class score of that founding query.
    labels: int64 (S,): class index of each segment.
    """

    masks: Tensor
    segment_ids: Tensor
    scores: Tensor
    labels: Tensor


def panoptic_postprocess(
    class_logits: Tensor,
    mask_logits: Tensor,
    is_thing: Sequence[bool] | Tensor,
    input_size: tuple[int, int],
    resized_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
    config: PostprocessConfig | None = None,
) -> list[PanopticPrediction]:
    """Merge the network's last prediction into one panoptic map per image.

    class_logits: (B, Q, C + 1), the last entry being "no object".
    mask_logits: (B, Q, h, w), covering the whole padded input of size `input_size` (H, W).
    is_thing: (C,) thing flags; stuff queries of one class merge into a single segment.
    resized_sizes: per image, the (height, width) of the image inside the padded input (the rest
        is padding at the bottom/right and is cropped off).
    orig_sizes: per image, the (height, width) the result is returned at.
    """
    config = config or PostprocessConfig()
    batch, num_queries, num_logits = class_logits.shape
    if mask_logits.ndim != 4 or mask_logits.shape[:2] != (batch, num_queries):
        raise ValueError(
            f"mask_logits of shape {tuple(mask_logits.shape)} do not match class_logits of shape "
            f"{tuple(class_logits.shape)}: expected ({batch}, {num_queries}, h, w)."
        )
    thing = torch.as_tensor(is_thing, dtype=torch.bool, device=class_logits.device)
    if thing.shape != (num_logits - 1,):
        raise ValueError(
            f"is_thing has {thing.numel()} flags but class_logits have {num_logits - 1} classes "
            "(plus no-object)."
        )
    if len(resized_sizes) != batch or len(orig_sizes) != batch:
        raise ValueError(
            f"Got {len(resized_sizes)} resized and {len(orig_sizes)} original sizes for a batch "
            f"of {batch} images."
        )
    scores, labels = class_logits.float().softmax(dim=-1).max(dim=-1)
    keep = (labels != num_logits - 1) & (scores > config.threshold)
    return [
        _postprocess_image(
            scores=scores[i][keep[i]],
            labels=labels[i][keep[i]],
            mask_logits=mask_logits[i][keep[i]],
            is_thing=thing,
            input_size=input_size,
            resized_size=resized_sizes[i],
            orig_size=orig_sizes[i],
            config=config,
        )
        for i in range(batch)
    ]


def _postprocess_image(
    scores: Tensor,
    labels: Tensor,
    mask_logits: Tensor,
    is_thing: Tensor,
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    orig_size: tuple[int, int],
    config: PostprocessConfig,
) -> PanopticPrediction:
    """Panoptic merge of the K confident queries of one image."""
    device = scores.device
    height, width = (int(v) for v in orig_size)
    num_kept = scores.shape[0]
    if num_kept == 0:
        return _result(
            seg_map=torch.full((height, width), -1, dtype=torch.long, device=device),
            seg_labels=labels.new_empty(0),
            seg_scores=scores,
        )

    grid_y, grid_x = _sampling_coordinates(input_size, resized_size, orig_size, device)
    logits = mask_logits.float().unsqueeze(0)  # (1, K, h, w)
    assign = torch.empty((height, width), dtype=torch.long, device=device)
    valid = torch.empty((height, width), dtype=torch.bool, device=device)
    own_area = torch.zeros(num_kept, dtype=torch.long, device=device)
    band = max(1, _MAX_BAND_ELEMENTS // (num_kept * width))
    for top in range(0, height, band):
        rows = slice(top, min(top + band, height))
        grid = torch.stack(
            torch.broadcast_tensors(grid_x[None, :], grid_y[rows, None]), dim=-1
        ).unsqueeze(0)
        probs = F.grid_sample(
            logits, grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0].sigmoid_()  # (K, band, W0)
        own = probs >= config.mask_threshold
        own_area += own.sum(dim=(1, 2))
        band_assign = (probs * scores[:, None, None]).argmax(dim=0)
        assign[rows] = band_assign
        valid[rows] = own.gather(0, band_assign.unsqueeze(0)).squeeze(0)

    # A query is a segment when it wins pixels of its own mask and enough of that mask overall.
    assigned_area = torch.bincount(assign.flatten(), minlength=num_kept)
    final_area = torch.bincount(assign[valid], minlength=num_kept)
    ratio = assigned_area.double() / own_area.clamp(min=1).double()
    is_segment = (own_area > 0) & (final_area > 0) & (ratio >= config.overlap_threshold)

    # Group segments (stuff: one group per class; thing: one per query) numbered by the
    # first query of each group, so ids follow query order like the reference merge.
    founders = is_segment.nonzero().squeeze(1)
    founder_labels = labels[founders]
    group_key = torch.where(is_thing[founder_labels], is_thing.numel() + founders, founder_labels)
    unique_keys, group = torch.unique(group_key, return_inverse=True)
    position = torch.arange(founders.numel(), device=device)
    first = torch.full_like(unique_keys, founders.numel()).scatter_reduce_(
        0, group, position, reduce="amin"
    )
    order = first.argsort()
    segment_of_group = torch.empty_like(order)
    segment_of_group[order] = torch.arange(order.numel(), device=device)

    segment_of_query = torch.full((num_kept,), -1, dtype=torch.long, device=device)
    segment_of_query[founders] = segment_of_group[group]
    seg_map = torch.where(valid, segment_of_query[assign], -1)
    representative = founders[first[order]]
    return _result(seg_map, labels[representative], scores[representative])


def _sampling_coordinates(
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    orig_size: tuple[int, int],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """grid_sample coordinates (align_corners=False) of each original pixel centre.

    Original pixel y maps to (y + 0.5) * resized / orig in the padded input, i.e. to the fraction
    (y + 0.5) * resized / (orig * input) of the mask grid: cropping the padding and resizing to
    the original size in one bilinear resampling (no intermediate full-resolution map).
    """
    coords = []
    for inp, resized, orig in zip(input_size, resized_size, orig_size, strict=True):
        if not 0 < resized <= inp:
            raise ValueError(f"Resized size {resized_size} does not fit the input {input_size}.")
        centres = torch.arange(int(orig), device=device, dtype=torch.float32) + 0.5
        coords.append(centres * (2.0 * resized / (orig * inp)) - 1.0)
    return coords[0], coords[1]


def _result(seg_map: Tensor, seg_labels: Tensor, seg_scores: Tensor) -> PanopticPrediction:
    # Appending -1 lets void pixels (segment -1) index their class -1 without a mask.
    class_of_segment = torch.cat([seg_labels, seg_labels.new_full((1,), -1)])
    return PanopticPrediction(
        masks=torch.stack([class_of_segment[seg_map], seg_map], dim=-1),
        segment_ids=torch.arange(seg_labels.numel(), dtype=torch.long, device=seg_map.device),
        scores=seg_scores.float(),
        labels=seg_labels.long(),
    )
