"""COCO panoptic data: reading and validation, transforms, datasets, collate, synthetic data.

Names are imported lazily so that `import panoptic_train.data._cli` (the CLI) loads no torch.
"""

from __future__ import annotations

from panoptic_train._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ClassMapping": "panoptic_train.data.coco",
    "read_panoptic_index": "panoptic_train.data.coco",
    "DataArgs": "panoptic_train.data.config",
    "load_data_args": "panoptic_train.data.config",
    "TransformArgs": "panoptic_train.data.transforms",
    "load_transform_args": "panoptic_train.data.transforms",
    "resize_and_pad": "panoptic_train.data.transforms",
    "build_datasets": "panoptic_train.data.dataset",
    "collate_train": "panoptic_train.data.dataset",
    "collate_val": "panoptic_train.data.dataset",
    "load_image": "panoptic_train.data.io",
    "write_dataset": "panoptic_train.data.synthetic",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
