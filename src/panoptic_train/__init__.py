"""panoptic_train: EoMT panoptic segmentation on DINOv3 backbones.

The public API is imported lazily so that `import panoptic_train` stays fast (no torch import
until a function is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC_API: dict[str, str] = {
    "train_panoptic_segmentation": "panoptic_train.train.api",
    "load_model": "panoptic_train.inference.model",
    "evaluate_panoptic": "panoptic_train.evaluation.files",
    "visualize": "panoptic_train.inference.visualize",
    "list_models": "panoptic_train.models.registry",
    "create_model": "panoptic_train.models.registry",
}

__all__ = [*sorted(_PUBLIC_API), "__version__"]

if TYPE_CHECKING:
    from panoptic_train.evaluation.files import evaluate_panoptic
    from panoptic_train.inference.model import load_model
    from panoptic_train.inference.visualize import visualize
    from panoptic_train.models.registry import create_model, list_models
    from panoptic_train.train.api import train_panoptic_segmentation


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC_API.get(name)
    if module_name is None:
        raise AttributeError(f"module 'panoptic_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
