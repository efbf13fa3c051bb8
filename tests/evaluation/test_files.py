"""Scoring from COCO panoptic files: identical to COCO's panopticapi (and hotcoco), clear errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from panoptic_train.errors import ConfigError, DataError
from panoptic_train.evaluation import files as files_module
from panoptic_train.evaluation.files import evaluate_panoptic

IS_THING = (True, True, False, True, False)


@pytest.fixture(params=["builtin", "hotcoco"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every behaviour holds for both backends (the compiled one is optional)."""
    return request.param


def panopticapi_results(
    gt_json: Path, gt_masks: Path, pred_json: Path, pred_masks: Path
) -> dict[str, Any]:
    """COCO's reference: panopticapi's own per-image scorer and averaging (pq_compute without
    its process pool)."""
    from panopticapi.evaluation import pq_compute_single_core

    gt = json.loads(gt_json.read_text())
    pred = json.loads(pred_json.read_text())
    categories = {category["id"]: category for category in gt["categories"]}
    pred_by_image = {entry["image_id"]: entry for entry in pred["annotations"]}
    pairs = [(entry, pred_by_image[entry["image_id"]]) for entry in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, pairs, gt_masks, pred_masks, categories)
    results: dict[str, Any] = {}
    for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[group], per_class = stat.pq_average(categories, isthing=isthing)
        if group == "All":
            results["per_class"] = per_class
    return results


def assert_same_results(ours: dict[str, Any], reference: dict[str, Any]) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == reference[group]["n"], group
        for metric in ("pq", "sq", "rq"):
            assert ours[group][metric] == pytest.approx(reference[group][metric], rel=1e-12, abs=0)
    assert set(ours["per_class"]) == set(reference["per_class"])
    for class_id, entry in reference["per_class"].items():
        for metric in ("pq", "sq", "rq"):
            assert ours["per_class"][class_id][metric] == pytest.approx(
                entry[metric], rel=1e-12, abs=1e-15
            ), (class_id, metric)


def perturb_json_areas(json_path: Path, rng: np.random.Generator) -> None:
    """Make the JSON `area` differ from the PNG pixel count for a third of the segments."""
    content = json.loads(json_path.read_text())
    for entry in content["annotations"]:
        for segment in entry["segments_info"]:
            if rng.random() < 1 / 3:
                segment["area"] = int(segment["area"] * rng.uniform(0.8, 1.25)) + 1
    json_path.write_text(json.dumps(content))


def test_identical_to_panopticapi_on_random_predictions(
    coco, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes = coco.scenes(40, len(IS_THING), seed=10)
    files = coco.write_scenes(scenes, coco.categories(IS_THING))
    perturb_json_areas(files.gt_json, np.random.default_rng(0))
    if backend == "hotcoco":  # prove the numbers are hotcoco's, not the builtin fallback's
        monkeypatch.setattr(files_module, "_builtin_statistics", None)

    ours = evaluate_panoptic(*files.args(), num_workers=2, backend=backend)
    reference = panopticapi_results(*files.args())

    assert reference["All"]["n"] == len(IS_THING)
    assert 0.1 < reference["All"]["pq"] < 0.9, "the scenes should give a non-trivial PQ"
    assert_same_results(ours, reference)


def test_ground_truth_areas_come_from_the_json_as_in_panopticapi(coco, backend: str) -> None:
    categories = coco.categories((True,))
    gt = np.zeros((4, 8, 2), dtype=np.int64)
    gt[..., 1] = 7
    gt[:, 6:] = -1
    pred = np.full((4, 8, 2), -1, dtype=np.int64)
    pred[:, :4] = (0, 9)
    gt_rgb, gt_segments = coco.segment_pngs(gt, np.zeros((4, 8), dtype=bool), [3])
    pred_rgb, pred_segments = coco.segment_pngs(pred, None, [3])
    # 24 pixels in the PNG; with the JSON's 16 the IoU is 16 / 16 instead of 16 / 24.
    gt_segments[0]["area"] = 16
    gt_json, gt_masks = coco.write_side("gt", [(1, gt_rgb, gt_segments)], categories)
    pred_json, pred_masks = coco.write_side("pred", [(1, pred_rgb, pred_segments)], categories)

    result = evaluate_panoptic(gt_json, gt_masks, pred_json, pred_masks, backend=backend)
    assert result["per_class"][3]["sq"] == pytest.approx(1.0)


def test_only_the_last_crowd_segment_of_a_category_forgives_as_in_panopticapi(
    coco, backend: str
) -> None:
    categories = coco.categories((True, False))
    gt = np.full((4, 10, 2), -1, dtype=np.int64)
    gt[:, :4] = (0, 100)
    gt[:, 4:8] = (0, 200)
    gt[:, 8:] = (1, 300)
    crowd = np.zeros((4, 10), dtype=bool)
    crowd[:, :8] = True
    pred = np.full((4, 10, 2), -1, dtype=np.int64)
    pred[:, :3] = (0, 5)  # on the first crowd segment of its class
    pred[:, 5:8] = (0, 6)  # on the last one
    pred[:, 8:] = (1, 7)  # a stuff match, so that both averages exist for panopticapi
    gt_rgb, gt_segments = coco.segment_pngs(gt, crowd, [3, 5])
    pred_rgb, pred_segments = coco.segment_pngs(pred, None, [3, 5])
    gt_json, gt_masks = coco.write_side("gt", [(1, gt_rgb, gt_segments)], categories)
    pred_json, pred_masks = coco.write_side("pred", [(1, pred_rgb, pred_segments)], categories)
    ours = evaluate_panoptic(gt_json, gt_masks, pred_json, pred_masks, backend=backend)
    assert ours["per_class"][3]["fp"] == 1
    assert ours["All"]["n"] == 2
    assert_same_results(ours, panopticapi_results(gt_json, gt_masks, pred_json, pred_masks))


def test_writes_the_results_as_json(coco, tmp_path: Path) -> None:
    files = coco.write_scenes(coco.scenes(3, len(IS_THING), seed=12), coco.categories(IS_THING))
    out = tmp_path / "metrics" / "pq.json"
    result = evaluate_panoptic(*files.args(), out=out)
    written = json.loads(out.read_text())
    assert written["All"] == result["All"]
    assert written["per_class"]["3"] == result["per_class"][3]


def test_thread_count_does_not_change_the_result(coco) -> None:
    files = coco.write_scenes(coco.scenes(12, len(IS_THING), seed=13), coco.categories(IS_THING))
    one = evaluate_panoptic(*files.args(), num_workers=1, backend="builtin")
    three = evaluate_panoptic(*files.args(), num_workers=3, backend="builtin")
    assert one == three


def test_missing_ground_truth_area_falls_back_to_the_pixel_count(coco, backend: str) -> None:
    files = coco.write_scenes(coco.scenes(6, len(IS_THING), seed=15), coco.categories(IS_THING))
    expected = evaluate_panoptic(*files.args(), backend="builtin")

    def drop_areas(content: dict[str, Any]) -> None:
        for entry in content["annotations"]:
            for segment in entry["segments_info"][::2]:
                del segment["area"]

    edit_json(files.gt_json, drop_areas)
    assert_same_results(evaluate_panoptic(*files.args(), backend=backend), expected)


def test_string_image_ids(coco, backend: str) -> None:
    files = coco.write_scenes(coco.scenes(4, len(IS_THING), seed=17), coco.categories(IS_THING))
    expected = evaluate_panoptic(*files.args(), backend="builtin")

    def rename(content: dict[str, Any]) -> None:
        for entry in content["annotations"]:
            entry["image_id"] = f"image-{entry['image_id']}"

    edit_json(files.gt_json, rename)
    edit_json(files.pred_json, rename)
    assert evaluate_panoptic(*files.args(), backend=backend) == expected


def test_palette_and_rgba_masks_read_as_their_colours(coco) -> None:
    files = coco.write_scenes(coco.scenes(4, len(IS_THING), seed=16), coco.categories(IS_THING))
    expected = evaluate_panoptic(*files.args(), backend="builtin")
    for position, png in enumerate(sorted(files.pred_masks.iterdir())):
        rgb = Image.open(png).convert("RGB")
        rgb.convert("RGBA").save(png) if position % 2 else rgb.quantize(256).save(png)
    assert Image.open(png).mode in ("RGBA", "P")
    assert evaluate_panoptic(*files.args(), backend="builtin") == expected


# --- bad input --------------------------------------------------------------------------------


@pytest.fixture
def small_files(coco):
    return coco.write_scenes(coco.scenes(3, len(IS_THING), seed=14), coco.categories(IS_THING))


def edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_missing_prediction_png_names_the_file_and_image(small_files, backend: str) -> None:
    (small_files.pred_masks / "000000000002.png").unlink()
    with pytest.raises(DataError, match=r"000000000002\.png' of image id 2 .*does not exist"):
        evaluate_panoptic(*small_files.args(), backend=backend)


def test_image_only_in_the_ground_truth(small_files, backend: str) -> None:
    edit_json(small_files.pred_json, lambda c: c["annotations"].pop(1))
    with pytest.raises(DataError, match=r"ground-truth JSON .* image id 2 \(file '000000000002"):
        evaluate_panoptic(*small_files.args(), backend=backend)


def test_image_only_in_the_predictions(small_files, backend: str) -> None:
    def add_image(content: dict[str, Any]) -> None:
        extra = dict(content["annotations"][0], image_id=99, file_name="extra.png")
        content["annotations"].append(extra)

    edit_json(small_files.pred_json, add_image)
    with pytest.raises(DataError, match=r"prediction JSON .* image id 99 \(file 'extra\.png'\)"):
        evaluate_panoptic(*small_files.args(), backend=backend)


def test_png_segment_missing_from_segments_info(small_files, backend: str) -> None:
    removed = {}

    def drop_segment(content: dict[str, Any]) -> None:
        removed["id"] = content["annotations"][0]["segments_info"].pop(0)["id"]

    edit_json(small_files.pred_json, drop_segment)
    with pytest.raises(DataError) as error:
        evaluate_panoptic(*small_files.args(), backend=backend)
    message = str(error.value)
    assert "prediction mask" in message and "000000000001.png" in message
    assert "image id 1" in message
    assert f"[{removed['id']}]" in message and "not in its 'segments_info'" in message


def test_segments_info_entry_missing_from_the_png(small_files, backend: str) -> None:
    def add_segment(content: dict[str, Any]) -> None:
        content["annotations"][2]["segments_info"].append({"id": 4242, "category_id": 3})

    edit_json(small_files.pred_json, add_segment)
    with pytest.raises(DataError, match=r"\[4242\] of image id 3 .* absent from the prediction"):
        evaluate_panoptic(*small_files.args(), backend=backend)


def test_builtin_backend_also_checks_the_ground_truth_pngs(small_files) -> None:
    def add_segment(content: dict[str, Any]) -> None:
        content["annotations"][1]["segments_info"].append(
            {"id": 4242, "category_id": 3, "iscrowd": 0, "area": 10}
        )

    edit_json(small_files.gt_json, add_segment)
    with pytest.raises(DataError, match=r"\[4242\] of image id 2 .* absent from the ground-truth"):
        evaluate_panoptic(*small_files.args(), backend="builtin")


def test_unknown_category(small_files, backend: str) -> None:
    def relabel(content: dict[str, Any]) -> None:
        content["annotations"][0]["segments_info"][0]["category_id"] = 999

    edit_json(small_files.pred_json, relabel)
    with pytest.raises(DataError) as error:
        evaluate_panoptic(*small_files.args(), backend=backend)
    assert str(error.value) == (
        f"The prediction JSON '{small_files.pred_json}': 'category_id' 999 is not in the ground "
        "truth's 'categories' (ids [3, 5, 7, 9, 11]) but 1 segment(s) use it: annotations[0] "
        "(image id 1, '000000000001.png').segments_info[0]. Map the predicted classes to those "
        "category ids."
    )


def test_missing_json(small_files, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"prediction JSON '.*nothing\.json' does not exist"):
        evaluate_panoptic(
            small_files.gt_json,
            small_files.gt_masks,
            tmp_path / "nothing.json",
            small_files.pred_masks,
        )


def test_unknown_backend_is_a_config_error(small_files) -> None:
    with pytest.raises(ConfigError, match=r"backend must be one of .*got 'fast'"):
        evaluate_panoptic(*small_files.args(), backend="fast")
