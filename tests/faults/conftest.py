"""Fault injection on real filesystems and processes: small tmpfs mounts (full or read-only),
files in the way, SIGKILLed writers. Every test here runs in seconds.

Mounting needs root (as in the project's test containers); elsewhere the tmpfs tests skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from panoptic_train.runtime.model_file import ExportedModel

from ..inference.conftest import CLASSES, MEAN, STD, tiny_network

MountTmpfs = Callable[..., Path]
# Subprocesses run on one thread too (see `one_thread`).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """Torch on one thread: on a busy 2-core machine two threads per process oversubscribe the
    cores and these tests take ten times as long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random EoMT (64x64 input, 8 queries, the synthetic dataset's classes) as an
    exported model file."""
    path = tmp_path_factory.mktemp("model") / "exported_best.pt"
    ExportedModel.from_network(
        tiny_network(), model_name="dinov3/vitt16-eomt", classes=CLASSES, mean=MEAN, std=STD
    ).save(path)
    return path


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
