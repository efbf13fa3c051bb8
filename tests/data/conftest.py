"""Shared fixture: a small synthetic dataset written once per session."""

from __future__ import annotations

import pytest

from panoptic_train.data.synthetic import write_dataset

# Small images keep the tests fast; at seed 0 these 6 images hold crowd, void and touching things.
IMAGE_SIZE = (96, 128)


@pytest.fixture(scope="session")
def synthetic_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synthetic")
    return write_dataset(
        root, 6, image_size=IMAGE_SIZE, seed=0, crowd_probability=0.5, void_probability=0.7
    )
