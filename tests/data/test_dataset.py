"""Datasets and collate: the train and val batch layouts of README.md's contracts, with targets
checked against references built from the JSON and PNG by the test itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from panoptic_train.data.coco import ClassMapping, read_panoptic_index
from panoptic_train.data.config import load_data_args
from panoptic_train.data.dataset import (
    PanopticTrainDataset,
    PanopticValDataset,
    build_datasets,
    collate_train,
    collate_val,
)
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainTransform,
    load_transform_args,
    resize_and_pad,
)
from panoptic_train.errors import DataError

# Identity geometry: the train transform then only normalises, so targets are comparable
# pixel for pixel with the source PNG.
IDENTITY = {"image_size": (96, 128), "scale_jitter": None, "horizontal_flip_prob": 0.0}


def _reference(split: dict[str, str], position: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Segment id map straight from the PNG and the image's segments_info from the JSON."""
    raw = json.loads(Path(split["annotations"]).read_text())
    entry = raw["annotations"][position]
    rgb = np.asarray(Image.open(Path(split["masks"]) / entry["file_name"])).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], entry["segments_info"]


def _mapping(split: dict[str, str], ignore: tuple[int, ...] = ()) -> ClassMapping:
    return ClassMapping.from_categories(read_panoptic_index(**split).categories, ignore)


@pytest.mark.parametrize("ignore", [(), (11,)])
def test_train_sample_masks_labels_and_ignore(
    synthetic_split: dict[str, str], ignore: tuple[int, ...]
) -> None:
    index = read_panoptic_index(**synthetic_split, ignore_classes=ignore)
    classes = _mapping(synthetic_split, ignore)
    dataset = PanopticTrainDataset(index, classes, TrainTransform(load_transform_args(IDENTITY)))
    saw_crowd = saw_ignored = False
    for position in range(len(dataset)):
        sample = dataset[position]
        ids, segments = _reference(synthetic_split, position)
        kept = [s for s in segments if not s["iscrowd"] and s["category_id"] not in ignore]
        saw_crowd |= any(s["iscrowd"] for s in segments)
        saw_ignored |= any(s["category_id"] in ignore for s in segments)

        assert sample["masks"].dtype == torch.bool and sample["masks"].shape == (len(kept), 96, 128)
        assert sample["labels"].dtype == torch.int64
        expected_masks = np.stack([ids == s["id"] for s in kept])
        order = np.argsort([s["id"] for s in kept])  # the dataset orders segments by id
        np.testing.assert_array_equal(sample["masks"].numpy(), expected_masks[order])
        expected_labels = [classes.class_ids.index(kept[i]["category_id"]) for i in order]
        assert sample["labels"].tolist() == expected_labels
        np.testing.assert_array_equal(sample["ignore"].numpy(), ~expected_masks.any(axis=0))
        image = (sample["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1)) + torch.tensor(
            IMAGENET_MEAN
        ).view(3, 1, 1)
        source = np.asarray(Image.open(index.samples[position].image_path)) / 255
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), source, atol=1e-5)
    assert saw_crowd
    assert saw_ignored == bool(ignore)


def test_val_sample_targets_at_the_original_size(synthetic_split: dict[str, str]) -> None:
    index = read_panoptic_index(**synthetic_split, ignore_classes=[12])
    classes = _mapping(synthetic_split, (12,))
    args = load_transform_args({"val": {"image_size": (64, 64)}})
    dataset = PanopticValDataset(index, classes, args.val_image_size, args.val_normalize)
    for position in range(len(dataset)):
        sample = dataset[position]
        ids, segments = _reference(synthetic_split, position)
        expected = np.full((96, 128, 2), -1, dtype=np.int64)
        expected_crowd = np.zeros((96, 128), dtype=bool)
        for segment in segments:
            if segment["category_id"] == 12:
                continue  # ignored class: void
            pixels = ids == segment["id"]
            expected[pixels] = (classes.class_ids.index(segment["category_id"]), segment["id"])
            expected_crowd[pixels] = bool(segment["iscrowd"])

        assert sample["target"].dtype == torch.int64
        np.testing.assert_array_equal(sample["target"].numpy(), expected)
        np.testing.assert_array_equal(sample["crowd"].numpy(), expected_crowd)
        assert sample["image_id"] == position + 1
        assert sample["orig_size"] == (96, 128)
        assert sample["resized_size"] == (48, 64)
        source = torch.from_numpy(np.array(Image.open(index.samples[position].image_path)))
        preprocessed, _ = resize_and_pad(
            source.permute(2, 0, 1), (64, 64), IMAGENET_MEAN, IMAGENET_STD
        )
        assert torch.equal(sample["image"], preprocessed)


def test_batches_from_worker_processes(synthetic_split: dict[str, str], tmp_path: Path) -> None:
    val_split = write_dataset(tmp_path, 3, image_size=(80, 60), seed=0, split="val")
    data = load_data_args({"train": synthetic_split, "val": val_split})
    datasets = build_datasets(data, load_transform_args({"image_size": (64, 64)}))
    assert datasets.classes.num_classes == 6

    train_loader = DataLoader(datasets.train, batch_size=3, num_workers=2, collate_fn=collate_train)
    batches = list(train_loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["images"].shape == (3, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert len(batch["targets"]) == 3
    for target in batch["targets"]:
        assert set(target) == {"masks", "labels", "ignore"}
        n = target["labels"].shape[0]
        assert target["masks"].shape == (n, 64, 64) and target["ignore"].shape == (64, 64)
        assert bool(target["masks"].flatten(1).any(1).all())  # no empty masks after the crop
        assert torch.equal(target["ignore"], ~target["masks"].any(0))

    val_batch = next(iter(DataLoader(datasets.val, batch_size=2, collate_fn=collate_val)))
    assert val_batch["images"].shape == (2, 3, 64, 64)
    first = val_batch["targets"][0]
    assert set(first) == {"target", "crowd", "image_id", "orig_size", "resized_size"}
    assert first["target"].shape == (80, 60, 2) and first["crowd"].shape == (80, 60)
    assert first["resized_size"] == (64, 48)


def test_unlisted_segment_id_fails_at_loading_with_the_file(
    synthetic_split: dict[str, str], tmp_path: Path
) -> None:
    split = write_dataset(tmp_path, 1, image_size=(32, 32), seed=3)
    raw = json.loads(Path(split["annotations"]).read_text())
    removed = raw["annotations"][0]["segments_info"].pop()
    Path(split["annotations"]).write_text(json.dumps(raw))
    index = read_panoptic_index(**split)
    dataset = PanopticValDataset(
        index, _mapping(split), (32, 32), load_transform_args({}).normalize
    )
    with pytest.raises(
        DataError, match=rf"000001\.png' contains segment id\(s\) \[{removed['id']}\]"
    ):
        dataset[0]


def test_build_datasets_checks_pixels_before_training(tmp_path: Path) -> None:
    train = write_dataset(tmp_path, 2, image_size=(32, 32), seed=1)
    val = write_dataset(tmp_path, 1, image_size=(32, 32), seed=1, split="val")
    raw = json.loads(Path(val["annotations"]).read_text())
    raw["annotations"][0]["segments_info"].pop()
    Path(val["annotations"]).write_text(json.dumps(raw))
    data = load_data_args({"train": train, "val": val})
    with pytest.raises(DataError, match=r"val\.json"):
        build_datasets(data, load_transform_args({}))
    build_datasets(data, load_transform_args({}), check_pixels=False)  # the fast path skips it


def test_val_category_unknown_to_training_is_an_error(tmp_path: Path) -> None:
    train = write_dataset(tmp_path, 1, image_size=(32, 32), seed=1)
    val = write_dataset(tmp_path, 1, image_size=(32, 32), seed=1, split="val")
    raw = json.loads(Path(train["annotations"]).read_text())
    raw["categories"] = [c for c in raw["categories"] if c["id"] != 10]
    for entry in raw["annotations"]:
        entry["segments_info"] = [s for s in entry["segments_info"] if s["category_id"] != 10]
    Path(train["annotations"]).write_text(json.dumps(raw))
    data = load_data_args({"train": train, "val": val})
    with pytest.raises(DataError, match=r"category id\(s\) \[10\] that are not among"):
        build_datasets(data, load_transform_args({}), check_pixels=False)
