"""Point sampling for the mask losses and the matcher (Mask2Former's point-based supervision).

Masks are compared on a few thousand points instead of every pixel, which keeps the loss cheap at
high resolution. Points are drawn uniformly over the pixels that carry a label: pixels marked
`ignore` in the train batch (void, crowd, padding) are never sampled, so they give no gradient
(unless `valid_pixels(..., include_ignored=True)`: EoMT's sampling over the whole crop).

A point is a pixel (its flat index, used to read the full-resolution target mask exactly) plus a
uniform position inside that pixel (normalised xy in [0, 1], used to read the 1/4-resolution
predicted logits by bilinear interpolation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from panoptic_train.models.eomt import MaskProjection


class Points(NamedTuple):
    """Sampled points: flat pixel indices `pixels` (*shape), normalised `xy` (*shape, 2)."""

    pixels: Tensor
    xy: Tensor


def valid_pixels(ignore: Tensor, *, include_ignored: bool = False) -> Tensor:
    """Flat indices of the pixels of an (H, W) `ignore` map that may be sampled: the labelled
    ones, or every pixel with `include_ignored` (EoMT: ignored pixels are then negatives of
    every mask, since no target mask covers them)."""
    if include_ignored:
        return torch.arange(ignore.numel(), device=ignore.device)
    return torch.nonzero(~ignore.flatten()).squeeze(1)


def random_points(
    valid: Tensor,
    shape: tuple[int, ...],
    height: int,
    width: int,
    generator: torch.Generator | None = None,
) -> Points:
    """Points uniform over the area of the `valid` pixels (flat indices into an H x W image),
    drawn from `generator` (on `valid`'s device; torch's global one when None)."""
    pixels = valid[torch.randint(len(valid), shape, device=valid.device, generator=generator)]
    offsets = torch.rand((*shape, 2), device=valid.device, generator=generator)
    rows = torch.div(pixels, width, rounding_mode="floor")
    cols = pixels - rows * width
    xy = torch.stack(((cols + offsets[..., 0]) / width, (rows + offsets[..., 1]) / height), dim=-1)
    return Points(pixels=pixels, xy=xy)


class _Taps(NamedTuple):
    """The four neighbouring cells of each point (flat indices: top-left, top-right,
    bottom-left, bottom-right) and the fractional position between them."""

    corners: tuple[Tensor, Tensor, Tensor, Tensor]
    wx: Tensor
    wy: Tensor

    def interpolate(self, read: Callable[[Tensor], Tensor]) -> Tensor:
        """Bilinear value from `read(corner indices) -> values` (two lerps across, one down)."""
        top_left, top_right, bottom_left, bottom_right = (read(c) for c in self.corners)
        top = torch.lerp(top_left, top_right, self.wx)
        bottom = torch.lerp(bottom_left, bottom_right, self.wx)
        return torch.lerp(top, bottom, self.wy)


def _bilinear_taps(xy: Tensor, height: int, width: int) -> _Taps:
    """Bilinear interpolation taps on an (height, width) grid, with the conventions of
    `F.grid_sample(align_corners=False, padding_mode="border")`: coordinate 0 is the left edge of
    the image and 1 the right edge at any resolution (so full-resolution points land on the right
    place of the 1/4-resolution logits), and points in the outer half-cell take the edge value
    (Mask2Former's zero padding would pull border logits towards 0).

    Gathering these taps is several times faster on a CPU than `grid_sample` for the thousands
    of points per mask the loss uses, and differentiable the same way.
    """
    x = (xy[..., 0].float() * width - 0.5).clamp(0, width - 1)
    y = (xy[..., 1].float() * height - 0.5).clamp(0, height - 1)
    x0, y0 = x.floor(), y.floor()
    wx, wy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    corners = (y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1)
    return _Taps(corners=corners, wx=wx, wy=wy)


def logits_at(logits: Tensor, xy: Tensor) -> Tensor:
    """Bilinear samples of per-mask logits (M, h, w) at per-mask points xy (M, P, 2) -> (M, P)."""
    flat = logits.float().flatten(1)
    return _bilinear_taps(xy, *logits.shape[-2:]).interpolate(lambda index: flat.gather(1, index))


def shared_logits_at(logits: Tensor | MaskProjection, xy: Tensor) -> Tensor:
    """Samples of all masks (M, h, w) at the same points xy (P, 2) -> (M, P). Of a projection
    (embeddings (M, D), features (D, h, w)) the features are sampled and then projected: M * D
    multiply-adds per point instead of the M * D per pixel of its dense logits."""
    if isinstance(logits, MaskProjection):
        features = logits.features.float()
        pixels = features.flatten(1).T  # (h * w, D): a view of channels-last features
        sampled = _bilinear_taps(xy, *features.shape[-2:]).interpolate(
            lambda index: pixels.index_select(0, index).T
        )
        return logits.embeddings.float() @ sampled
    flat = logits.float().flatten(1)
    return _bilinear_taps(xy, *logits.shape[-2:]).interpolate(
        lambda index: flat.index_select(1, index)
    )


def uncertain_points(
    logits: Tensor,
    valid: Tensor,
    height: int,
    width: int,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Points:
    """Per mask, `importance_sample_ratio` of the points where the prediction is least certain
    (logit closest to 0 among `oversample_ratio` x `num_points` random candidates), the rest
    uniformly random: the loss then concentrates on the mask borders the network gets wrong.
    Random draws come from `generator` (see `random_points`)."""
    num_masks = logits.shape[0]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_candidates = max(int(oversample_ratio * num_points), num_uncertain)
    candidates = random_points(valid, (num_masks, num_candidates), height, width, generator)
    with torch.no_grad():
        uncertainty = -logits_at(logits.detach(), candidates.xy).abs()
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    uncertain = Points(
        pixels=candidates.pixels.gather(1, chosen),
        xy=candidates.xy.gather(1, chosen[..., None].expand(-1, -1, 2)),
    )
    uniform = random_points(
        valid, (num_masks, num_points - num_uncertain), height, width, generator
    )
    return Points(
        pixels=torch.cat((uncertain.pixels, uniform.pixels), dim=1),
        xy=torch.cat((uncertain.xy, uniform.xy), dim=1),
    )
