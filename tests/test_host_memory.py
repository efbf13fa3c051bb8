"""The host allocator setting: large tensors are reused instead of page-faulted anew."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from panoptic_train import _host_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)

# A fresh process allocates and frees a 64 MiB tensor (above glibc's 32 MiB mmap cap) 20 times
# and reports the minor page faults of the last 10: without the setting every allocation faults
# in all of its 16 384 pages; with it, the freed block is reused.
_PROBE = """
import json, resource, sys
import torch
from panoptic_train._host_memory import tune_for_tensors
applied = tune_for_tensors() if sys.argv[1] == "tune" else False
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 2**20).sum()
before = faults()
for _ in range(10):
    torch.ones(16 * 2**20).sum()
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def _run(program: str, *args: str, **env: str) -> str:
    """stdout of `program` in a fresh Python without any malloc setting of this process's."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.pop(_host_memory.ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-c", program, *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def _probe(mode: str, **env: str) -> dict[str, object]:
    return dict(json.loads(_run(_PROBE, mode, **env)))


@glibc_only
def test_tuned_allocator_reuses_large_tensors_instead_of_faulting_them_in() -> None:
    plain = _probe("plain")
    tuned = _probe("tune")
    pages = 10 * 64 * 2**20 // 4096
    assert plain["faults"] > pages / 2  # each allocation mmapped and faulted in anew
    assert tuned["applied"] is True
    assert tuned["faults"] < pages / 20


@glibc_only
def test_allocator_setting_respects_the_users_choice() -> None:
    assert _probe("tune", PANOPTIC_TRAIN_HOST_ALLOCATOR="default")["applied"] is False
    assert _probe("tune", MALLOC_MMAP_MAX_="65536")["applied"] is False


def test_bad_allocator_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_host_memory, "_applied", False)
    monkeypatch.setenv(_host_memory.ENV_VAR, "jemalloc")
    with pytest.raises(ValueError, match="PANOPTIC_TRAIN_HOST_ALLOCATOR='jemalloc'"):
        _host_memory.tune_for_tensors()


@glibc_only
def test_cpu_inference_model_tunes_the_allocator() -> None:
    probe = """
import torch
from panoptic_train import _host_memory
from panoptic_train.data.coco import ClassMapping
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.models.registry import create_model
classes = ClassMapping(class_ids=(1, 2), names=("a", "b"), is_thing=(True, False))
network = create_model("dinov3/vitt16-eomt", 2, backbone_weights=None, num_queries=4)
PanopticSegmentationModel(network, classes, model_name="m", device="cpu")
print(_host_memory._applied)
"""
    assert _run(probe) == "True"
