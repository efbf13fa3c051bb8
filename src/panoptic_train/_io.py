"""Writing outputs: crash-safe files, up-front writability checks, and the one place where an
operating-system error of an output becomes a message.

A file is written to a temporary file beside it and renamed over it only when complete, so it
is either complete or absent, never truncated. The temporary file gets the mode a plain `open()`
would give (the umask, or the mode of the file it replaces), so outputs stay readable to others
where the umask says so. A killed process cannot delete its temporary file; commands that own a
folder remove such leftovers with `remove_stale_temp_files` when they start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from panoptic_train._types import PathLike
from panoptic_train.errors import OutputError

# Temporary files are `.<target name>.<8 characters>.tmp`; older versions used tempfile.mkstemp
# with the same prefix and suffix, whose 8 random characters are [a-z0-9_].
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
# Errors of the storage itself: whatever call raised them, the output could not be written.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_HINTS = {
    errno.ENOSPC: "The filesystem is full: free space there or choose another location.",
    errno.EDQUOT: "The disk quota is used up: free space there or choose another location.",
    errno.EFBIG: "The file is larger than that filesystem allows: choose another location.",
    errno.EROFS: "The filesystem is read-only: choose a writable location.",
    errno.EACCES: "Choose a location you may write to, or fix the folder's permissions.",
    errno.EPERM: "Choose a location you may write to, or fix the folder's permissions.",
    errno.EISDIR: "A folder is in the way: pass the path of a file, not of a folder.",
}


def output_error(path: PathLike, error: OSError) -> OutputError:
    """The OutputError for `error`, raised while writing `path`: the path, the OS's reason and
    what to do about it, in one line."""
    target = Path(path)
    reason = error.strerror or str(error)
    code = error.errno
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(target)
        if blocker is not None:
            return OutputError(
                f"Cannot write '{target}': '{blocker}' is a file, not a folder. Move the file or "
                "choose another location."
            )
    name = errno.errorcode.get(code, "") if code is not None else ""
    hint = _HINTS.get(code, "Choose another location.") if code is not None else ""
    return OutputError(
        f"Cannot write '{target}': {reason}{f' ({name})' if name else ''}. {hint}".rstrip()
    )


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing non-folder among `path`'s ancestors (a file where a folder must be)."""
    for ancestor in path.parents:
        if ancestor.exists():
            return None if ancestor.is_dir() else ancestor
    return None


def ensure_output_dir(path: PathLike) -> Path:
    """Create the folder `path` if needed and prove that files can be created in it, before any
    slow work; OutputError naming the path and the reason otherwise."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"Cannot write '{folder}': it is a file, not a folder. Pass a folder path, or move "
            "the file."
        )
    _probe(folder, folder)
    return folder


def ensure_output_file(path: PathLike) -> Path:
    """Check before any slow work that the file `path` can be written: not a folder, in a folder
    that can be created and written to."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(
            f"Cannot write '{target}': it is a folder. Pass the path of a file (it may be "
            "inside that folder)."
        )
    _probe(target.parent, target)
    return target


def _probe(folder: Path, output: Path) -> None:
    """Create `folder` if needed and a file in it (removed again); errors name `output`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = _create_temp(folder / "write-test")
        os.close(descriptor)
        probe.unlink()
    except OSError as error:
        raise output_error(output, error) from error


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds.

    OS errors of the output (creating the folder, a full or read-only filesystem, the rename)
    become OutputError naming `path`; the block's own other errors pass through unchanged.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp = _create_temp(target)
    except OSError as error:
        raise output_error(target, error) from error
    try:
        with os.fdopen(descriptor, mode) as handle:
            try:
                yield handle
            except OSError as error:
                if error.errno in _STORAGE_ERRNOS:
                    raise output_error(target, error) from error
                raise
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as error:
                raise output_error(target, error) from error
        try:
            os.replace(temp, target)
        except OSError as error:
            raise output_error(target, error) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside `target` and its descriptor.

    Created with mode 0o666, which the OS narrows by the umask as for any new file (mkstemp's
    0o600 would hide the output from everyone else); a file that replaces an existing one takes
    that file's mode, as writing into it would keep it.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temp, flags, 0o666)
            break
        except FileExistsError:
            continue  # one of 2**32 names taken: draw another
    with contextlib.suppress(FileNotFoundError):  # a new file keeps what the umask gave
        os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
    return descriptor, temp


def remove_stale_temp_files(folder: PathLike, targets: frozenset[str] | None = None) -> list[Path]:
    """Delete the temporary files that atomic writes into `folder` left behind when their
    process was killed (a killed process runs no cleanup); returns what was deleted.

    targets: only temporary files of these file names (None: of any file). Call it only where no
    other process is writing into `folder` at the same time.
    """
    directory = Path(folder)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and (targets is None or match["target"] in targets) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically through a callback that receives the open binary handle (what
    it returns, such as `handle.write`'s byte count, is ignored)."""
    with atomic_open(path, "wb") as handle:
        write(handle)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save` to `path` atomically; a failed write is an OutputError with the OS's reason
    (torch itself reports a full disk only as 'unexpected pos')."""
    import torch

    with atomic_open(path, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            # torch.save's hint asks for a real IO[bytes]; it only calls write and flush.
            torch.save(obj, writer)  # type: ignore[arg-type]
        except RuntimeError as error:
            if writer.error is None:
                raise
            raise output_error(path, writer.error) from error


class _RecordingWriter:
    """A binary file handle that remembers the OSError of a failed write, for callers whose
    library swallows it into an error without the reason."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as error:
            self.error = error
            raise


def atomic_write_json(obj: Any, path: PathLike) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2)
        handle.write("\n")
