"""Checks of values that several entry points accept or read from files; each error names the
value, where it came from and what to do.

No torch here: the ONNX runner uses them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from panoptic_train._types import is_int
from panoptic_train.errors import ConfigError, WeightsError

Triple = tuple[float, float, float]


def positive_int(value: Any, name: str) -> int:
    """`value` if it is a positive integer (a bool is not one); ConfigError naming it otherwise."""
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def normalization(mean: Sequence[Any], std: Sequence[Any]) -> tuple[Triple, Triple]:
    """The per-channel `mean` and `std` inputs are normalised with, checked: three finite numbers
    each and a positive std (a zero std turns every pixel into inf, and the predictions into
    garbage without any error)."""
    checked = []
    for name, values in (("mean", mean), ("std", std)):
        try:
            triple = tuple(float(value) for value in values)
        except (TypeError, ValueError):
            triple = ()
        if len(triple) != 3 or not all(math.isfinite(value) for value in triple):
            raise ConfigError(
                f"normalize.{name} is {values!r}; it needs one finite number per RGB channel."
            )
        checked.append(triple)
    if min(checked[1]) <= 0:
        raise ConfigError(
            f"normalize.std is {list(checked[1])}; every channel needs a positive value (the "
            "ImageNet default is [0.229, 0.224, 0.225])."
        )
    return checked[0], checked[1]  # type: ignore[return-value]


def check_format_version(found: Any, expected: int, source: str, key: str) -> None:
    """WeightsError unless a file's version entry `key` is the integer `expected`, saying whether
    the entry was edited (not an integer), or the file is newer or older than this package."""
    if found == expected and is_int(found):
        return
    if not is_int(found):
        raise WeightsError(
            f"{source} has {key} {found!r} (a {type(found).__name__}), but panoptic_train "
            f"writes the integer {expected} there: the entry was edited. Set it back to "
            f"{expected}, or re-export the file."
        )
    if found > expected:
        raise WeightsError(
            f"{source} has {key} {found}: it was written by a newer panoptic_train, and this one "
            f"reads {key} {expected}. Upgrade panoptic_train to load it."
        )
    raise WeightsError(
        f"{source} has {key} {found}, an older format than the {expected} this panoptic_train "
        "reads. Load it with the panoptic_train version that wrote it, or re-export it."
    )
