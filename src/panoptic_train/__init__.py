"""panoptic_train: EoMT panoptic segmentation on DINOv3 backbones.

The public API is imported lazily so that `import panoptic_train` stays fast (no torch import
until a function is used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from panoptic_train._lazy import lazy_exports
from panoptic_train._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "train_panoptic_segmentation": "panoptic_train.train.api",
    "load_model": "panoptic_train.inference.model",
    "evaluate_panoptic": "panoptic_train.evaluation.files",
    "visualize": "panoptic_train.inference.visualize",
    "list_models": "panoptic_train.models.registry",
    "create_model": "panoptic_train.models.registry",
}

__all__ = [
    "__version__",
    "create_model",
    "evaluate_panoptic",
    "list_models",
    "load_model",
    "train_panoptic_segmentation",
    "visualize",
]

if TYPE_CHECKING:
    from panoptic_train.evaluation.files import evaluate_panoptic
    from panoptic_train.inference.model import load_model
    from panoptic_train.inference.visualize import visualize
    from panoptic_train.models.registry import create_model, list_models
    from panoptic_train.train.api import train_panoptic_segmentation


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
