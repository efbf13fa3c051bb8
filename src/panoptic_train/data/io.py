"""Reading images and panoptic mask PNGs into numpy arrays.

Every image that enters training, validation or `predict` goes through `load_image`, so all of
them see the same conversions: EXIF orientation applied, any colour mode or bit depth turned into
8-bit RGB. Mask PNGs hold one segment id per pixel, encoded as R + 256·G + 256²·B (COCO panoptic).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from panoptic_train._types import MAX_SEGMENT_ID, PathLike
from panoptic_train.errors import DataError

# The image formats read as inputs (README, "Data"); matched case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

# PIL modes holding more than 8 bits per pixel in one channel; PIL's own convert("RGB") clips
# them at 255 instead of scaling, which would turn most 16-bit images white.
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})

# EXIF orientations 5..8 rotate by 90 degrees, so the displayed image has height and width swapped.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Mask modes whose colours are the RGB encoding (a palette maps indices to those colours).
_MASK_MODES = frozenset({"RGB", "RGBA", "P"})

# Images with more pixels are refused from their header, before decoding: PIL's own default
# refusal (twice PIL.Image.MAX_IMAGE_PIXELS), as a DataError that names the limit to raise.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

# What PIL raises for files it cannot decode (truncated, corrupt, unknown format, too large).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)

# Decoded pixels are copied out of PIL in bands of this many bytes.
_COPY_BAND_BYTES = 1 << 24

# Mask PNGs written band by band (`write_segment_png`): zlib at PIL's default level.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COMPRESSION = 6


def load_image(path: PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array, upright as EXIF says.

    DataError for a missing path, a folder, an unreadable file, and an image of more than
    `max_pixels` pixels (checked from the header, before decoding).
    """
    try:
        with Image.open(path) as image:
            check_pixels(image, f"Image '{path}'", max_pixels)
            return decode_image(image)
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from error


def check_pixels(image: Image.Image, subject: str, max_pixels: int) -> None:
    """DataError unless the (opened, not yet decoded) `image` has at most `max_pixels` pixels;
    `subject` starts the message ("Image 'a.png'")."""
    width, height = image.size
    if width * height > max_pixels:
        raise DataError(
            f"{subject} is {width}x{height} ({width * height:,} pixels), more than the limit of "
            f"{max_pixels:,} pixels (max_image_pixels; --max-image-pixels on the command line). "
            "Raise the limit if you trust the file, or downscale the image."
        )


def _unreadable(path: PathLike, error: BaseException) -> DataError:
    """The DataError of an image file that cannot be opened or decoded, saying why."""
    if isinstance(error, FileNotFoundError):
        return DataError(f"Image '{path}' does not exist. Check the path.")
    if isinstance(error, IsADirectoryError):
        return DataError(f"'{path}' is a folder, not an image file. Pass an image file.")
    if isinstance(error, Image.DecompressionBombError):
        return DataError(
            f"Image '{path}' has more pixels than PIL decodes: {error} Raise PIL's limit, "
            "PIL.Image.MAX_IMAGE_PIXELS (--max-image-pixels on the command line does), if you "
            "trust the file, or downscale the image."
        )
    return DataError(
        f"Cannot read image '{path}': {error}. Replace the file with a readable image in one "
        f"of the formats {', '.join(IMAGE_EXTENSIONS)}."
    )


def decode_image(image: Image.Image) -> np.ndarray:
    """The pixels of an opened image as `load_image` returns them: upright, (H, W, 3) uint8 RGB.

    For callers that open images themselves (the server reads uploads from memory and checks
    their size from the header first); decoding errors are PIL's, for the caller to word.
    """
    if image.getexif().get(_EXIF_ORIENTATION_TAG, 1) != 1:
        # Only then: without an orientation to apply, exif_transpose returns a full copy.
        image = ImageOps.exif_transpose(image)
    return _to_rgb_array(image)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _WIDE_GRAY_MODES:
        # 16-bit (or 32-bit integer) grayscale: scale the 0..65535 range to 0..255.
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Copied band by band into one writable array (which torch.from_numpy takes without a
    # warning): np.array(image) would hold the pixels three times over (PIL's own, the bytes of
    # its tobytes() and the copy), 1 GB more than needed for a 100 MP photo.
    width, height = image.size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _COPY_BAND_BYTES // (3 * width))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        pixels[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return pixels


def read_image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of the upright image, read from the header without decoding pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from error
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


def decode_segment_ids(rgb: np.ndarray) -> np.ndarray:
    """Segment id per pixel of an (H, W, 3) uint8 mask: R + 256·G + 256²·B, as int32."""
    channels = rgb.astype(np.int32)
    return channels[..., 0] | (channels[..., 1] << 8) | (channels[..., 2] << 16)


def encode_segment_ids(segment_ids: np.ndarray) -> np.ndarray:
    """Inverse of `decode_segment_ids`: (H, W) ids in [0, 2^24) -> (H, W, 3) uint8 RGB."""
    ids = segment_ids.astype(np.int64)
    shifts = np.array([0, 8, 16], dtype=np.int64)
    return ((ids[..., None] >> shifts) & 0xFF).astype(np.uint8)


def write_segment_png(
    handle: IO[bytes], height: int, width: int, bands: Iterable[np.ndarray]
) -> None:
    """Write a COCO panoptic mask PNG (8-bit RGB, id = R + 256·G + 256²·B) from successive row
    bands of (rows, width) segment ids in [0, 2^24), each encoded and compressed as it comes: the
    whole image is never in memory, as PIL's encoder would need it."""

    def chunk(kind: bytes, data: bytes) -> None:
        handle.write(struct.pack(">I", len(data)) + kind + data)
        handle.write(struct.pack(">I", zlib.crc32(kind + data)))

    handle.write(_PNG_SIGNATURE)
    chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB
    compressor = zlib.compressobj(_PNG_COMPRESSION)
    rows = 0
    for band in bands:
        count = band.shape[0]
        # Little-endian uint32 bytes are R, G, B and a zero byte: drop the fourth.
        rgb = np.ascontiguousarray(band, dtype="<u4").view(np.uint8).reshape(count, width, 4)
        scanlines = np.zeros((count, 1 + 3 * width), dtype=np.uint8)  # filter byte 0: none
        scanlines[:, 1:] = rgb[:, :, :3].reshape(count, 3 * width)
        data = compressor.compress(scanlines.tobytes())
        if data:
            chunk(b"IDAT", data)
        rows += count
    if rows != height:
        raise ValueError(f"The bands hold {rows} rows for a PNG of height {height}.")
    chunk(b"IDAT", compressor.flush())
    chunk(b"IEND", b"")


def load_segment_ids(path: PathLike) -> np.ndarray:
    """Decode a COCO panoptic mask PNG into an (H, W) int32 array of segment ids (0 = void)."""
    try:
        with Image.open(path) as mask:
            mode = mask.mode
            width, height = mask.size
            # PIL stores RGB pixels as 4 bytes; reading them as RGBX little-endian uint32 gives
            # R + 256·G + 256²·B + 256³·X in one copy, without per-channel passes.
            packed = (
                (mask if mode == "RGB" else mask.convert("RGB")).tobytes("raw", "RGBX")
                if mode in _MASK_MODES
                else None
            )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"Cannot read mask '{path}': {error}. Replace it with a readable RGB PNG."
        ) from error
    if packed is None:
        raise DataError(
            f"Mask '{path}' has PIL mode {mode!r}, but COCO panoptic masks are RGB PNGs whose "
            "colour encodes the segment id (R + 256·G + 256²·B). Re-save the mask as an RGB PNG."
        )
    ids = np.frombuffer(packed, dtype="<u4").reshape(height, width) & MAX_SEGMENT_ID
    return ids.astype(np.int32)


def find_image_file(directory: Path, file_name: str) -> Path | None:
    """The image named `file_name` in `directory`, else the only supported image with its stem.

    COCO JSON files often name `x.jpg` while a converted dataset stores `x.png`; matching the stem
    accepts that without guessing between several candidates.
    """
    exact = directory / file_name
    if exact.is_file():
        return exact
    stem = Path(file_name).stem
    parent = exact.parent
    candidates = [
        parent / f"{stem}{extension}"
        for extension in (*IMAGE_EXTENSIONS, *(e.upper() for e in IMAGE_EXTENSIONS))
    ]
    # Keyed by the resolved path: on case-insensitive file systems `x.jpg` and `x.JPG` are one file.
    found = {c.resolve(): c for c in candidates if c.is_file()}
    return next(iter(found.values())) if len(found) == 1 else None
