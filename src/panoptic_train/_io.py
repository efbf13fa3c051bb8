"""Crash-safe file writing: a file is either complete or absent, never truncated."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically through a callback that receives the open binary handle."""
    with atomic_open(path, "wb") as handle:
        write(handle)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2)
        handle.write("\n")
