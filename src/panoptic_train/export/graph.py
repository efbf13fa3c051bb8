"""The modules traced into ONNX graphs: the EoMT eval path, optionally followed by the merge.

Both take float32 images and give float32 logits whatever the precision inside, so every runner
feeds and reads the same types. The merge is `runtime.postprocess.merge_queries`, the code
`predict` runs, here in its fixed-shape form (all queries, a keep mask) so that the graph has no
data-dependent shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from panoptic_train.models.eomt import EoMT
from panoptic_train.runtime.array_ops import TorchOps
from panoptic_train.runtime.postprocess import PostprocessConfig, class_scores, merge_queries

# Probabilities held at once per image while merging (2**23 float32 = 32 MiB): the graph merges
# all queries at full input resolution, in row bands of this size (unrolled in the graph).
_BAND_ELEMENTS = 2**23


class LogitsGraph(nn.Module):
    """images (B, 3, H, W) float32, normalised -> class_logits (B, Q, C+1), mask_logits
    (B, Q, H/4, W/4), both float32; the network runs in `dtype`."""

    def __init__(self, network: EoMT, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network.to(dtype).eval()
        self.dtype = dtype

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.network(images.to(self.dtype))
        return output.class_logits[-1].float(), output.mask_logits[-1].float()


class PanopticGraph(nn.Module):
    """LogitsGraph plus the panoptic merge over the whole (padded) input canvas.

    Outputs, after the two logits: masks int64 (B, H, W, 2) with (category id, segment id) per
    input pixel, void -1 in both; segment_ids int64 (B, Q): 0..S-1 then -1 in unused slots;
    scores float32 (B, Q): 0 in unused slots; labels int64 (B, Q): category ids, -1 unused.
    Q slots bound the segment count (one query founds at most one segment).
    """

    # Buffers (registered in __init__), so that they follow the graph's device.
    category_ids: Tensor
    is_thing: Tensor

    def __init__(
        self,
        logits: LogitsGraph,
        category_ids: Sequence[int],
        is_thing: Sequence[bool],
        image_size: tuple[int, int],
        config: PostprocessConfig,
    ) -> None:
        super().__init__()
        self.logits = logits
        self.register_buffer("category_ids", torch.tensor(list(category_ids), dtype=torch.int64))
        self.register_buffer("is_thing", torch.tensor(list(is_thing), dtype=torch.bool))
        self.image_size = image_size
        self.config = config

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        class_logits, mask_logits = self.logits(images)
        ops = TorchOps()
        scores, labels = class_scores(ops, class_logits)
        keep = (labels != class_logits.shape[-1] - 1) & (scores > self.config.threshold)
        size = self.image_size
        merged = merge_queries(
            ops,
            scores,
            labels,
            mask_logits,
            self.is_thing,
            size,
            size,
            size,
            self.config,
            keep,
            max_band_elements=_BAND_ELEMENTS,
        )
        classes, segments = merged.masks[..., 0], merged.masks[..., 1]
        masks = torch.stack((self._category(classes), segments), dim=-1)
        slots = torch.arange(scores.shape[1], device=scores.device)
        segment_ids = torch.where(slots < merged.num_segments[:, None], slots, -1)
        return (
            class_logits,
            mask_logits,
            masks,
            segment_ids,
            merged.scores,
            self._category(merged.labels),
        )

    def _category(self, classes: Tensor) -> Tensor:
        """Contiguous class indices -> category ids; -1 stays -1."""
        return torch.where(classes >= 0, self.category_ids[classes.clamp(min=0)], -1)
