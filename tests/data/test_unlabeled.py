"""`allow_unlabeled`: images listed in the JSON without an annotation become all-void negatives
in check-data and in both datasets; without the option they stay an error. An annotation with
empty `segments_info` and an all-zero mask is a negative that needs no option."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_train.data import _cli
from panoptic_train.data.check import check_dataset
from panoptic_train.data.coco import read_panoptic_index
from panoptic_train.data.config import load_data_args
from panoptic_train.data.dataset import build_datasets
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.errors import DataError

NEGATIVE_SIZE = (24, 40)  # (height, width), unlike the labelled images


@pytest.fixture
def split(tmp_path: Path) -> dict[str, str]:
    """Two labelled synthetic images, a labelled negative (image id 50: empty segments_info,
    all-zero mask) and, last in 'images', an image without annotation or mask (id 99)."""
    paths = write_dataset(tmp_path, 2, image_size=(32, 48), seed=4)
    for name in ("negative.png", "empty.png"):
        Image.new("RGB", NEGATIVE_SIZE[::-1], (9, 9, 9)).save(Path(paths["images"]) / name)
    Image.new("RGB", NEGATIVE_SIZE[::-1]).save(Path(paths["masks"]) / "negative.png")
    raw = json.loads(Path(paths["annotations"]).read_text())
    raw["images"].append({"id": 50, "file_name": "negative.png", "height": 24, "width": 40})
    raw["annotations"].append({"image_id": 50, "file_name": "negative.png", "segments_info": []})
    raw["images"].append({"id": 99, "file_name": "empty.png", "height": 24, "width": 40})
    Path(paths["annotations"]).write_text(json.dumps(raw))
    return paths


def test_default_is_an_error_that_names_the_option(split: dict[str, str]) -> None:
    with pytest.raises(DataError) as info:
        read_panoptic_index(**split)
    message = str(info.value)
    assert "Image 'empty.png' (image id 99) has no entry in 'annotations'" in message
    assert "data.allow_unlabeled" in message
    assert not check_dataset(**split).ok


def test_allowed_unlabeled_image_is_a_sample_without_mask(split: dict[str, str]) -> None:
    index = read_panoptic_index(**split, allow_unlabeled=True)
    assert len(index.samples) == 4
    assert index.samples[2].mask_path == Path(split["masks"]) / "negative.png"
    negative = index.samples[3]
    assert negative.image_id == 99
    assert negative.mask_path is None and negative.segments == ()
    assert (negative.height, negative.width) == NEGATIVE_SIZE

    report = check_dataset(**split, allow_unlabeled=True)
    assert report.ok, report.errors
    assert "4 images (1 unlabelled: all void)" in report.summary()


def test_check_data_command_has_the_flag(
    split: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    _cli.add_arguments(parser)
    flags = ["--images", split["images"], "--masks", split["masks"]]
    flags += ["--annotations", split["annotations"]]
    assert _cli.run(parser.parse_args(flags)) == 1
    assert _cli.run(parser.parse_args([*flags, "--allow-unlabeled"])) == 0
    assert "1 unlabelled" in capsys.readouterr().out


def test_unlabeled_image_still_needs_its_file_and_its_size(split: dict[str, str]) -> None:
    raw = json.loads(Path(split["annotations"]).read_text())
    raw["images"][-1]["height"] = 25
    raw["images"].append({"id": 100, "file_name": "gone.png"})
    Path(split["annotations"]).write_text(json.dumps(raw))
    errors = "\n".join(check_dataset(**split, allow_unlabeled=True).errors)
    assert "gone.png' (image id 100) does not exist" in errors
    assert "size 25x40 (HxW)" in errors and "empty.png' is 24x40" in errors


@pytest.mark.parametrize(("position", "image_id"), [(2, 50), (3, 99)])
def test_datasets_give_all_void_targets(
    split: dict[str, str], position: int, image_id: int
) -> None:
    data = load_data_args({"train": split, "val": split, "allow_unlabeled": True})
    assert data.allow_unlabeled
    assert not load_data_args({"train": split, "val": split}).allow_unlabeled
    identity = {"image_size": NEGATIVE_SIZE, "scale_jitter": None, "horizontal_flip_prob": 0.0}
    datasets = build_datasets(data, load_transform_args(identity))

    train = datasets.train[position]
    assert train["image"].shape == (3, *NEGATIVE_SIZE)
    assert train["masks"].shape == (0, *NEGATIVE_SIZE) and train["labels"].numel() == 0
    assert bool(train["ignore"].all())

    val = datasets.val[position]
    assert val["image_id"] == image_id
    assert val["target"].dtype == torch.int64
    np.testing.assert_array_equal(val["target"].numpy(), np.full((*NEGATIVE_SIZE, 2), -1))
    assert not bool(val["crowd"].any())
