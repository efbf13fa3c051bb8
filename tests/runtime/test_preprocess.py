"""The ONNX runner's numpy preprocessing against `data.transforms.resize_and_pad` (torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panoptic_train.data.transforms import resize_and_pad
from panoptic_train.runtime.preprocess import fit_size, resize_and_pad_array

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _torch_reference(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    inputs, resized = resize_and_pad(torch.from_numpy(image).permute(2, 0, 1), size, MEAN, STD)
    return inputs.numpy(), resized


def test_fitted_sizes_are_those_of_resize_and_pad() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(1, 400, 2))
        size = (int(rng.choice([32, 64, 640])), int(rng.choice([32, 64, 480, 640])))
        expected = _torch_reference(np.zeros((height, width, 3), np.uint8), size)[1]
        assert fit_size(height, width, size) == expected, (height, width, size)


@pytest.mark.parametrize("shape", [(48, 64), (64, 20), (64, 64)])
def test_images_that_fit_are_normalised_and_padded_identically(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, resized = resize_and_pad_array(image, (64, 64), MEAN, STD)
    expected, expected_resized = _torch_reference(image, (64, 64))
    assert resized == expected_resized == shape
    assert ours.dtype == np.float32 and ours.shape == (3, 64, 64)
    assert np.array_equal(ours, expected)
    assert (ours[:, shape[0] :, :] == 0).all() and (ours[:, :, shape[1] :] == 0).all()


@pytest.mark.parametrize("shape", [(480, 640), (100, 37), (30, 40)])
def test_resized_images_differ_by_at_most_one_grey_level(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, resized = resize_and_pad_array(image, (64, 64), MEAN, STD)
    expected, expected_resized = _torch_reference(image, (64, 64))
    assert resized == expected_resized
    one_level = 1 / (255 * min(STD)) + 1e-5
    assert np.abs(ours - expected).max() <= one_level
