"""Converters into COCO panoptic format, and from it to semantic PNGs.

`convert_cityscapes`, `convert_semantic_instance` and `convert_coco_instances` each write one
split under OUT: `images/<split>/`, `annotations/<split>/` (mask PNGs), `annotations/<split>.json`
and `data.yaml` (the `data` argument of training, with train and val once both exist), and
return a `ConversionSummary`. `convert_to_semantic` goes the other way. The command line is
`panoptic-train convert FORMAT ...`.
"""

from __future__ import annotations

from panoptic_train._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "convert_cityscapes": "panoptic_train.data.convert.cityscapes",
    "convert_semantic_instance": "panoptic_train.data.convert.semantic_instance",
    "convert_coco_instances": "panoptic_train.data.convert.coco_instances",
    "convert_to_semantic": "panoptic_train.data.convert.to_semantic",
    "ConversionSummary": "panoptic_train.data.convert.summary",
    "SemanticSummary": "panoptic_train.data.convert.summary",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
