"""Shared fixtures: a small synthetic dataset written once per session, and a reader of
converted splits (tests import no conftest, so helpers come as fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from panoptic_train.data.check import check_dataset
from panoptic_train.data.synthetic import write_dataset

# Small images keep the tests fast; at seed 0 these 6 images hold crowd, void and touching things.
IMAGE_SIZE = (96, 128)


@pytest.fixture(scope="session")
def synthetic_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synthetic")
    return write_dataset(
        root, 6, image_size=IMAGE_SIZE, seed=0, crowd_probability=0.5, void_probability=0.7
    )


class ConvertedSplit:
    """A converted split read back with the test's own decoding, never the package's."""

    def __init__(self, out: Path, split: str) -> None:
        self.out, self.split = out, split
        self.json: dict[str, Any] = json.loads((out / "annotations" / f"{split}.json").read_text())

    def annotation(self, mask_name: str) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        """The mask's segment id per pixel (R + 256·G + 256²·B) and its segments by id."""
        rgb = np.asarray(Image.open(self.out / "annotations" / self.split / mask_name))
        rgb = rgb.astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        entry = next(a for a in self.json["annotations"] if a["file_name"] == mask_name)
        return ids, {segment["id"]: segment for segment in entry["segments_info"]}

    def assert_segments(
        self,
        mask_name: str,
        source: np.ndarray,
        expected: dict[int, tuple[int, int] | None],
    ) -> None:
        """Every pixel against the source: pixels of one source value form one segment with the
        expected (category_id, iscrowd) and an exact area, or are void (None)."""
        ids, segments = self.annotation(mask_name)
        assert ids.shape == source.shape
        assert set(np.unique(source).tolist()) == set(expected)
        segment_of = {}
        for value, label in expected.items():
            found = np.unique(ids[source == value]).tolist()
            if label is None:
                assert found == [0], f"source value {value} should be void, got {found}"
                continue
            assert len(found) == 1 and found[0] != 0, (value, found)
            segment = segments[found[0]]
            assert (segment["category_id"], segment["iscrowd"]) == label, value
            assert segment["area"] == int((source == value).sum()), value
            segment_of[value] = found[0]
        assert len(set(segment_of.values())) == len(segment_of)
        assert set(segments) == set(segment_of.values())

    def check(self) -> None:
        """The split passes check-data with neither errors nor warnings."""
        report = check_dataset(
            self.out / "images" / self.split,
            self.out / "annotations" / self.split,
            self.out / "annotations" / f"{self.split}.json",
        )
        assert report.errors == [] and report.warnings == []


@pytest.fixture
def converted() -> type[ConvertedSplit]:
    return ConvertedSplit
