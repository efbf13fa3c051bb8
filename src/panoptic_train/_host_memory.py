"""glibc's malloc tuned for tensor work on the CPU.

glibc serves every allocation above its mmap threshold with a fresh `mmap` and unmaps it on
free, and trims freed memory off the top of its heap. The threshold adapts upwards to the sizes
freed, but only up to 32 MiB, so large tensors are page-faulted and zeroed anew every time: at
batch 2 and 640x640 the upscaler's (2, 192, 160, 160) maps are 39 MiB, and an elementwise pass
over one of them took 4x its arithmetic; and a fresh process merging 30 queries took 40 ms a
merge instead of 24, its megabyte arrays faulted in again and again. Keeping allocations on
the heap, untrimmed, lets freed tensors be reused: about 10 % off the CPU training step and
`predict`, for memory that stays with the process once freed (`benchmarks/RESULTS.md`, "The
host allocator").

Process-wide, so it is applied once, by CPU training and by the CPU predictors
(`PanopticSegmentationModel` on the CPU, `OnnxPredictor`, whose merge runs in numpy).
Skipped where the C library is not glibc, where the user set glibc's own variables, or when
`PANOPTIC_TRAIN_HOST_ALLOCATOR=default`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

ENV_VAR = "PANOPTIC_TRAIN_HOST_ALLOCATOR"
_GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only a free top of the heap over 2 GiB

_applied = False


def tune_for_tensors() -> bool:
    """Keep large allocations on glibc's heap (no mmap, no trimming); True if in effect."""
    global _applied
    if _applied:
        return True
    setting = os.environ.get(ENV_VAR, "tuned")
    if setting not in ("tuned", "default"):
        raise ValueError(
            f"{ENV_VAR}={setting!r}: should be 'tuned' (the default) or 'default' (glibc's own "
            "malloc settings)"
        )
    if setting == "default" or any(name in os.environ for name in _GLIBC_VARIABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)):
        return False
    _applied = True
    logger.debug("glibc malloc: large allocations kept on the heap (%s=default undoes it)", ENV_VAR)
    return True
