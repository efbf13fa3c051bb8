"""The panoptic merge the runners share with `predict`: numpy and torch give the same result,
and the fixed-shape form traced into ONNX graphs equals the form `predict` runs."""

from __future__ import annotations

import numpy as np
import torch

from panoptic_train.runtime.array_ops import TorchOps
from panoptic_train.runtime.postprocess import (
    PostprocessConfig,
    class_scores,
    merge_queries,
    panoptic_postprocess,
)

IS_THING = [True, True, False, False, True]
CONFIG = PostprocessConfig(threshold=0.3, overlap_threshold=0.3)


def _logits(seed: int, batch: int = 2, queries: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(batch, queries, len(IS_THING) + 1, generator=generator) * 4
    mask_logits = torch.randn(batch, queries, 8, 8, generator=generator) * 4
    return class_logits, mask_logits


def test_numpy_arrays_give_the_results_of_torch_tensors() -> None:
    segments = 0
    for seed in range(8):
        class_logits, mask_logits = _logits(seed)
        sizes = {
            "input_size": (32, 32),
            "resized_sizes": [(32, 21), (17, 32)],
            "orig_sizes": [(75, 50), (30, 57)],
            "config": CONFIG,
        }
        torch_results = panoptic_postprocess(class_logits, mask_logits, IS_THING, **sizes)
        numpy_results = panoptic_postprocess(
            class_logits.numpy(), mask_logits.numpy(), IS_THING, **sizes
        )
        for ours, reference in zip(numpy_results, torch_results, strict=True):
            assert isinstance(ours["masks"], np.ndarray)
            for key in ("masks", "segment_ids", "labels"):
                assert ours[key].dtype == np.int64
                assert np.array_equal(ours[key], reference[key].numpy()), key
            assert ours["scores"].dtype == np.float32
            np.testing.assert_allclose(ours["scores"], reference["scores"].numpy(), atol=1e-6)
            segments += len(ours["labels"])
    assert segments >= 30  # the comparison saw real merges, not empty maps


def test_fixed_shape_merge_equals_the_merge_of_the_kept_queries() -> None:
    ops = TorchOps()
    for seed in range(8):
        class_logits, mask_logits = _logits(seed)
        scores, labels = class_scores(ops, class_logits)
        keep = (labels != len(IS_THING)) & (scores > CONFIG.threshold)
        merged = merge_queries(
            ops,
            scores,
            labels,
            mask_logits,
            torch.tensor(IS_THING),
            (32, 32),
            (32, 32),
            (32, 32),
            CONFIG,
            keep=keep,
        )
        expected = panoptic_postprocess(
            class_logits, mask_logits, IS_THING, (32, 32), [(32, 32)] * 2, [(32, 32)] * 2, CONFIG
        )
        for i, reference in enumerate(expected):
            count = int(merged.num_segments[i])
            assert torch.equal(merged.masks[i], reference["masks"])
            assert torch.equal(merged.labels[i, :count], reference["labels"])
            assert torch.equal(merged.scores[i, :count], reference["scores"])
            assert (merged.labels[i, count:] == -1).all() and (merged.scores[i, count:] == 0).all()
