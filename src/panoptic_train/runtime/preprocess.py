"""`data.transforms.resize_and_pad` for numpy images, for the ONNX runner (which has no torch).

The fitted size and the normalisation arithmetic are the same as there (float32, x * a - b);
the resize is PIL's antialiased bilinear filter, which torchvision's antialiased resize was made
to follow: results differ by at most 1 in 0..255 at a few pixels, and not at all when the image
already fits (tests compare the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def fit_size(height: int, width: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """Size of an image fitted into `image_size` keeping its aspect ratio."""
    target_h, target_w = image_size
    scale = min(target_h / height, target_w / width)
    return (
        min(target_h, max(1, round(height * scale))),
        min(target_w, max(1, round(width * scale))),
    )


def resize_and_pad_array(
    image: np.ndarray,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 image -> float32 (3, S_h, S_w) normalised, zero-padded bottom/right, and
    the (height, width) of the image inside the padding."""
    height, width = image.shape[:2]
    resized_h, resized_w = fit_size(height, width, image_size)
    if (resized_h, resized_w) != (height, width):
        resized = Image.fromarray(image).resize((resized_w, resized_h), Image.Resampling.BILINEAR)
        image = np.asarray(resized)
    std_32 = np.asarray(std, dtype=np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std_32)
    shift = np.asarray(mean, dtype=np.float32) / std_32
    padded = np.zeros((3, *image_size), dtype=np.float32)
    normalized = image.astype(np.float32) * scale - shift
    padded[:, :resized_h, :resized_w] = normalized.transpose(2, 0, 1)
    return padded, (resized_h, resized_w)
