"""The image of a request: the raw body or the multipart field `file`, read within a byte limit
and decoded as every image entering the package is (`data.io.decode_image`), after a pixel
limit checked on the header alone.

Every refusal is an `UploadError` carrying the HTTP status and a message that names the problem
and how to send the image instead; nothing here is fatal to the server.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from panoptic_train.data.io import decode_image

FIELD = "file"
# No image format needs more than 8 bytes per pixel (16-bit RGBA, uncompressed); the margin is
# for headers and metadata. Larger bodies are refused before they are read.
_BYTES_PER_PIXEL = 8
_HEADER_MARGIN = 1 << 20
_HOW_TO_SEND = (
    f"Send the image file as the request body (curl --data-binary @image.jpg URL) or as the "
    f"multipart field '{FIELD}' (curl -F {FIELD}=@image.jpg URL)."
)


class UploadError(Exception):
    """A request whose image cannot be used; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """The image bytes of a request and how to name them in messages."""

    data: bytes
    source: str  # "the request body", "the uploaded file 'cat.jpg'"

    @property
    def subject(self) -> str:
        """`source` to start a sentence with."""
        return self.source[:1].upper() + self.source[1:]


def max_upload_bytes(max_pixels: int) -> int:
    """The largest body accepted for images of at most `max_pixels` pixels."""
    return _BYTES_PER_PIXEL * max_pixels + _HEADER_MARGIN


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The image bytes of `request`: multipart/form-data field `file`, else the whole body
    (whatever its Content-Type, so `curl --data-binary` works as it is)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        upload = await _read_multipart(request, max_bytes)
    else:
        upload = Upload(await _read_body(request, max_bytes), "the request body")
    if not upload.data:
        raise UploadError(400, f"{upload.subject} is empty. {_HOW_TO_SEND}")
    return upload


def decode_upload(upload: Upload, max_pixels: int) -> np.ndarray:
    """The upright (H, W, 3) uint8 RGB pixels of an uploaded image."""
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(
                    413,
                    f"{upload.subject} is a {width}x{height} image "
                    f"({width * height:,} pixels), more than this server's limit of "
                    f"{max_pixels:,} pixels. Downscale it, or start the server with a larger "
                    "--max-image-pixels.",
                )
            return decode_image(image)
    except UnidentifiedImageError:
        raise UploadError(
            415,
            f"{upload.subject} ({len(upload.data):,} byte{'s' if len(upload.data) > 1 else ''}, "
            f"starting with {upload.data[:8]!r}) is not an image in a format the server reads. "
            "Send a JPEG, PNG, WebP, BMP or TIFF file.",
        ) from None
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"{upload.subject} has too many pixels to decode: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(
            422,
            f"{upload.subject} could not be decoded: {error}. The file is truncated or "
            "corrupt; send the complete image file.",
        ) from None


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it passes `max_bytes` (also without Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_multipart(request: Request, max_bytes: int) -> Upload:
    async with request.form() as form:
        names = [name for name, _ in form.multi_items()]
        if FIELD not in names:
            found = ", ".join(repr(name) for name in names) or "no fields"
            raise UploadError(
                400, f"The multipart body has no field '{FIELD}' (it has {found}). {_HOW_TO_SEND}"
            )
        if names.count(FIELD) > 1:
            raise UploadError(
                400,
                f"The multipart body has {names.count(FIELD)} '{FIELD}' fields; send one image "
                "per request.",
            )
        unexpected = sorted(set(names) - {FIELD})
        if unexpected:
            raise UploadError(
                400,
                f"Unexpected multipart field(s) {', '.join(map(repr, unexpected))}: the body takes "
                f"only '{FIELD}'. Thresholds go in the query string, e.g. ?threshold=0.5.",
            )
        field = form[FIELD]
        if not isinstance(field, UploadFile):
            raise UploadError(
                400,
                f"The multipart field '{FIELD}' is text, not a file. Attach the image file: "
                f"curl -F {FIELD}=@image.jpg URL.",
            )
        data = await field.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes)
        name = f"the uploaded file {field.filename!r}" if field.filename else "the uploaded file"
        return Upload(data, name)


def _too_large(size: int, max_bytes: int) -> UploadError:
    return UploadError(
        413,
        f"The request body ({size:,} bytes or more) is larger than the {max_bytes:,} bytes an "
        "image within this server's --max-image-pixels can need. Send a smaller or compressed "
        "image (JPEG, PNG, WebP).",
    )
