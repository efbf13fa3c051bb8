"""Getting weights files: the download cache, and downloads through `torch.hub`.

`torch.hub.download_url_to_file` streams into a temporary file beside the target, checks a
SHA-256 prefix and renames the file only when it is complete, so the cache never holds a
truncated or corrupt file. This module adds the cache location and the messages that say how to
supply a file by hand.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch.hub

from panoptic_train._types import PathLike
from panoptic_train.errors import WeightsError
from panoptic_train.models.backbones import WeightSource

CACHE_ENV = "PANOPTIC_TRAIN_CACHE"
# Meta's file names end in the first hex digits of the file's SHA-256 (torch.hub's convention,
# stricter than `torch.hub.HASH_REGEX`, which also takes a name like `vit-b.pth` for a hash).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


def cache_dir() -> Path:
    """Download cache: $PANOPTIC_TRAIN_CACHE, else ~/.cache/panoptic_train."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "panoptic_train")


def unavailable_error(filename: str, reason: str) -> WeightsError:
    """The error for a file that cannot be had here, with the three ways around it."""
    target = cache_dir() / filename
    return WeightsError(
        f"{reason} Point backbone_weights=<path or URL> (weights= in load_model) at a local "
        "copy of the weights, or "
        f"place the file at {target} (the cache directory is set by the {CACHE_ENV} "
        "environment variable), or pass backbone_weights=None for a random initialisation."
    )


def fetch(source: WeightSource) -> Path:
    """The local path of a default weights file, downloading it into the cache if needed."""
    target = cache_dir() / source.filename
    if target.is_file():
        return target
    if source.url is None:
        raise unavailable_error(source.filename, source.unavailable)
    return _download(source.url, target)


def resolve_path(location: PathLike) -> Path:
    """A local file for a path or an http(s) URL (downloaded into the cache once)."""
    text = os.fspath(location)
    if text.startswith(("http://", "https://")):
        # Hub files share names (model.safetensors); a digest of the URL keeps them apart.
        name = Path(urllib.request.url2pathname(text.split("?")[0])).name
        tag = hashlib.sha256(text.encode()).hexdigest()[:10]
        target = cache_dir() / f"{tag}--{name}"
        return target if target.is_file() else _download(text, target)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {text!r} does not exist. Pass the path of a DINOv3 or EoMT weights "
            "file (Meta .pth, Hugging Face .safetensors/.bin, timm), a URL, or "
            "backbone_weights=None for a random initialisation."
        )
    return path


def _download(url: str, target: Path) -> Path:
    """Download `url` to `target`, checking the SHA-256 prefix that a Meta-style name carries."""
    in_name = _HASH_IN_NAME.search(target.name)
    hash_prefix = in_name.group(1) if in_name else None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix, progress=False)
    except RuntimeError as error:  # what torch.hub raises for a hash mismatch
        if hash_prefix is None:
            raise
        raise WeightsError(
            f"The file downloaded from {url} does not match the {hash_prefix} in its name "
            f"({error}); the download is corrupt or the file was replaced. Nothing was saved; "
            "try again."
        ) from error
    except (urllib.error.URLError, OSError) as error:
        gated = isinstance(error, urllib.error.HTTPError) and error.code in (401, 403)
        why = "access is restricted (gated)" if gated else f"the download failed ({error})"
        raise unavailable_error(target.name, f"Could not download {url}: {why}.") from error
    return target
