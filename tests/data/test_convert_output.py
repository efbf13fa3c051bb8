"""What every converter shares on the output side: data.yaml, refusing to overwrite or to
delete inputs, split names, and no half-written split after a failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from panoptic_train.data.config import load_data_args
from panoptic_train.data.convert import convert_semantic_instance
from panoptic_train.errors import ConfigError, DataError


@pytest.fixture
def source(tmp_path: Path) -> dict[str, Path]:
    """One 2x3 image of road (stuff 1) and a car (thing 2, instance 1)."""
    paths = {name: tmp_path / "source" / name for name in ("images", "semantic", "instances")}
    for folder in paths.values():
        folder.mkdir(parents=True)
    Image.new("RGB", (3, 2), (10, 20, 30)).save(paths["images"] / "x.png")
    Image.fromarray(np.array([[1, 1, 2], [1, 1, 2]], dtype=np.uint8)).save(
        paths["semantic"] / "x.png"
    )
    Image.fromarray(np.array([[0, 0, 1], [0, 0, 1]], dtype=np.uint8)).save(
        paths["instances"] / "x.png"
    )
    paths["classes"] = tmp_path / "source" / "classes.yaml"
    classes = [
        {"id": 1, "name": "road", "isthing": False},
        {"id": 2, "name": "car", "isthing": True},
    ]
    paths["classes"].write_text(yaml.safe_dump({"classes": classes}))
    return paths


def _convert(source: dict[str, Path], out: Path, split: str, **options: object) -> object:
    return convert_semantic_instance(
        source["images"],
        source["semantic"],
        source["instances"],
        source["classes"],
        out,
        split=split,
        **options,  # type: ignore[arg-type]
    )


def test_data_file_keeps_the_users_keys(source: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.yaml").write_text(
        yaml.safe_dump({"ignore_classes": [2], "allow_unlabeled": True}, sort_keys=False)
    )
    _convert(source, out, "val")
    _convert(source, out, "train")
    content = yaml.safe_load((out / "data.yaml").read_text())
    assert list(content) == ["train", "val", "ignore_classes", "allow_unlabeled"]
    data = load_data_args(out / "data.yaml")
    assert data.train.masks == out / "annotations" / "train"
    assert data.ignore_classes == (2,) and data.allow_unlabeled


def test_unreadable_data_file_stops_before_writing(source: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.yaml").write_text("- a list")
    with pytest.raises(ConfigError, match="holds a list, not the mapping"):
        _convert(source, out, "train")
    assert not (out / "images").exists()


def test_output_may_not_hold_the_inputs(source: dict[str, Path], tmp_path: Path) -> None:
    # Images that already sit where the split goes: overwriting would delete them.
    images = tmp_path / "dataset" / "images" / "train"
    images.parent.mkdir(parents=True)
    source["images"] = source["images"].rename(images)
    with pytest.raises(ConfigError, match="would contain the input"):
        _convert(source, tmp_path / "dataset", "train", overwrite=True)
    assert (images / "x.png").is_file()


def test_split_names_and_empty_inputs(source: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Split name '\.\./train' is not a folder name"):
        _convert(source, tmp_path / "out", "../train")
    (source["images"] / "x.png").unlink()
    (source["semantic"] / "x.png").unlink()
    (source["instances"] / "x.png").unlink()
    with pytest.raises(DataError, match="Found no images to convert"):
        _convert(source, tmp_path / "out", "train")


def test_a_failed_split_leaves_nothing_and_spares_the_others(
    source: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _convert(source, out, "train")
    Image.fromarray(np.full((2, 3), 9, dtype=np.uint8)).save(source["semantic"] / "x.png")
    with pytest.raises(DataError, match="class id"):
        _convert(source, out, "val")
    assert not (out / "images" / "val").exists() and not (out / "annotations" / "val").exists()
    assert not (out / "annotations" / "val.json").exists()
    assert (out / "annotations" / "train.json").is_file()
    assert list(yaml.safe_load((out / "data.yaml").read_text())) == ["train"]
