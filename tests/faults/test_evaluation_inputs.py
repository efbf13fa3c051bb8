"""`evaluate` on ground truth whose JSON was damaged: errors naming the entry, never a skewed
score."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from panoptic_train.data.synthetic import write_dataset
from panoptic_train.errors import DataError
from panoptic_train.evaluation.files import evaluate_panoptic


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_dataset(
        tmp_path_factory.mktemp("data"), 2, image_size=(32, 48), seed=1, split="val"
    )


def _score_against_itself(
    split: dict[str, str], tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Score the ground truth, as predictions, against an edited copy of itself."""
    gt = json.loads(Path(split["annotations"]).read_text())
    edit(gt)
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps(gt))
    predictions = tmp_path / "predictions"
    shutil.copytree(split["masks"], predictions)
    return evaluate_panoptic(
        gt_json, split["masks"], split["annotations"], predictions, backend="builtin"
    )


def _first_segment(gt: dict[str, Any]) -> dict[str, Any]:
    return gt["annotations"][0]["segments_info"][0]


def test_a_perfect_prediction_scores_one(split: dict[str, str], tmp_path: Path) -> None:
    assert _score_against_itself(split, tmp_path, lambda gt: None)["All"]["pq"] == 1.0


@pytest.mark.parametrize("area", [float("nan"), -5, float("inf"), "12"])
def test_a_bad_ground_truth_area_is_an_error_not_a_skewed_score(
    split: dict[str, str], tmp_path: Path, area: Any
) -> None:
    def edit(gt: dict[str, Any]) -> None:
        _first_segment(gt)["area"] = area

    with pytest.raises(DataError, match=rf"'area' {area!r} is not a non-negative number \(the "):
        _score_against_itself(split, tmp_path, edit)


def test_an_unknown_ground_truth_category_says_to_fix_the_ground_truth(
    split: dict[str, str], tmp_path: Path
) -> None:
    def edit(gt: dict[str, Any]) -> None:
        _first_segment(gt)["category_id"] = 77

    with pytest.raises(DataError) as error:
        _score_against_itself(split, tmp_path, edit)
    message = str(error.value)
    assert message.startswith(f"The ground-truth JSON '{tmp_path / 'gt.json'}': ")
    assert "'category_id' 77 is not in 'categories'" in message
    assert "Add the category to 'categories'" in message and "prediction" not in message
