"""`panoptic-train predict`: COCO panoptic files that COCO's panopticapi accepts, overlays, and
unreadable images skipped without aborting the run."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic_train.data.io import load_segment_ids
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.inference import _cli
from panoptic_train.inference.model import PanopticSegmentationModel


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    _cli.add_arguments(parser)
    return _cli.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def predicted(
    tiny_model_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, str], Path, Path, int, str]:
    root = tmp_path_factory.mktemp("cli")
    split = write_dataset(root / "data", num_images=3, image_size=(48, 72), seed=3, split="val")
    broken = root / "broken"
    broken.mkdir()
    (broken / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = root / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = _run(
            [
                str(tiny_model_file),
                split["images"],
                str(broken / "truncated.jpg"),
                "--out",
                str(out),
                "--overlay",
                "--annotations",
                split["annotations"],
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--threshold",
                "0",
                "--overlap-threshold",
                "0",
            ]
        )
    return split, out, broken / "truncated.jpg", code, stderr.getvalue()


def test_an_unreadable_image_is_reported_and_skipped(predicted) -> None:
    _, out, broken, code, stderr = predicted
    assert code == 1
    assert f"skipped {broken}: Cannot read image" in stderr
    assert not (out / "panoptic" / f"{broken.stem}.png").exists()
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions["annotations"]) == 3  # every readable image was predicted


def test_pngs_and_json_hold_what_predict_returns(
    predicted, tiny_model: PanopticSegmentationModel
) -> None:
    split, out, _, _, _ = predicted
    gt = json.loads(Path(split["annotations"]).read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions["categories"] == tiny_model.class_mapping.to_list()
    by_id = {annotation["image_id"]: annotation for annotation in predictions["annotations"]}
    assert set(by_id) == {image["id"] for image in gt["images"]}  # ids taken from --annotations
    for image in gt["images"]:
        annotation = by_id[image["id"]]
        result = tiny_model.predict(
            Path(split["images"]) / image["file_name"], threshold=0.0, overlap_threshold=0.0
        )
        ids = load_segment_ids(out / "panoptic" / annotation["file_name"]).astype(np.int64)
        assert np.array_equal(ids - 1, result["masks"][..., 1].numpy())  # PNG id = segment id + 1
        segments = annotation["segments_info"]
        assert [s["category_id"] for s in segments] == result["labels"].tolist()
        assert [s["score"] for s in segments] == pytest.approx(result["scores"].tolist(), abs=1e-6)
        for segment in segments:
            ys, xs = np.nonzero(ids == segment["id"])
            assert segment["area"] == ys.size
            assert segment["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        overlay = Image.open(out / "overlays" / annotation["file_name"])
        assert overlay.size == (image["width"], image["height"]) and overlay.mode == "RGB"


def test_panopticapi_scores_the_predictions(predicted) -> None:
    evaluation = pytest.importorskip("panopticapi.evaluation")
    split, out, _, _, _ = predicted
    gt = json.loads(Path(split["annotations"]).read_text())
    pred = json.loads((out / "predictions.json").read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    by_id = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_id[a["image_id"]]) for a in gt["annotations"]]
    # panopticapi's own checks: every PNG segment listed in the JSON and vice versa, known ids
    stats = evaluation.pq_compute_single_core(
        0, pairs, split["masks"], out / "panoptic", categories
    )
    assert sum(stats[c].tp + stats[c].fp for c in categories) > 0
    # predictions scored against themselves: every predicted segment is a perfect match
    self_pairs = [(p, p) for _, p in pairs]
    perfect = evaluation.pq_compute_single_core(
        0, self_pairs, out / "panoptic", out / "panoptic", categories
    )
    pq, _ = perfect.pq_average(categories, isthing=None)
    assert pq["pq"] == pytest.approx(1.0)


def test_missing_inputs_are_an_error(tiny_model_file: Path, tmp_path: Path) -> None:
    from panoptic_train.errors import ConfigError

    with pytest.raises(ConfigError, match="neither an image file nor a folder"):
        _run([str(tiny_model_file), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "x.png")
    with pytest.raises(ConfigError, match=r"would both be written as x\.png"):
        _run([str(tiny_model_file), str(tmp_path / "a"), str(tmp_path / "b"), "--out", "o"])
