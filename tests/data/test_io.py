"""Image and mask decoding: every supported format, colour modes, bit depths, EXIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic_train.data.io import (
    IMAGE_EXTENSIONS,
    decode_segment_ids,
    encode_segment_ids,
    find_image_file,
    load_image,
    load_segment_ids,
    read_image_size,
)
from panoptic_train.errors import DataError


def _pattern(height: int = 12, width: int = 20) -> np.ndarray:
    """An RGB test pattern with distinct columns, rows and channels."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 12, ys * 20, (xs + ys) * 5], axis=-1).astype(np.uint8)


LOSSLESS = {".png", ".ppm", ".bmp", ".tif", ".tiff"}


@pytest.mark.parametrize("extension", IMAGE_EXTENSIONS)
def test_every_listed_format_loads_as_rgb_uint8(tmp_path: Path, extension: str) -> None:
    expected = _pattern()
    path = tmp_path / f"image{extension}"
    if extension == ".pgm":  # PGM is grayscale by definition
        Image.fromarray(expected[:, :, 0]).save(path)
        expected = np.repeat(expected[:, :, :1], 3, axis=2)
    elif extension == ".webp":
        Image.fromarray(expected).save(path, lossless=True)
    else:
        Image.fromarray(expected).save(path, **({"quality": 100} if "jp" in extension else {}))

    image = load_image(path)

    assert image.dtype == np.uint8 and image.shape == (12, 20, 3)
    if extension in LOSSLESS | {".pgm", ".webp"}:
        np.testing.assert_array_equal(image, expected)
    else:  # JPEG: lossy, but close
        assert np.abs(image.astype(int) - expected).mean() < 3


def test_uppercase_extension_is_found_by_stem(tmp_path: Path) -> None:
    Image.fromarray(_pattern()).save(tmp_path / "a.PNG")
    assert find_image_file(tmp_path, "a.jpg") is not None
    assert find_image_file(tmp_path, "missing.jpg") is None


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 10), (77, 77, 77)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, colour kept
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_colour_modes_become_rgb(tmp_path: Path, mode: str, pixel: object, expected: tuple) -> None:
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    Image.new(mode, (5, 4), pixel).save(path)
    image = load_image(path)
    assert image.shape == (4, 5, 3)
    assert tuple(image[0, 0]) == expected


def test_palette_image_uses_palette_colours(tmp_path: Path) -> None:
    palette_image = Image.new("P", (3, 2), 1)
    palette_image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette_image.save(tmp_path / "p.png")
    assert tuple(load_image(tmp_path / "p.png")[1, 2]) == (200, 100, 50)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = load_image(tmp_path / "deep.png")
    # 8-bit value = round(v * 255 / 65535)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = _pattern(6, 10)  # stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=100)

    image = load_image(tmp_path / "rotated.jpg")

    assert image.shape == (10, 6, 3)  # displayed portrait
    assert read_image_size(tmp_path / "rotated.jpg") == (10, 6)
    expected = np.rot90(stored, k=-1)  # clockwise
    assert np.abs(image.astype(int) - expected).mean() < 3


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"Cannot read image '.*broken\.jpg'"):
        load_image(path)


def test_truncated_png_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)  # incompressible: the cut lands inside the pixel data
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_image(path)


def test_segment_id_encoding_matches_coco_formula() -> None:
    rgb = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 2, 1], [255, 255, 255]]], np.uint8)
    expected = [1, 256, 65536, 3 + 2 * 256 + 1 * 65536, 2**24 - 1]
    np.testing.assert_array_equal(decode_segment_ids(rgb)[0], expected)
    np.testing.assert_array_equal(encode_segment_ids(np.array([expected]))[0], rgb[0])


def test_mask_png_decodes_to_segment_ids(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (7, 1, 2)  # 7 + 256 + 131072
    Image.fromarray(rgb).save(tmp_path / "m.png")
    ids = load_segment_ids(tmp_path / "m.png")
    assert ids.dtype == np.int32 and ids.shape == (3, 4)
    assert ids[1, 2] == 131335 and ids.sum() == 131335


def test_grayscale_mask_is_rejected_with_the_fix(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 3).save(tmp_path / "gray.png")
    with pytest.raises(DataError, match=r"gray\.png.*mode 'L'.*RGB PNG"):
        load_segment_ids(tmp_path / "gray.png")
