"""Small types and limits that several layers share, defined once (standard library only)."""

from __future__ import annotations

import numbers
import os
from typing import Any, Literal, TypeAlias

PathLike: TypeAlias = str | os.PathLike[str]

# Segment ids are 24-bit: a COCO panoptic PNG stores R + 256·G + 256²·B, and 0 is void.
MAX_SEGMENT_ID = 2**24 - 1

# The three precision vocabularies are different sets on purpose:
# what a loaded model predicts in ("auto": bf16 on CUDA where supported, else fp16; fp32 on CPU),
InferencePrecision: TypeAlias = Literal["auto", "fp32", "fp16", "bf16"]
# the arithmetic an exported ONNX graph or TensorRT engine is built for,
ExportPrecision: TypeAlias = Literal["fp32", "fp16"]
# and Lightning Fabric's precision plugins, which training runs under.
TrainPrecision: TypeAlias = Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true"]


def is_int(value: Any) -> bool:
    """An integer (numpy's too) that is not a bool: JSON and YAML booleans load as bools, which
    Python counts as integers."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (an integer or a float, numpy's too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
