"""Exceptions for problems the user can fix. Their messages name the bad value, where it came
from, and how to fix it; the CLI prints them without a traceback."""

from __future__ import annotations

from types import ModuleType


class PanopticTrainError(Exception):
    """Base class of every user-facing error."""


class ConfigError(PanopticTrainError, ValueError):
    """A bad argument or configuration value (unknown key, wrong type, out of range)."""


class DataError(PanopticTrainError, ValueError):
    """A dataset that cannot be used as given (missing files, inconsistent annotations)."""


class WeightsError(PanopticTrainError, ValueError):
    """A weights file or checkpoint that is not what was expected, or cannot be obtained."""


class MissingDependencyError(PanopticTrainError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


class OutputError(PanopticTrainError, OSError):
    """An output that cannot be written: a read-only or full filesystem, missing permissions, a
    file where a folder should be (or the reverse). The message names the path and the OS error.

    An OSError, so that code catching write failures as OSError keeps working.
    """


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency or explain which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f'Install it with: pip install "panoptic-train[{extra}]"'
        ) from error
