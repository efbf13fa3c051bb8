"""Fault injection on real filesystems and processes: small tmpfs mounts (full or read-only),
files in the way, SIGKILLed writers. Every test here runs in seconds.

Mounting needs root (as in the project's test containers); elsewhere the tmpfs tests skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MountTmpfs = Callable[..., Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[MountTmpfs]:
    """`tmpfs(size="1m", read_only=False)` mounts a fresh tmpfs and returns its folder; all are
    unmounted at the end of the test. Skips the test where mounting is not permitted."""
    mounted: list[Path] = []

    def mount(size: str = "1m", read_only: bool = False) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=True)
