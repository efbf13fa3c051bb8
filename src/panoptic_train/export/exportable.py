"""What the exporters read from a model: `inference.model.PanopticSegmentationModel` has it.

A protocol instead of that class keeps `export` below `inference`: the model's `export_onnx` and
`export_tensorrt` methods are this package's functions, bound to it, so inference imports export
and never the other way round.
"""

from __future__ import annotations

from typing import Protocol

from panoptic_train.data.coco import ClassMapping
from panoptic_train.models.eomt import EoMT
from panoptic_train.runtime.model_file import ExportedModel
from panoptic_train.runtime.postprocess import PostprocessConfig


class ExportableModel(Protocol):
    """A network in eval mode with what a runner needs beside it (stored in the export).

    Read-only members, so that a model whose attributes have narrower types also qualifies.
    """

    @property
    def network(self) -> EoMT: ...

    @property
    def model_name(self) -> str: ...

    @property
    def class_mapping(self) -> ClassMapping: ...

    @property
    def mean(self) -> tuple[float, float, float]: ...

    @property
    def std(self) -> tuple[float, float, float]: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def postprocess(self) -> PostprocessConfig: ...

    def to_exported(self) -> ExportedModel:
        """A CPU snapshot of the network and its metadata (rebuilt for tracing)."""
        ...
