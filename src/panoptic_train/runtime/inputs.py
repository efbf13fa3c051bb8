"""The image kinds `predict` and `visualize` accept, turned into one tensor layout.

Files and PIL images go through the decoder training and validation use (`data.io`: EXIF
orientation, any colour mode or bit depth to 8-bit RGB), so an image predicts the same whether it
is passed as a path or as the PIL image of that file, and exactly as it validated. Paths, PIL
images and numpy arrays are converted without torch (`to_image_array`), which the exported-model
runners use; torch is imported only for tensors. Empty images and tensors with NaN are errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from panoptic_train._types import PathLike
from panoptic_train.data.io import DEFAULT_MAX_IMAGE_PIXELS, check_pixels, decode_image, load_image
from panoptic_train.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor
    from typing_extensions import TypeIs

ImageInput = Union[PathLike, Image.Image, np.ndarray, "Tensor"]

_EXPECTED = (
    "an image path, a PIL image, a numpy (H, W, 3) uint8 array or a torch (3, H, W) tensor "
    "(uint8 in 0..255 or float in 0..1)"
)


def is_single_image(value: ImageInput | Sequence[ImageInput]) -> TypeIs[ImageInput]:
    """True for one image, False for a list/tuple of them (how `predict` decides what to return).

    A path string is a sequence too, so the test is for list/tuple rather than for a sequence.
    """
    return not isinstance(value, (list, tuple))


def to_image_tensor(image: ImageInput, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Tensor:
    """One image as a (3, H, W) CPU tensor: uint8 for decoded images, float32 in [0, 1] as given.

    Float tensors keep their precision (no round trip through uint8); preprocessing converts
    both kinds the same way. Files and PIL images of more than `max_pixels` pixels are refused
    before decoding (DataError).
    """
    import torch

    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    if isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)):
        array = np.ascontiguousarray(to_image_array(image, max_pixels))
        if not array.flags.writeable:  # torch cannot share read-only memory (PIL's arrays)
            array = array.copy()
        return torch.from_numpy(array).permute(2, 0, 1)
    raise ConfigError(
        f"Cannot predict on an object of type {type(image).__name__}: pass {_EXPECTED}."
    )


def to_image_array(
    image: PathLike | Image.Image | np.ndarray,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """One image as an (H, W, 3) uint8 RGB numpy array; no torch involved."""
    if isinstance(image, (str, os.PathLike)):
        array = load_image(Path(image), max_pixels)
    elif isinstance(image, Image.Image):
        check_pixels(image, "The PIL image", max_pixels)
        array = decode_image(image)
    elif isinstance(image, np.ndarray):
        array = _rgb_from_numpy(image)
    else:
        raise ConfigError(
            f"Cannot predict on an object of type {type(image).__name__}: pass an image path, a "
            "PIL image or a numpy (H, W, 3) uint8 array."
        )
    _check_not_empty(array.shape[:2], f"shape {array.shape}")
    return array


def _check_not_empty(size: tuple[int, ...], described: str) -> None:
    if 0 in size:
        raise ConfigError(
            f"Cannot predict on an empty image ({described}): height and width must be at "
            "least 1 pixel."
        )


def to_uint8_image(image: ImageInput) -> Tensor:
    """One image as a (3, H, W) uint8 tensor, for drawing."""
    import torch

    tensor = to_image_tensor(image)
    if tensor.dtype == torch.uint8:
        return tensor
    return tensor.mul(255).round_().to(torch.uint8)


def _rgb_from_numpy(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ConfigError(
            f"A numpy image must have dtype uint8 (values 0..255), got {array.dtype}. Convert it "
            "with `array.astype(np.uint8)` after scaling to 0..255, or pass a float torch tensor."
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ConfigError(
            f"A numpy image must be (H, W, 3) RGB (or (H, W) gray, (H, W, 4) RGBA), got shape "
            f"{array.shape}. Channels go last in numpy images."
        )
    return array[:, :, :3]


def _from_tensor(tensor: Tensor) -> Tensor:
    import torch

    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ConfigError(
            f"A torch image must be (3, H, W) (or (1, H, W) gray), channels first, got shape "
            f"{tuple(tensor.shape)}. For a batch, pass a list of images."
        )
    _check_not_empty(tuple(tensor.shape[1:]), f"shape {tuple(tensor.shape)}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor.expand(3, -1, -1).contiguous()
    if not tensor.is_floating_point():
        raise ConfigError(
            f"A torch image must be uint8 (0..255) or float (0..1), got dtype {tensor.dtype}."
        )
    not_finite = int((~torch.isfinite(tensor)).sum())
    if not_finite:
        raise ConfigError(
            f"A float torch image holds {not_finite} NaN or infinite value(s), which would make "
            "the prediction garbage. Replace them (e.g. with torch.nan_to_num) before predicting."
        )
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high > 1:
        raise ConfigError(
            f"A float torch image must hold values in [0, 1], got [{low:.3g}, {high:.3g}]. "
            "Divide 0..255 images by 255 (or pass them as uint8); pass images unnormalised, "
            "`predict` normalises them itself."
        )
    return tensor.expand(3, -1, -1).float().contiguous()
