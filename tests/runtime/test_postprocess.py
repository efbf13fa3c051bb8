"""Panoptic merge on hand-built logits (expectations worked out by hand) and against the
`transformers` EoMT image processor as an independent peer implementation."""

from __future__ import annotations

import math
import types

import pytest
import torch

from panoptic_train.errors import ConfigError
from panoptic_train.runtime.postprocess import PostprocessConfig, panoptic_postprocess

ON = 10.0  # mask logit inside a hand-built mask (sigmoid ~ 1)
OFF = -10.0  # outside (sigmoid ~ 0)


def _class_logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float32)


def _softmax_max(logits: list[float]) -> float:
    """Best softmax probability, written out from the definition."""
    exps = [math.exp(v) for v in logits]
    return max(exps) / sum(exps)


def _masks(height: int, width: int, regions: list[tuple[slice, slice]]) -> torch.Tensor:
    """One mask logit map per query: ON inside its region, OFF elsewhere."""
    masks = torch.full((1, len(regions), height, width), OFF)
    for q, (rows, cols) in enumerate(regions):
        masks[0, q, rows, cols] = ON
    return masks


def _run(class_logits, mask_logits, is_thing, config=None, resized=None, orig=None):
    size = tuple(mask_logits.shape[-2:])
    return panoptic_postprocess(
        class_logits,
        mask_logits,
        is_thing,
        input_size=size,
        resized_sizes=[resized or size],
        orig_sizes=[orig or size],
        config=config,
    )[0]


def test_stuff_queries_of_one_class_merge_and_things_stay_apart() -> None:
    # classes: 0 = thing, 1 = stuff; the last logit is "no object"
    rows = [
        [0.0, 6.0, 0.0],  # q0 stuff, left-top
        [0.0, 5.0, 0.0],  # q1 stuff, left-bottom: joins q0's segment
        [7.0, 0.0, 0.0],  # q2 thing, right-top
        [5.0, 0.0, 0.0],  # q3 thing, right-bottom
        [1.0, 0.0, 0.0],  # q4 below the 0.8 threshold
        [0.0, 0.0, 9.0],  # q5 no object
    ]
    regions = [
        (slice(0, 2), slice(0, 2)),
        (slice(2, 4), slice(0, 2)),
        (slice(0, 2), slice(2, 4)),
        (slice(2, 4), slice(2, 4)),
        (slice(0, 4), slice(0, 4)),
        (slice(0, 4), slice(0, 4)),
    ]
    result = _run(_class_logits(rows), _masks(4, 4, regions), [True, False])

    expected_segments = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
    expected_classes = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    assert torch.equal(result["masks"][..., 1], expected_segments)
    assert torch.equal(result["masks"][..., 0], expected_classes)
    assert result["segment_ids"].tolist() == [0, 1, 2]
    assert result["labels"].tolist() == [1, 0, 0]
    # a merged stuff segment keeps the score of the query that founded it (q0)
    expected_scores = [_softmax_max(rows[0]), _softmax_max(rows[2]), _softmax_max(rows[3])]
    assert result["scores"].tolist() == pytest.approx(expected_scores, abs=1e-6)


def _overlap_case() -> tuple[torch.Tensor, torch.Tensor]:
    """q0 (score 0.965) owns rows 0-1 (10 px); q1 (score 0.995) owns 3 of them plus row 3.

    q1 wins the 3 shared pixels and row 2 (where no mask is on, the higher score wins), so q0
    keeps 7 of its 10 pixels: overlap ratio exactly 0.7.
    """
    class_logits = _class_logits([[4.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    masks = torch.full((1, 2, 4, 5), OFF)
    masks[0, 0, 0:2, :] = ON
    masks[0, 1, 1, 0:3] = ON
    masks[0, 1, 3, :] = ON
    return class_logits, masks


def test_a_query_that_lost_too_much_of_its_mask_becomes_void() -> None:
    class_logits, masks = _overlap_case()
    result = _run(class_logits, masks, [True, False])  # overlap threshold 0.8 > 0.7

    v = -1
    expected = torch.tensor(
        [[v, v, v, v, v], [0, 0, 0, v, v], [v, v, v, v, v], [0, 0, 0, 0, 0]],
    )
    assert torch.equal(result["masks"][..., 1], expected)
    assert torch.equal(result["masks"][..., 0], torch.where(expected >= 0, 0, -1))
    assert result["scores"].tolist() == pytest.approx([_softmax_max([6.0, 0.0, 0.0])], abs=1e-6)


def test_overlap_threshold_is_inclusive() -> None:
    class_logits, masks = _overlap_case()
    result = _run(class_logits, masks, [True, False], PostprocessConfig(overlap_threshold=0.7))

    v = -1
    expected = torch.tensor(
        [[0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [v, v, v, v, v], [1, 1, 1, 1, 1]],
    )
    assert torch.equal(result["masks"][..., 1], expected)
    assert result["labels"].tolist() == [0, 0]


def test_score_threshold_drops_queries_before_the_merge() -> None:
    class_logits, masks = _overlap_case()
    # 0.99 keeps only q1 (0.995); q0 (0.965) no longer competes, its own pixels stay void
    result = _run(class_logits, masks, [True, False], PostprocessConfig(threshold=0.99))
    own_q1 = masks[0, 1] > 0
    assert torch.equal(result["masks"][..., 1], torch.where(own_q1, 0, -1))


def test_mask_threshold_defines_a_querys_own_mask() -> None:
    class_logits = _class_logits([[5.0, 0.0, 0.0]])
    masks = torch.full((1, 1, 3, 3), OFF)
    masks[0, 0, :2, :2] = 1.0  # sigmoid(1) = 0.731
    kept = _run(class_logits, masks, [True, False], PostprocessConfig(mask_threshold=0.7))
    dropped = _run(class_logits, masks, [True, False], PostprocessConfig(mask_threshold=0.75))
    assert (kept["masks"][:2, :2] == 0).all() and (kept["masks"][2, :] == -1).all()
    assert (dropped["masks"] == -1).all()
    assert dropped["segment_ids"].numel() == 0 and dropped["scores"].numel() == 0


def test_padding_is_cropped_and_the_original_size_restored() -> None:
    # padded input 8x8 holding a 4x8 image (2:1) whose original size is 20x40
    class_logits = _class_logits([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    regions = [
        (slice(0, 2), slice(0, 8)),  # top half of the image
        (slice(2, 4), slice(0, 8)),  # bottom half
        (slice(4, 8), slice(0, 8)),  # the padding only: must disappear
    ]
    result = _run(class_logits, _masks(8, 8, regions), [True, False], resized=(4, 8), orig=(20, 40))
    assert result["masks"].shape == (20, 40, 2)
    expected = torch.zeros(20, 40, dtype=torch.long)
    expected[10:] = 1
    assert torch.equal(result["masks"][..., 1], expected)
    assert torch.equal(result["masks"][..., 0], expected)  # q0 is class 0, q1 class 1
    assert result["labels"].tolist() == [0, 1]


def test_no_confident_query_gives_an_all_void_map_with_the_layout() -> None:
    result = _run(_class_logits([[0.0, 0.0, 5.0]]), torch.zeros(1, 1, 4, 4), [True, False])
    assert result["masks"].shape == (4, 4, 2) and result["masks"].dtype == torch.int64
    assert (result["masks"] == -1).all()
    assert result["segment_ids"].dtype == torch.int64 and result["segment_ids"].numel() == 0
    assert result["scores"].dtype == torch.float32 and result["scores"].numel() == 0


def test_large_images_are_processed_in_bands_with_the_same_result(monkeypatch) -> None:
    from panoptic_train.runtime import postprocess

    generator = torch.Generator().manual_seed(1)
    class_logits = torch.randn(1, 6, 4, generator=generator) * 6
    masks = torch.randn(1, 6, 4, 4, generator=generator) * 4
    whole = _run(class_logits, masks, [True, True, False], orig=(37, 23))
    monkeypatch.setattr(postprocess, "_MAX_BAND_ELEMENTS", 5 * 23)
    banded = _run(class_logits, masks, [True, True, False], orig=(37, 23))
    for key in whole:
        assert torch.equal(whole[key], banded[key])


@pytest.mark.parametrize("name", ["threshold", "mask_threshold", "overlap_threshold"])
def test_thresholds_outside_zero_one_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        PostprocessConfig(**{name: 1.5})


def _random_rectangle_logits(
    generator: torch.Generator, batch: int, queries: int, size: int
) -> torch.Tensor:
    masks = torch.full((batch, queries, size, size), OFF)
    corners = torch.randint(0, size, (batch, queries, 4), generator=generator)
    for b in range(batch):
        for q in range(queries):
            y0, y1 = sorted(corners[b, q, :2].tolist())
            x0, x1 = sorted(corners[b, q, 2:].tolist())
            masks[b, q, y0 : y1 + 1, x0 : x1 + 1] = ON
    return masks + torch.randn(masks.shape, generator=generator)


def test_matches_the_transformers_eomt_image_processor() -> None:
    processing = pytest.importorskip("transformers.models.eomt.image_processing_eomt")
    size = 32
    processor = processing.EomtImageProcessor(size={"shortest_edge": size, "longest_edge": size})
    is_thing = [True, True, True, False, False, False]
    stuff = [c for c, thing in enumerate(is_thing) if not thing]
    # transformers keeps ratio > t, we keep ratio >= t (Mask2Former, EoMT); an offset no integer
    # area ratio can hit makes both agree.
    overlap = 0.6 + 1e-7
    generator = torch.Generator().manual_seed(0)
    orig_sizes = [(24, 32), (32, 20)]  # resized inside the padded 32x32 input at scale 1
    compared_segments = 0
    for _ in range(10):
        class_logits = torch.randn(2, 12, 7, generator=generator) * 6
        mask_logits = _random_rectangle_logits(generator, 2, 12, size)
        reference = processor.post_process_panoptic_segmentation(
            types.SimpleNamespace(
                class_queries_logits=class_logits, masks_queries_logits=mask_logits
            ),
            target_sizes=orig_sizes,
            threshold=0.5,
            overlap_mask_area_threshold=overlap,
            stuff_classes=stuff,
        )
        ours = panoptic_postprocess(
            class_logits,
            mask_logits,
            is_thing,
            input_size=(size, size),
            resized_sizes=orig_sizes,
            orig_sizes=orig_sizes,
            config=PostprocessConfig(threshold=0.5, overlap_threshold=overlap),
        )
        for ref, res in zip(reference, ours, strict=True):
            assert torch.equal(res["masks"][..., 1], ref["segmentation"].long())
            assert res["labels"].tolist() == [s["label_id"] for s in ref["segments_info"]]
            ref_scores = [s["score"] for s in ref["segments_info"]]
            assert res["scores"].tolist() == pytest.approx(ref_scores, abs=1e-6)
            compared_segments += len(ref_scores)
    assert compared_segments >= 20  # the comparison saw real merges, not empty maps
