"""The `data` argument: dict or YAML/JSON file, unknown keys and missing paths named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from panoptic_train.data.config import load_data_args
from panoptic_train.errors import ConfigError, DataError


def _layout(root: Path) -> dict[str, dict[str, str]]:
    """Empty folders and JSON files in the documented layout; paths relative to `root`."""
    data = {}
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        (root / "annotations" / f"{split}.json").write_text("{}")
        data[split] = {
            "images": f"images/{split}",
            "masks": f"annotations/{split}",
            "annotations": f"annotations/{split}.json",
        }
    return data


def test_dict_with_absolute_paths(tmp_path: Path) -> None:
    relative = _layout(tmp_path)
    data = {s: {k: str(tmp_path / v) for k, v in paths.items()} for s, paths in relative.items()}
    args = load_data_args({**data, "ignore_classes": [3]})
    assert args.train.images == tmp_path / "images" / "train"
    assert args.val.annotations == tmp_path / "annotations" / "val.json"
    assert args.ignore_classes == (3,)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_paths_are_relative_to_the_file(tmp_path: Path, suffix: str) -> None:
    data = _layout(tmp_path)
    path = tmp_path / f"data{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    args = load_data_args(str(path))
    assert args.train.masks == tmp_path / "annotations" / "train"
    assert args.ignore_classes == ()


def test_unknown_and_missing_keys_are_named(tmp_path: Path) -> None:
    data = _layout(tmp_path)
    data["train"]["image"] = data["train"].pop("images")
    with pytest.raises(ConfigError) as info:
        load_data_args({**data, "test": {}})
    message = str(info.value)
    assert message.startswith("Invalid data:\n")
    assert (
        "\n  data['train']['image']: unknown key (valid keys: ['annotations', 'images', "
        "'masks']); did you mean 'images'?"
    ) in message
    assert "\n  data['train']['images']: required key missing" in message
    assert "\n  data['test']: unknown key (valid keys: " in message


def test_missing_paths_are_listed(tmp_path: Path) -> None:
    data = _layout(tmp_path)
    data["val"]["masks"] = "annotations/nope"
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError) as info:
        load_data_args(path)
    assert f"data['val']['masks']='{tmp_path / 'annotations' / 'nope'}'" in str(info.value)
    assert "data file's folder" in str(info.value)


def test_unreadable_data_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_data_args(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="Cannot parse the data file"):
        load_data_args(tmp_path / "bad.yaml")
