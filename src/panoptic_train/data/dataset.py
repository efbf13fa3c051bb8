"""Train and validation datasets and their collate functions (the batch contracts in README.md).

Decoding and transforms run in `__getitem__`, i.e. inside DataLoader workers. Per-pixel work is
vectorised: the mask PNG becomes a segment-id map, which is transformed as one tensor and mapped
to classes with a sorted lookup (`searchsorted`), never with Python loops over pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from panoptic_train.data.check import check_dataset
from panoptic_train.data.coco import ClassMapping, PanopticIndex, Segment, read_panoptic_index
from panoptic_train.data.config import DataArgs, SplitArgs
from panoptic_train.data.io import load_image, load_segment_ids
from panoptic_train.data.transforms import (
    NormalizeArgs,
    TrainTransform,
    TransformArgs,
    resize_and_pad,
)
from panoptic_train.errors import DataError


@dataclass(frozen=True)
class _SegmentTable:
    """One image's segments as arrays sorted by segment id, for vectorised pixel lookups.

    Entry 0 is void (id 0, class -1, not crowd), so every valid pixel has an entry, also in
    images without segments.
    """

    ids: torch.Tensor  # int32 (K,), sorted
    classes: torch.Tensor  # int64 (K,), contiguous class index, -1 for ignored categories
    crowd: torch.Tensor  # bool (K,)


class _PanopticDataset(Dataset[dict[str, Any]]):
    """What train and val share: the index, the class lookup and decoding of one sample."""

    def __init__(self, index: PanopticIndex, classes: ClassMapping) -> None:
        self.index = index
        self.classes = classes
        self._tables = [_segment_table(sample.segments, classes) for sample in index.samples]

    def __len__(self) -> int:
        return len(self.index.samples)

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) uint8 image and (H, W) int32 segment ids of sample `i` (all 0 = void for an
        unlabelled image)."""
        sample = self.index.samples[i]
        image = torch.from_numpy(load_image(sample.image_path)).permute(2, 0, 1).contiguous()
        if sample.mask_path is None:
            return image, torch.zeros(image.shape[1:], dtype=torch.int32)
        ids = torch.from_numpy(load_segment_ids(sample.mask_path))
        if image.shape[1:] != ids.shape:
            raise DataError(
                f"Image '{sample.image_path}' is {image.shape[1]}x{image.shape[2]} (HxW) but its "
                f"mask '{sample.mask_path}' is {ids.shape[0]}x{ids.shape[1]}. The mask must have "
                "the image's size; regenerate it or fix the image."
            )
        return image, ids

    def _lookup(self, i: int, ids: torch.Tensor) -> torch.Tensor:
        """Position of each pixel's segment in the table (void and padding, id < 0: entry 0).

        Raises DataError for segment ids in the PNG that `segments_info` does not list.
        """
        table = self._tables[i]
        position = torch.searchsorted(table.ids, ids).clamp_(max=table.ids.numel() - 1)
        unknown = (ids > 0) & (table.ids[position] != ids)
        if bool(unknown.any()):
            sample = self.index.samples[i]
            values = torch.unique(ids[unknown])[:10].tolist()
            raise DataError(
                f"Mask '{sample.mask_path}' contains segment id(s) {values} that are not in the "
                f"'segments_info' of image id {sample.image_id!r} in "
                f"'{self.index.annotations_path}'. "
                "Add those segments to the JSON or set their pixels to 0 (void)."
            )
        return position


def _segment_table(segments: Iterable[Segment], classes: ClassMapping) -> _SegmentTable:
    ordered = sorted(segments, key=lambda segment: segment.id)
    class_of = {category_id: index for index, category_id in enumerate(classes.class_ids)}
    return _SegmentTable(
        ids=torch.tensor([0, *(s.id for s in ordered)], dtype=torch.int32),
        classes=torch.tensor(
            [-1, *(class_of.get(s.category_id, -1) for s in ordered)], dtype=torch.int64
        ),
        crowd=torch.tensor([False, *(s.iscrowd for s in ordered)], dtype=torch.bool),
    )


class PanopticTrainDataset(_PanopticDataset):
    """Augmented samples: one binary mask per non-crowd segment and an ignore map.

    Crowd segments, void pixels, ignored classes and padding are all in `ignore` (the loss
    samples no points there); masks left empty by the crop are dropped.
    """

    def __init__(
        self, index: PanopticIndex, classes: ClassMapping, transform: TrainTransform
    ) -> None:
        super().__init__(index, classes)
        self.transform = transform

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, ids = self._load(i)
        image, ids = self.transform(image, ids)
        position = self._lookup(i, ids)
        table = self._tables[i]
        trainable = (table.classes >= 0) & ~table.crowd
        present = torch.zeros(table.ids.numel(), dtype=torch.bool)
        present[position] = True
        kept = torch.nonzero(trainable & present).squeeze(1)
        masks = ids.unsqueeze(0) == table.ids[kept].view(-1, 1, 1)
        return {
            "image": image,
            "masks": masks,
            "labels": table.classes[kept],
            "ignore": ~masks.any(dim=0),
        }


class PanopticValDataset(_PanopticDataset):
    """Samples preprocessed exactly as `predict` does, with targets at the original size."""

    def __init__(
        self,
        index: PanopticIndex,
        classes: ClassMapping,
        image_size: tuple[int, int],
        normalize: NormalizeArgs,
    ) -> None:
        super().__init__(index, classes)
        self.image_size = image_size
        self.normalize = normalize

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, ids = self._load(i)
        inputs, resized_size = resize_and_pad(
            image, self.image_size, self.normalize.mean, self.normalize.std
        )
        position = self._lookup(i, ids)
        table = self._tables[i]
        class_index = table.classes[position]
        labelled = class_index >= 0
        segment_id = torch.where(labelled, ids.long(), -1)
        return {
            "image": inputs,
            "target": torch.stack([class_index, segment_id], dim=-1),
            "crowd": labelled & table.crowd[position],
            "image_id": self.index.samples[i].image_id,
            "orig_size": (int(ids.shape[0]), int(ids.shape[1])),
            "resized_size": resized_size,
        }


def collate_train(samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Train batch: `images` (B, 3, H, W) and `targets` [{masks, labels, ignore}] per image."""
    return {
        "images": torch.stack([sample["image"] for sample in samples]),
        "targets": [
            {"masks": s["masks"], "labels": s["labels"], "ignore": s["ignore"]} for s in samples
        ],
    }


def collate_val(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Val batch: `images` (B, 3, S_h, S_w) and `targets` [{target, crowd, image_id, orig_size,
    resized_size}] per image (targets keep each image's original size)."""
    return {
        "images": torch.stack([sample["image"] for sample in samples]),
        "targets": [{key: value for key, value in s.items() if key != "image"} for s in samples],
    }


@dataclass(frozen=True)
class PanopticDatasets:
    train: PanopticTrainDataset
    val: PanopticValDataset
    classes: ClassMapping


def build_datasets(
    data: DataArgs,
    transform_args: TransformArgs,
    classes: ClassMapping | None = None,
    *,
    check_pixels: bool = True,
    num_workers: int = 0,
) -> PanopticDatasets:
    """Read and validate both splits and build their datasets.

    The classes come from the train JSON's categories minus `ignore_classes`, unless `classes`
    is given (e.g. to keep a fine-tuned model's class order). With `check_pixels` every mask is
    decoded first (spread over `num_workers` processes) so that bad data fails before training
    starts. With `data.allow_unlabeled`, images without annotation are all-void samples: in
    training they teach the network to predict "no object" everywhere. Raises DataError listing
    the problems of a split, or if a split uses a category the classes do not know.
    """
    indices = [
        _read_split(split, data, check_pixels, num_workers) for split in (data.train, data.val)
    ]
    train_index, val_index = indices
    if classes is None:
        classes = ClassMapping.from_categories(train_index.categories, data.ignore_classes)
    for index in indices:
        _check_categories_known(index, classes)
    return PanopticDatasets(
        train=PanopticTrainDataset(train_index, classes, TrainTransform(transform_args)),
        val=PanopticValDataset(
            val_index, classes, transform_args.val_image_size, transform_args.val_normalize
        ),
        classes=classes,
    )


def _read_split(
    split: SplitArgs, data: DataArgs, check_pixels: bool, num_workers: int
) -> PanopticIndex:
    if not check_pixels:
        return read_panoptic_index(
            split.images,
            split.masks,
            split.annotations,
            ignore_classes=data.ignore_classes,
            allow_unlabeled=data.allow_unlabeled,
        )
    report = check_dataset(
        split.images,
        split.masks,
        split.annotations,
        ignore_classes=data.ignore_classes,
        allow_unlabeled=data.allow_unlabeled,
        decode_images=False,
        num_workers=num_workers,
    )
    return report.usable_index()


def _check_categories_known(index: PanopticIndex, classes: ClassMapping) -> None:
    known = set(classes.class_ids) | set(index.ignore_classes)
    used = {segment.category_id for sample in index.samples for segment in sample.segments}
    unknown = sorted(used - known)
    if unknown:
        raise DataError(
            f"'{index.annotations_path}' uses category id(s) {unknown} that are not among the "
            f"training classes {list(classes.class_ids)}. Add them to the train JSON's "
            "'categories', list them in data.ignore_classes, or fix the annotations."
        )
