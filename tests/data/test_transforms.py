"""transform_args validation, the shared preprocessing, and image/mask alignment under
augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_erosion

from panoptic_train.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PADDING_ID,
    TrainTransform,
    load_transform_args,
    resize_and_pad,
)
from panoptic_train.errors import ConfigError

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_defaults_follow_the_spec_and_eomt_recipe() -> None:
    args = load_transform_args(None)
    assert args.image_size == (640, 640)
    assert args.normalize.mean == IMAGENET_MEAN and args.normalize.std == IMAGENET_STD
    assert (args.scale_jitter.min_scale, args.scale_jitter.max_scale) == (0.1, 2.0)
    assert args.horizontal_flip_prob == 0.5
    assert args.color_jitter is None
    assert args.val_image_size == (640, 640) and args.val_normalize == args.normalize


def test_val_override_only_changes_validation() -> None:
    args = load_transform_args(
        {"image_size": (320, 480), "val": {"image_size": (512, 512)}, "scale_jitter": None}
    )
    assert args.image_size == (320, 480) and args.val_image_size == (512, 512)
    assert args.val_normalize.mean == IMAGENET_MEAN
    assert args.scale_jitter is None


@pytest.mark.parametrize(
    ("transform_args", "expected"),
    [
        ({"imagesize": (1, 1)}, "transform_args['imagesize']: unknown key"),
        ({"normalize": {"mean": [0.5] * 3, "sdt": [1] * 3}}, "transform_args['normalize']['sdt']"),
        ({"scale_jitter": {"min": 0.5}}, "valid keys: ['max_scale', 'min_scale']"),
        ({"val": {"flip": True}}, "transform_args['val']['flip']: unknown key"),
        ({"scale_jitter": {"min_scale": 3.0}}, "min_scale (3.0) must not exceed max_scale"),
        ({"horizontal_flip_prob": 1.5}, "transform_args['horizontal_flip_prob']=1.5: should be"),
        ({"image_size": (0, 64)}, "image_size must be positive"),
    ],
)
def test_bad_transform_args_name_the_key(transform_args: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_transform_args(transform_args)
    assert expected in str(info.value)


def test_resize_and_pad_fits_the_longer_side_and_zero_pads_bottom_right() -> None:
    color = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1)
    image = color.expand(3, 30, 60).contiguous()

    padded, resized = resize_and_pad(image, (64, 64), IMAGENET_MEAN, IMAGENET_STD)

    # scale = min(64 / 30, 64 / 60) = 16 / 15 -> 30x60 becomes 32x64
    assert resized == (32, 64)
    assert padded.shape == (3, 64, 64) and padded.dtype == torch.float32
    expected = (color.float() / 255 - MEAN) / STD
    torch.testing.assert_close(padded[:, :32, :], expected.expand(3, 32, 64))
    assert torch.all(padded[:, 32:, :] == 0)


def test_resize_and_pad_matches_an_independent_resize() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 45, 30, generator=generator)  # float in [0, 1], portrait
    padded, resized = resize_and_pad(image, (60, 80), IMAGENET_MEAN, IMAGENET_STD)
    assert resized == (60, 40)
    reference = F.interpolate(image[None], size=(60, 40), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(padded[:, :, :40], (reference - MEAN) / STD)
    assert torch.all(padded[:, :, 40:] == 0)
    # uint8 input of the same picture gives the same result up to 8-bit rounding
    as_uint8 = (image * 255).round().to(torch.uint8)
    padded_uint8, _ = resize_and_pad(as_uint8, (60, 80), IMAGENET_MEAN, IMAGENET_STD)
    assert (padded_uint8 - padded).abs().max() < 2.5 / 255 / min(IMAGENET_STD)


def _coded_image(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, dict[int, tuple]]:
    """An image whose colour tells the segment of each pixel: 3x4 blocks of ids, one void."""
    ids = torch.zeros(height, width, dtype=torch.int32)
    colors: dict[int, tuple] = {}
    for row in range(3):
        for col in range(4):
            segment_id = 1000 + 10 * row + col if (row, col) != (1, 1) else 0
            ids[
                row * height // 3 : (row + 1) * height // 3,
                col * width // 4 : (col + 1) * width // 4,
            ] = segment_id
            colors[segment_id] = (40 + 60 * row, 30 + 60 * col, 250 - 70 * col)
    palette_ids = sorted(colors)
    palette = torch.tensor([colors[i] for i in palette_ids], dtype=torch.uint8)
    position = torch.searchsorted(torch.tensor(palette_ids, dtype=torch.int32), ids)
    return palette[position].permute(2, 0, 1).contiguous(), ids, colors


def test_augmented_masks_stay_aligned_with_the_image() -> None:
    image, ids, colors = _coded_image(60, 80)
    transform = TrainTransform(load_transform_args({"image_size": (48, 48)}))
    flipped = False
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_ids = transform(image, ids)
        assert out_image.shape == (3, 48, 48) and out_ids.shape == (48, 48)
        pixels = (out_image * STD + MEAN) * 255
        padding = out_ids == PADDING_ID
        assert torch.all(out_image[:, padding] == 0)
        for segment_id, color in colors.items():
            inside = torch.from_numpy(binary_erosion((out_ids == segment_id).numpy(), iterations=2))
            if inside.any():
                error = (pixels[:, inside] - torch.tensor(color).view(3, 1)).abs().max()
                assert error < 2, (seed, segment_id)
        # the image left-right order of columns tells whether this sample was flipped
        cols = torch.nonzero(out_ids == 1000, as_tuple=True)[1]
        right_of = torch.nonzero(out_ids == 1001, as_tuple=True)[1]
        if cols.numel() and right_of.numel():
            flipped |= bool(right_of.float().mean() < cols.float().mean())
    assert flipped  # with probability 0.5 per sample, 12 samples flip at least once


def test_flip_mirrors_image_and_ids_exactly() -> None:
    image, ids, _ = _coded_image(24, 32)
    transform = TrainTransform(
        load_transform_args(
            {"image_size": (24, 32), "scale_jitter": None, "horizontal_flip_prob": 1.0}
        )
    )
    out_image, out_ids = transform(image, ids)
    assert torch.equal(out_ids, ids.flip(-1))
    expected = (image.flip(-1).float() / 255 - MEAN) / STD
    torch.testing.assert_close(out_image, expected)


def test_scale_jitter_keeps_the_aspect_ratio() -> None:
    image, ids, _ = _coded_image(40, 80)
    transform = TrainTransform(
        load_transform_args(
            {
                "image_size": (64, 64),
                "scale_jitter": {"min_scale": 0.5, "max_scale": 0.5},
                "horizontal_flip_prob": 0.0,
            }
        )
    )
    torch.manual_seed(0)
    _, out_ids = transform(image, ids)
    # fit: min(64 / 40, 64 / 80) = 0.8, times 0.5 -> 40x80 becomes 16x32, padded into 64x64
    rows, cols = torch.nonzero(out_ids != PADDING_ID, as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (16, 32)
    assert rows.numel() == 16 * 32


def test_colour_jitter_changes_colours_not_geometry() -> None:
    image, ids, _ = _coded_image(24, 32)
    args = {
        "image_size": (24, 32),
        "scale_jitter": None,
        "horizontal_flip_prob": 0.0,
        "color_jitter": {"probability": 1.0, "brightness": 0.5},
    }
    torch.manual_seed(1)
    out_image, out_ids = TrainTransform(load_transform_args(args))(image, ids)
    assert torch.equal(out_ids, ids)
    plain = (image.float() / 255 - MEAN) / STD
    assert not torch.allclose(out_image, plain, atol=0.05)
