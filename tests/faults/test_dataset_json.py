"""`check-data` on hand-edited JSON: one line per actual problem, no follow-on errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from panoptic_train.data.check import check_dataset
from panoptic_train.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_dataset(
        tmp_path_factory.mktemp("data"), 3, image_size=(32, 48), seed=2, split="train"
    )


def _errors(
    split: dict[str, str], tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> list[str]:
    content = json.loads(Path(split["annotations"]).read_text())
    edit(content)
    annotations = tmp_path / "edited.json"
    annotations.write_text(json.dumps(content))
    return check_dataset(split["images"], split["masks"], annotations).errors


def test_a_bad_image_field_is_one_error(split: dict[str, str], tmp_path: Path) -> None:
    def edit(content: dict[str, Any]) -> None:
        content["images"][0]["height"] = "tall"

    (error,) = _errors(split, tmp_path, edit)
    assert error.startswith("images[0]: 'height' 'tall' is not a positive integer")


def test_a_category_with_a_string_id_is_one_error(split: dict[str, str], tmp_path: Path) -> None:
    def edit(content: dict[str, Any]) -> None:
        content["categories"][0]["id"] = str(content["categories"][0]["id"])

    (error,) = _errors(split, tmp_path, edit)
    assert error.startswith("categories[0]: 'id' '1' is not an integer")


def test_an_unknown_category_is_one_line_with_its_uses(
    split: dict[str, str], tmp_path: Path
) -> None:
    def edit(content: dict[str, Any]) -> None:
        for annotation in content["annotations"]:
            for segment in annotation["segments_info"]:
                segment["category_id"] = 999

    (error,) = _errors(split, tmp_path, edit)
    total = sum(
        len(annotation["segments_info"])
        for annotation in json.loads(Path(split["annotations"]).read_text())["annotations"]
    )
    assert "'category_id' 999 is not in 'categories'" in error
    assert f"but {total} segment(s) use it: annotations[0]" in error


@pytest.mark.parametrize("area", [float("inf"), -1, True])
def test_a_bad_area_is_reported_not_a_crash(
    split: dict[str, str], tmp_path: Path, area: Any
) -> None:
    def edit(content: dict[str, Any]) -> None:
        content["annotations"][0]["segments_info"][0]["area"] = area

    (error,) = _errors(split, tmp_path, edit)
    assert f"'area' {area!r} is not a non-negative number" in error


def test_the_fixture_is_clean(split: dict[str, str], tmp_path: Path) -> None:
    assert _errors(split, tmp_path, lambda content: None) == []
