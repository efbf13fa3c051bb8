"""The in-memory accumulator: hand-computed cases, a reference written from the definition,
distributed reduction and input checks."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic_train.evaluation.pq import PanopticQualityAccumulator

# Legend entries: (class index, segment id, is crowd); characters missing from a legend are void.
Legend = dict[str, tuple[int, int, bool]]


def panoptic_map(rows: list[str], legend: Legend) -> tuple[torch.Tensor, torch.Tensor]:
    """An (H, W, 2) map and an (H, W) crowd map drawn as text, one character per pixel."""
    maps = torch.full((len(rows), len(rows[0]), 2), -1, dtype=torch.int64)
    crowd = torch.zeros(len(rows), len(rows[0]), dtype=torch.bool)
    for y, row in enumerate(rows):
        for x, char in enumerate(row):
            if char in legend:
                class_index, segment_id, is_crowd = legend[char]
                maps[y, x] = torch.tensor([class_index, segment_id])
                crowd[y, x] = is_crowd
    return maps, crowd


def score(
    images: list[tuple[list[str], list[str]]],
    gt_legend: Legend,
    pred_legend: Legend,
    is_thing: tuple[bool, ...] = (True, True, False),
) -> dict:
    accumulator = PanopticQualityAccumulator(len(is_thing), is_thing, class_ids=[3, 5, 7])
    for gt_rows, pred_rows in images:
        target, crowd = panoptic_map(gt_rows, gt_legend)
        pred, _ = panoptic_map(pred_rows, pred_legend)
        accumulator.update(pred, target, crowd)
    return accumulator.compute()


def counts(result: dict, class_id: int) -> tuple[int, int, int, float]:
    entry = result["per_class"][class_id]
    return entry["tp"], entry["fp"], entry["fn"], entry["iou"]


GT: Legend = {"A": (0, 1, False), "B": (1, 2, False), "S": (2, 3, False), "X": (0, 9, True)}
PRED: Legend = {
    "a": (0, 11, False),
    "b": (1, 12, False),
    "c": (0, 13, False),
    "m": (0, 14, False),
    "s": (2, 15, False),
    "t": (2, 16, False),
}


def test_iou_of_exactly_one_half_is_not_a_match() -> None:
    result = score([(["AAAAAAAA"], ["aaaa...."]), (["AAAAAAAA"], ["aaaaa..."])], GT, PRED)
    # 4/8 = 0.5: a false negative and a false positive; 5/8 = 0.625: a match.
    assert counts(result, 3) == (1, 1, 1, pytest.approx(0.625))
    assert result["per_class"][3]["pq"] == pytest.approx(0.625 / 2)


def test_void_pixels_leave_the_union_and_forgive_predictions_lying_on_them() -> None:
    result = score(
        [
            (["AA......"], ["aaaaa..."]),  # IoU 2 / (5 + 2 - 2 - 3) = 1.0, not 2/5
            (["BBBB...."], ["...bbbb."]),  # no match, 3/4 on void: not a false positive
            (["BBBB...."], ["..bbbb.."]),  # IoU 2/4 (no match), exactly 1/2 on void: FP
        ],
        GT,
        PRED,
    )
    assert counts(result, 3) == (1, 0, 0, pytest.approx(1.0))
    assert counts(result, 5) == (0, 1, 2, 0.0)
    assert result["All"] == {"pq": pytest.approx(0.5), "sq": pytest.approx(0.5),
                             "rq": pytest.approx(0.5), "n": 2}  # fmt: skip


def test_crowd_is_never_a_false_negative_and_forgives_predictions_of_its_class() -> None:
    result = score(
        [
            (
                ["XXXXXXAA", "XXBB...."],
                # a: all on crowd of its class; b: on crowd of another class (FP);
                # m: matches A; c: half crowd, half B (FP)
                ["aaaa.bmm", "cccc...."],
            )
        ],
        GT,
        PRED,
    )
    assert counts(result, 3) == (1, 1, 0, pytest.approx(1.0))
    assert counts(result, 5) == (0, 1, 1, 0.0)


def test_stuff_split_into_two_predicted_segments() -> None:
    result = score([(["SSSSSSSSSS"], ["sssssstttt"])], GT, PRED)
    assert counts(result, 7) == (1, 1, 0, pytest.approx(0.6))
    assert result["Stuff"] == {"pq": pytest.approx(0.4), "sq": pytest.approx(0.6),
                               "rq": pytest.approx(2 / 3), "n": 1}  # fmt: skip
    assert result["Things"]["n"] == 0


def test_empty_prediction_makes_every_ground_truth_segment_a_false_negative() -> None:
    result = score([(["AAAASSSS"], ["........"])], GT, PRED)
    assert counts(result, 3) == (0, 0, 1, 0.0)
    assert counts(result, 7) == (0, 0, 1, 0.0)
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert (result["Things"]["n"], result["Stuff"]["n"]) == (1, 1)


def test_class_only_in_predictions_counts_and_absent_classes_do_not() -> None:
    result = score([(["AAAAAAAA"], ["aaaaaabb"])], GT, PRED)
    assert counts(result, 3) == (1, 0, 0, pytest.approx(0.75))
    assert counts(result, 5) == (0, 1, 0, 0.0)
    # class 7 has no segment anywhere: listed with zeros, left out of the averages
    assert result["per_class"][7]["pq"] == 0.0
    assert result["All"]["n"] == 2
    assert result["All"]["pq"] == pytest.approx((0.75 + 0.0) / 2)
    assert result["Things"]["pq"] == pytest.approx(0.375)


def test_result_layout_is_panopticapis() -> None:
    result = score([(["AABBSS"], ["aabbss"])], GT, {**PRED, "a": (0, 1, False)})
    assert set(result) == {"All", "Things", "Stuff", "per_class"}
    for group in ("All", "Things", "Stuff"):
        assert set(result[group]) == {"pq", "sq", "rq", "n"}
    assert list(result["per_class"]) == [3, 5, 7]
    assert result["per_class"][7]["isthing"] is False
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}


def segment_masks(maps: np.ndarray, where: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """(class, segment id) -> boolean mask of its pixels, over the pixels in `where`."""
    keys = np.unique(maps[where], axis=0)
    return {(int(c), int(i)): (maps[..., 0] == c) & (maps[..., 1] == i) & where for c, i in keys}


def reference_statistics(scenes, num_classes: int) -> dict[int, list[float]]:
    """TP, FP, FN and IoU sum per class, written from the definition with boolean masks."""
    stats: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for scene in scenes:
        target_class = scene.target[..., 0]
        gt_void = target_class < 0
        crowd = scene.crowd & ~gt_void
        gt_segments = segment_masks(scene.target, ~gt_void & ~crowd)
        pred_segments = segment_masks(scene.pred, scene.pred[..., 0] >= 0)
        matched_gt, matched_pred = set(), set()
        for gt_key, gt_mask in gt_segments.items():
            for pred_key, pred_mask in pred_segments.items():
                if gt_key[0] != pred_key[0]:
                    continue
                intersection = (gt_mask & pred_mask).sum()
                union = (gt_mask | pred_mask).sum() - (pred_mask & gt_void).sum()
                if intersection > 0 and intersection / union > 0.5:
                    stats[gt_key[0]][0] += 1
                    stats[gt_key[0]][3] += intersection / union
                    matched_gt.add(gt_key)
                    matched_pred.add(pred_key)
        for gt_key in gt_segments.keys() - matched_gt:
            stats[gt_key[0]][2] += 1
        for pred_key in pred_segments.keys() - matched_pred:
            mask = pred_segments[pred_key]
            ignored = (mask & gt_void).sum() + (mask & crowd & (target_class == pred_key[0])).sum()
            if ignored / mask.sum() <= 0.5:
                stats[pred_key[0]][1] += 1
    return stats


def test_matches_a_reference_written_from_the_definition(coco) -> None:
    num_classes, is_thing = 4, (True, False, True, False)
    scenes = coco.scenes(40, num_classes, seed=1)
    accumulator = PanopticQualityAccumulator(num_classes, is_thing)
    accumulator.update_batch(
        [torch.from_numpy(s.pred) for s in scenes],
        [torch.from_numpy(s.target) for s in scenes],
        [torch.from_numpy(s.crowd) for s in scenes],
    )
    result = accumulator.compute()
    expected = reference_statistics(scenes, num_classes)
    assert sum(expected[c][0] for c in expected) > 20, "the scenes should produce many matches"

    for class_index in range(num_classes):
        tp, fp, fn, iou = expected[class_index]
        entry = result["per_class"][class_index]
        assert (entry["tp"], entry["fp"], entry["fn"]) == (tp, fp, fn)
        assert entry["iou"] == pytest.approx(iou, rel=1e-12)
    for group, keep in (("All", None), ("Things", True), ("Stuff", False)):
        quality = [
            (expected[c][3] / (expected[c][0] + expected[c][1] / 2 + expected[c][2] / 2))
            for c in range(num_classes)
            if (keep is None or is_thing[c] == keep) and sum(expected[c][:3]) > 0
        ]
        assert result[group]["n"] == len(quality)
        assert result[group]["pq"] == pytest.approx(sum(quality) / len(quality), rel=1e-12)


def test_sync_sums_the_statistics_of_all_ranks(coco) -> None:
    scenes = coco.scenes(12, 3, seed=2)
    is_thing = (True, True, False)
    whole = PanopticQualityAccumulator(3, is_thing)
    ranks = [PanopticQualityAccumulator(3, is_thing) for _ in range(2)]
    for position, scene in enumerate(scenes):
        for accumulator in (whole, ranks[position % 2]):
            accumulator.update(scene.pred, scene.target, scene.crowd)
    total = ranks[0].statistics + ranks[1].statistics
    ranks[0].sync(lambda tensor: total.clone())  # returns the reduced tensor, like Fabric
    ranks[1].sync(lambda tensor: tensor.copy_(total))  # reduces in place, like torch.distributed
    for accumulator in ranks:
        torch.testing.assert_close(accumulator.statistics, whole.statistics, rtol=1e-12, atol=0)


def test_sync_uses_torch_distributed_when_initialised(coco, tmp_path: Path) -> None:
    scene = coco.scenes(1, 3, seed=3)[0]
    accumulator = PanopticQualityAccumulator(3, (True, True, False))
    accumulator.update(scene.pred, scene.target, scene.crowd)
    before = accumulator.statistics.clone()
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        accumulator.sync()
    finally:
        torch.distributed.destroy_process_group()
    assert torch.equal(accumulator.statistics, before)


def test_reset_forgets_everything(coco) -> None:
    scene = coco.scenes(1, 3, seed=4)[0]
    accumulator = PanopticQualityAccumulator(3, (True, True, False))
    accumulator.update(scene.pred, scene.target, scene.crowd)
    accumulator.reset()
    assert accumulator.compute()["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_rejects_category_ids_in_place_of_class_indices() -> None:
    accumulator = PanopticQualityAccumulator(3, (True, True, False))
    maps = torch.full((4, 4, 2), 7)
    with pytest.raises(ValueError, match=r"Class index 7 is outside 0\.\.2"):
        accumulator.update(maps, maps, torch.zeros(4, 4, dtype=torch.bool))


def test_rejects_mismatched_shapes() -> None:
    accumulator = PanopticQualityAccumulator(3, (True, True, False))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        accumulator.update(
            torch.zeros(4, 4, 2, dtype=torch.int64),
            torch.zeros(4, 5, 2, dtype=torch.int64),
            torch.zeros(4, 4, dtype=torch.bool),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_gives_the_cpu_result(coco) -> None:
    scenes = coco.scenes(20, 4, seed=5)
    statistics = []
    for device in ("cpu", "cuda"):
        accumulator = PanopticQualityAccumulator(4, (True, False, True, False), device=device)
        for scene in scenes:
            accumulator.update(
                torch.from_numpy(scene.pred).to(device),
                torch.from_numpy(scene.target).to(device),
                torch.from_numpy(scene.crowd).to(device),
            )
        assert accumulator.statistics.device.type == device
        statistics.append(accumulator.statistics.cpu())
    torch.testing.assert_close(statistics[0], statistics[1], rtol=1e-12, atol=0)
