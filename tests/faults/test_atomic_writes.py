"""The atomic writer under faults: full and read-only filesystems, files in the way, writers
killed mid-file, and the file modes it leaves."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from panoptic_train._io import (
    atomic_torch_save,
    atomic_write_json,
    ensure_output_dir,
    ensure_output_file,
    remove_stale_temp_files,
)
from panoptic_train.errors import OutputError

from .conftest import MountTmpfs

# Opens an atomic write of argv[1], writes part of it, says so and waits to be killed.
_KILLED_WRITER = """
import sys, time
from panoptic_train._io import atomic_open
with atomic_open(sys.argv[1]) as handle:
    handle.write(b"x" * 100_000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_full_filesystem_names_the_file_and_the_reason(tmpfs: MountTmpfs) -> None:
    folder = tmpfs("1m")
    # torch.save reports the failed write only as "unexpected pos"; the message has the cause.
    with pytest.raises(OutputError, match=r"'.*model\.pt': No space left on device \(ENOSPC\)"):
        atomic_torch_save({"weights": torch.zeros(1_000_000)}, folder / "model.pt")
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write_json(list(range(300_000)), folder / "big.json")
    assert list(folder.iterdir()) == []  # no partial file, no temporary file


def test_a_read_only_filesystem_is_found_before_any_work(tmpfs: MountTmpfs) -> None:
    folder = tmpfs(read_only=True)
    with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\)"):
        ensure_output_dir(folder / "predictions")
    with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\)"):
        ensure_output_file(folder / "metrics.json")


def test_a_file_or_folder_in_the_way_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a regular file")
    with pytest.raises(OutputError, match=f"'{re.escape(str(blocker))}' is a file, not a folder"):
        ensure_output_dir(blocker / "predictions")
    with pytest.raises(OutputError, match=f"'{re.escape(str(blocker))}' is a file, not a folder"):
        atomic_write_json({}, blocker / "sub" / "metrics.json")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        ensure_output_dir(blocker)
    with pytest.raises(OutputError, match=r"it is a folder\. Pass the path of a file"):
        ensure_output_file(tmp_path)
    assert blocker.read_text() == "a regular file"


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask")
def test_files_get_the_mode_a_plain_write_gives(tmp_path: Path) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    atomic_torch_save({"x": torch.ones(2)}, tmp_path / "model.pt")
    atomic_write_json({}, tmp_path / "metrics.json")
    assert mode(tmp_path / "model.pt") == mode(tmp_path / "metrics.json") == 0o644
    os.umask(0o002)
    atomic_write_json({}, tmp_path / "shared.json")
    assert mode(tmp_path / "shared.json") == 0o664
    # Replacing a file keeps its mode, as writing into it would.
    (tmp_path / "metrics.json").chmod(0o640)
    atomic_write_json({"pq": 1}, tmp_path / "metrics.json")
    assert mode(tmp_path / "metrics.json") == 0o640


def test_temp_files_of_killed_writers_are_found_and_removed(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous complete file")
    other = tmp_path / "notes.tmp"
    other.write_text("not ours")
    for _ in range(2):
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    stale = sorted(p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt."))
    assert len(stale) == 2 and all(p.stat().st_size == 100_000 for p in stale)
    assert target.read_bytes() == b"the previous complete file"  # killed writes never land

    assert remove_stale_temp_files(tmp_path, frozenset({"exported_best.pt"})) == []
    assert sorted(remove_stale_temp_files(tmp_path, frozenset({"last.ckpt"}))) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]
