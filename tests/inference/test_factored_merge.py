"""`predict`'s merge of factored mask logits: only the confident queries' rows are multiplied
out, and the result is the dense merge's."""

from __future__ import annotations

import pytest
import torch

from panoptic_train.models.eomt import MaskProjection
from panoptic_train.runtime.postprocess import PostprocessConfig, panoptic_merge

from .conftest import tiny_network

IS_THING = [True, True, False]


def _compare(class_logits: torch.Tensor, masks: MaskProjection, config: PostprocessConfig) -> int:
    sizes = {"input_size": (64, 64), "resized_sizes": [(64, 48)] * 2, "orig_sizes": [(90, 70)] * 2}
    is_thing = [i % 2 == 0 for i in range(class_logits.shape[-1] - 1)]
    dense = panoptic_merge(class_logits, masks.logits(), is_thing, config=config, **sizes)
    factored = panoptic_merge(class_logits, masks, is_thing, config=config, **sizes)
    for expected, merge in zip(dense, factored, strict=True):
        torch.testing.assert_close(merge.segment_ids, expected.segment_ids, rtol=0, atol=0)
        torch.testing.assert_close(merge.labels, expected.labels, rtol=0, atol=0)
        torch.testing.assert_close(merge.scores, expected.scores, rtol=0, atol=0)
        torch.testing.assert_close(merge.masks(), expected.masks(), rtol=0, atol=0)
    return sum(int(merge.segment_ids.numel()) for merge in dense)


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_factored_logits_of_a_network_merge_as_the_dense_ones(threshold: float) -> None:
    network = tiny_network().eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        output = network(images, factored_masks=True)
        dense = network(images)
    torch.testing.assert_close(output.mask_projections[-1].logits(), dense.mask_logits[-1])
    class_logits = output.class_logits[-1]
    segments = _compare(class_logits, output.mask_projections[-1], PostprocessConfig(threshold))
    assert threshold > 0 or segments > 0


def test_factored_logits_with_structure_merge_as_the_dense_ones() -> None:
    """Disc-shaped masks from random embeddings of blob features: most queries confident, cells
    decided and undecided alike."""
    generator = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = torch.rand(2, 6, 2, generator=generator) * 16
    features = -((yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2)
    embeddings = torch.eye(6).expand(2, 6, 6) + 0.05 * torch.randn(2, 6, 6, generator=generator)
    masks = MaskProjection(embeddings.contiguous(), features / 4 + 3)
    class_logits = torch.randn(2, 6, 4, generator=generator) * 3
    assert _compare(class_logits, masks, PostprocessConfig(threshold=0.2)) >= 4


def test_factored_logits_of_the_wrong_shape_are_refused() -> None:
    masks = MaskProjection(torch.zeros(1, 5, 8), torch.zeros(1, 8, 16, 16))
    with pytest.raises(ValueError, match=r"expected \(1, 4, D\)"):
        panoptic_merge(torch.zeros(1, 4, 4), masks, IS_THING, (64, 64), [(64, 64)], [(64, 64)])
