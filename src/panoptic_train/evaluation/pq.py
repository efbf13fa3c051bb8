"""Panoptic quality (PQ = SQ x RQ) with exactly the definitions of COCO's panopticapi `pq_compute`.

Per image, the pixels are reduced to an overlap table between ground-truth regions and predicted
segments with one `bincount` over combined ids; everything after that works on that small table,
so there is no Python loop over pixels or segment pairs. Per class, the accumulator keeps the
true positives, false positives, false negatives and the summed IoU of the matches: those four
numbers add up across images and across processes, and PQ/SQ/RQ follow from them at the end.

panopticapi's rules, which both entry points (in memory here, files in `files.py`) share:
- a ground-truth segment and a predicted segment of the same class match when their IoU > 0.5,
  where the union leaves out the predicted pixels that lie on void;
- crowd ground truth is never matched and never a false negative;
- an unmatched prediction is no false positive when more than half of it lies on void or on the
  crowd region of its own class;
- classes with no TP, FP or FN are left out of the averages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Rows of the statistics tensor (4, num_classes); float64 keeps the counts exact and sums the IoUs
# in the precision panopticapi uses, and one tensor means one all-reduce across processes.
TP, FP, FN, IOU = range(4)


@dataclass(frozen=True)
class SegmentOverlaps:
    """One image reduced to its segments: the input of the PQ rules.

    Row 0 of `overlaps` is ground-truth void, column 0 is predicted void; the other rows are the
    ground-truth segments (crowd regions included) and the other columns the predicted segments.
    """

    overlaps: torch.Tensor  # int64 (G + 1, P + 1): pixels shared by each region pair
    gt_class: torch.Tensor  # int64 (G + 1,): contiguous class index, -1 for row 0
    gt_crowd: torch.Tensor  # bool (G + 1,)
    gt_area: torch.Tensor  # float64 (G + 1,): pixel count, or the JSON `area` for files
    pred_class: torch.Tensor  # int64 (P + 1,): contiguous class index, -1 for column 0
    crowd_row: torch.Tensor  # int64 (num_classes,): the row of each class's crowd region, or -1


def image_statistics(image: SegmentOverlaps, num_classes: int) -> torch.Tensor:
    """Per-class TP, FP, FN and IoU sum of one image, as a float64 (4, num_classes) tensor."""
    overlaps = image.overlaps.to(torch.float64)
    pred_area = overlaps.sum(dim=0)
    on_void = overlaps[0]
    union = pred_area.unsqueeze(0) + image.gt_area.unsqueeze(1) - overlaps - on_void.unsqueeze(0)

    candidate = (
        (image.gt_class.unsqueeze(1) == image.pred_class.unsqueeze(0))
        & ~image.gt_crowd.unsqueeze(1)
        & (image.overlaps > 0)
    )
    candidate[0] = False
    candidate[:, 0] = False
    iou = torch.where(candidate, overlaps / union.where(candidate, 1.0), 0.0)
    match = candidate & (iou > 0.5)

    stats = overlaps.new_zeros(4, num_classes)
    matched_class = image.gt_class.unsqueeze(1).expand_as(match)[match]
    stats[TP] += torch.bincount(matched_class, minlength=num_classes)
    stats[IOU] += torch.bincount(matched_class, weights=iou[match], minlength=num_classes)

    missed = ~match.any(dim=1) & ~image.gt_crowd
    missed[0] = False
    stats[FN] += torch.bincount(image.gt_class[missed], minlength=num_classes)

    # panopticapi forgives an unmatched prediction that lies mostly on void or on its class's crowd.
    columns = torch.arange(overlaps.shape[1], device=overlaps.device)
    crowd_row = image.crowd_row[image.pred_class.clamp(min=0)]
    on_crowd = torch.where(crowd_row >= 0, overlaps[crowd_row.clamp(min=0), columns], 0.0)
    forgiven = (on_void + on_crowd) / pred_area.clamp(min=1.0) > 0.5
    false_positive = ~match.any(dim=0) & ~forgiven
    false_positive[0] = False
    stats[FP] += torch.bincount(image.pred_class[false_positive], minlength=num_classes)
    return stats


class PanopticQualityAccumulator:
    """Accumulates PQ statistics image by image; `compute()` gives panopticapi's result layout.

    Inputs follow the validation contract: `(H, W, 2)` int64 maps of (contiguous class index,
    segment id), void = -1, and a bool `(H, W)` crowd map whose pixels keep their class in the
    target. Statistics live on `device` (CPU by default; pass the training device to keep the
    work on the GPU). In a distributed run call `sync()` once on every rank before `compute()`.
    """

    def __init__(
        self,
        num_classes: int,
        is_thing: Sequence[bool],
        class_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.is_thing = [bool(flag) for flag in is_thing]
        self.class_ids = list(range(self.num_classes)) if class_ids is None else list(class_ids)
        self.class_names = (
            [str(class_id) for class_id in self.class_ids]
            if class_names is None
            else [str(name) for name in class_names]
        )
        for name, values in (
            ("is_thing", self.is_thing),
            ("class_ids", self.class_ids),
            ("class_names", self.class_names),
        ):
            if len(values) != self.num_classes:
                raise ValueError(
                    f"{name} has {len(values)} entries but num_classes is {self.num_classes}; "
                    "give one entry per class."
                )
        self.device = torch.device("cpu" if device is None else device)
        self._stats = torch.zeros(4, self.num_classes, dtype=torch.float64, device=self.device)

    def reset(self) -> None:
        """Forget everything accumulated (start of a new validation)."""
        self._stats.zero_()

    @property
    def statistics(self) -> torch.Tensor:
        """The float64 (4, num_classes) totals: rows TP, FP, FN and IoU sum."""
        return self._stats

    def add_statistics(self, stats: torch.Tensor) -> None:
        """Add per-class statistics computed elsewhere (`image_statistics`, another accumulator)."""
        self._stats += stats.to(device=self.device, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, crowd: torch.Tensor) -> None:
        """Score one image: `pred` and `target` are (H, W, 2) maps, `crowd` is (H, W) bool."""
        self.add_statistics(image_statistics(self._overlaps(pred, target, crowd), self.num_classes))

    def update_batch(
        self,
        preds: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        crowds: Sequence[torch.Tensor],
    ) -> None:
        """Score several images of possibly different sizes (e.g. a validation batch)."""
        if not len(preds) == len(targets) == len(crowds):
            raise ValueError(
                f"update_batch got {len(preds)} predictions, {len(targets)} targets and "
                f"{len(crowds)} crowd maps; pass one of each per image."
            )
        for pred, target, crowd in zip(preds, targets, crowds, strict=True):
            self.update(pred, target, crowd)

    def sync(self, all_reduce: Callable[[torch.Tensor], torch.Tensor | None] | None = None) -> None:
        """Sum the statistics of all processes into every process's accumulator.

        `all_reduce` sums a tensor across processes, in place or by returning the result (e.g.
        `lambda t: fabric.all_reduce(t, reduce_op="sum")`); without it torch.distributed is used
        when initialised, and a single process keeps its statistics. Call it once per evaluation:
        a second call would add the other ranks' statistics again.
        """
        if all_reduce is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                return
            dist.all_reduce(self._stats)
            return
        reduced = all_reduce(self._stats)
        if reduced is not None and reduced is not self._stats:
            self._stats.copy_(reduced)

    def compute(self) -> dict[str, Any]:
        """PQ, SQ, RQ (in [0, 1]) for All, Things and Stuff, plus per class keyed by class id."""
        tp, fp, fn, iou = self._stats.cpu().tolist()
        per_class: dict[int, dict[str, Any]] = {}
        for index, class_id in enumerate(self.class_ids):
            per_class[class_id] = {
                "name": self.class_names[index],
                "isthing": self.is_thing[index],
                **_class_quality(tp[index], fp[index], fn[index], iou[index]),
            }
        results: dict[str, Any] = {
            group: _average(
                [
                    per_class[class_id]
                    for index, class_id in enumerate(self.class_ids)
                    if keep is None or self.is_thing[index] == keep
                ]
            )
            for group, keep in (("All", None), ("Things", True), ("Stuff", False))
        }
        results["per_class"] = per_class
        return results

    def _overlaps(
        self, pred: torch.Tensor, target: torch.Tensor, crowd: torch.Tensor
    ) -> SegmentOverlaps:
        pred, target, crowd = self._checked(pred, target, crowd)
        pred_class, pred_segment = pred.reshape(-1, 2).unbind(1)
        gt_class, gt_segment = target.reshape(-1, 2).unbind(1)
        crowd = crowd.reshape(-1) & (gt_class >= 0)

        # One key per (class, segment id) pair, and one per class for its crowd region:
        # key = class * stride + segment, crowd key = class * stride + stride - 1, void = -1.
        stride = int(torch.maximum(pred_segment.max(), gt_segment.max()).clamp(min=0)) + 2
        pred_void = (pred_class < 0) | (pred_segment < 0)
        gt_void = (gt_class < 0) | ((gt_segment < 0) & ~crowd)
        pred_key = torch.where(pred_void, -1, pred_class * stride + pred_segment)
        gt_key = torch.where(
            gt_void, -1, gt_class * stride + torch.where(crowd, stride - 1, gt_segment)
        )
        pred_keys, pred_index = _dense_with_void(pred_key)
        gt_keys, gt_index = _dense_with_void(gt_key)

        columns = pred_keys.numel()
        overlaps = torch.bincount(
            gt_index * columns + pred_index, minlength=gt_keys.numel() * columns
        ).view(-1, columns)
        gt_row_class = gt_keys.div(stride, rounding_mode="floor")
        gt_crowd = (gt_keys >= 0) & (gt_keys % stride == stride - 1)
        crowd_row = torch.full((self.num_classes,), -1, dtype=torch.int64, device=self.device)
        crowd_rows = gt_crowd.nonzero().squeeze(1)
        crowd_row[gt_row_class[crowd_rows]] = crowd_rows
        return SegmentOverlaps(
            overlaps=overlaps,
            gt_class=gt_row_class,
            gt_crowd=gt_crowd,
            gt_area=overlaps.sum(dim=1).to(torch.float64),
            pred_class=pred_keys.div(stride, rounding_mode="floor"),
            crowd_row=crowd_row,
        )

    def _checked(
        self, pred: torch.Tensor, target: torch.Tensor, crowd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs on the accumulator's device, after checking the shapes and class range."""
        pred = torch.as_tensor(pred, device=self.device)
        target = torch.as_tensor(target, device=self.device)
        crowd = torch.as_tensor(crowd, device=self.device)
        if pred.ndim != 3 or pred.shape[-1] != 2 or target.shape != pred.shape:
            raise ValueError(
                f"pred and target must both be (H, W, 2) maps of (class index, segment id); got "
                f"shapes {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        if crowd.shape != pred.shape[:2]:
            raise ValueError(
                f"crowd must be an (H, W) = {tuple(pred.shape[:2])} bool map; got shape "
                f"{tuple(crowd.shape)}."
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(
                f"pred and target must hold integers; got {pred.dtype} and {target.dtype}."
            )
        pred, target = pred.long(), target.long()
        highest = int(torch.maximum(pred[..., 0].max(), target[..., 0].max()))
        if highest >= self.num_classes:
            raise ValueError(
                f"Class index {highest} is outside 0..{self.num_classes - 1} (num_classes="
                f"{self.num_classes}); maps must hold contiguous class indices, not category ids."
            )
        return pred, target, crowd.bool()


def _dense_with_void(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys with -1 (void) always first, and each pixel's position among them."""
    with_void = torch.cat([keys.new_full((1,), -1), keys])
    distinct, position = torch.unique(with_void, sorted=True, return_inverse=True)
    return distinct, position[1:]


def _class_quality(tp: float, fp: float, fn: float, iou: float) -> dict[str, Any]:
    """One class's PQ, SQ and RQ, in panopticapi's arithmetic (zeros when it has no segments)."""
    counts = {"tp": int(tp), "fp": int(fp), "fn": int(fn), "iou": iou}
    if tp + fp + fn == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, **counts}
    denominator = tp + 0.5 * fp + 0.5 * fn
    return {
        "pq": iou / denominator,
        "sq": iou / tp if tp != 0 else 0.0,
        "rq": tp / denominator,
        **counts,
    }


def _average(classes: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over the classes that have any TP, FP or FN (panopticapi's `n`); 0 when none has."""
    counted = [entry for entry in classes if entry["tp"] + entry["fp"] + entry["fn"] > 0]
    n = len(counted)
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    pq = sq = rq = 0.0
    for entry in counted:
        pq += entry["pq"]
        sq += entry["sq"]
        rq += entry["rq"]
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}
