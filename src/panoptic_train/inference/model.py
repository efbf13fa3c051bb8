"""`load_model` and the model object it returns: `predict`, class names, export.

`predict` (batching shared with the exported-model runners: `runtime.predict`) runs the same
three steps as validation: `data.transforms.resize_and_pad`, the EoMT eval forward pass, the
merge of `runtime.postprocess` (`panoptic_merge`, whose row bands let `predict_files` stream the
maps of huge images); only the mapping from class indices to the dataset's category ids is
added here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple, get_args

import torch
from torch import Tensor

from panoptic_train._host_memory import tune_for_tensors
from panoptic_train._types import InferencePrecision, PathLike
from panoptic_train._validate import normalization, one_of
from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_and_pad
from panoptic_train.errors import ConfigError, WeightsError
from panoptic_train.export.onnx import export_onnx
from panoptic_train.export.tensorrt import export_tensorrt
from panoptic_train.models.eomt import EoMT
from panoptic_train.runtime.inputs import ImageInput, to_image_tensor
from panoptic_train.runtime.model_file import ExportedModel, read_model_dict
from panoptic_train.runtime.postprocess import PanopticMerge, PostprocessConfig, panoptic_merge
from panoptic_train.runtime.predict import BatchPredictor


class PreparedImage(NamedTuple):
    """An image ready for the network: `inputs` float32 (3, S_h, S_w) normalised and padded,
    `resized_size` the image's size inside the padding, `orig_size` its own (height, width)."""

    inputs: Tensor
    resized_size: tuple[int, int]
    orig_size: tuple[int, int]


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PanopticSegmentationModel(BatchPredictor[dict[str, Tensor]]):
    """A trained EoMT with everything needed to turn images into panoptic maps.

    Attributes:
        network: the EoMT network (eval mode).
        classes: category id -> class name.
        is_thing: category id -> True for thing classes, False for stuff.
        image_size: (height, width) images are resized and padded to.
        postprocess: the default thresholds of `predict`.
    """

    def __init__(
        self,
        network: EoMT,
        class_mapping: ClassMapping,
        *,
        model_name: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        image_size: tuple[int, int] | None = None,
        postprocess: PostprocessConfig | None = None,
        device: str | torch.device | None = None,
        precision: InferencePrecision = "auto",
        compile: bool = False,
    ) -> None:
        self.network = network.eval()
        self.class_mapping = class_mapping
        self.model_name = model_name
        self.mean, self.std = normalization(mean, std)
        height, width = image_size or network.config.image_size
        self.image_size = (height, width)
        self.postprocess = postprocess or PostprocessConfig()
        self.classes = dict(zip(class_mapping.class_ids, class_mapping.names, strict=True))
        self.is_thing = dict(zip(class_mapping.class_ids, class_mapping.is_thing, strict=True))
        self.device = _resolve_device(device)
        self.dtype = _resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            tune_for_tensors()
        self.network.to(self.device)
        self._category_ids = torch.tensor(class_mapping.class_ids, device=self.device)
        self._thing_flags = torch.tensor(class_mapping.is_thing, device=self.device)
        self._forward = torch.compile(self.network) if compile else self.network

    @property
    def precision(self) -> str:
        """What `predict` runs in: "fp32", "fp16" or "bf16" (`load_model`'s "auto" resolved)."""
        return next(name for name, dtype in _DTYPES.items() if dtype == self.dtype)

    def _predict_batch(
        self, images: Sequence[ImageInput], config: PostprocessConfig, max_image_pixels: int
    ) -> list[dict[str, Tensor]]:
        prepared = [self.prepare(to_image_tensor(image, max_image_pixels)) for image in images]
        return [self.result(merge) for merge in self.merge(prepared, config)]

    def prepare(self, image: Tensor) -> PreparedImage:
        """One image (`inputs.to_image_tensor`'s layout) as the network takes it, with the sizes
        the merge needs: validation's `resize_and_pad`, on the CPU (threads may call it, so that
        the full-size image can be dropped before the network runs)."""
        inputs, resized = resize_and_pad(image, self.image_size, self.mean, self.std)
        return PreparedImage(inputs, resized, (int(image.shape[-2]), int(image.shape[-1])))

    @torch.inference_mode()
    def merge(
        self, prepared: Sequence[PreparedImage], config: PostprocessConfig
    ) -> list[PanopticMerge]:
        """The network on a batch of prepared images, and the panoptic merge of each (in row
        bands: `PanopticMerge.bands()` streams the maps of a huge image, `result` builds all)."""
        batch = torch.stack([image.inputs for image in prepared]).to(self.device, non_blocking=True)
        with self._autocast():
            output = self._forward(batch, factored_masks=True)
        return panoptic_merge(
            output.class_logits[-1],
            output.mask_projections[-1],
            self._thing_flags,
            input_size=self.image_size,
            resized_sizes=[image.resized_size for image in prepared],
            orig_sizes=[image.orig_size for image in prepared],
            config=config,
        )

    def categories(self, class_indices: Tensor) -> Tensor:
        """The dataset's category ids of contiguous class indices (on the model's device)."""
        return self._category_ids[class_indices]

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def result(self, merge: PanopticMerge) -> dict[str, Tensor]:
        """`predict`'s dict of one merge: category ids instead of class indices, on the CPU."""
        return {
            "masks": merge.masks(self._category_ids).cpu(),
            "segment_ids": merge.segment_ids.cpu(),
            "scores": merge.scores.cpu(),
            "labels": self.categories(merge.labels).cpu(),
        }

    def to_exported(self) -> ExportedModel:
        """The exported-model file content of this model (see `runtime.model_file`)."""
        return ExportedModel.from_network(
            self.network,
            model_name=self.model_name,
            classes=self.class_mapping,
            mean=self.mean,
            std=self.std,
            image_size=self.image_size,
            postprocess=self.postprocess,
        )

    def save(self, path: PathLike) -> None:
        """Write an exported-model file that `load_model` reads back."""
        self.to_exported().save(path)

    # The exporters take the model as their first argument, so they are its methods as they
    # are: one signature and one docstring, which help() and IDEs show for both spellings.
    export_onnx = export_onnx
    export_tensorrt = export_tensorrt

    def __repr__(self) -> str:
        return (
            f"PanopticSegmentationModel({self.model_name!r}, {len(self.classes)} classes, "
            f"image_size={self.image_size}, device={self.device}, dtype={self.dtype})"
        )


def load_model(
    path_or_name: PathLike,
    device: str | torch.device | None = None,
    *,
    precision: InferencePrecision = "auto",
    compile: bool = False,
    weights: PathLike | None = None,
) -> PanopticSegmentationModel:
    """Load an exported model (`exported_*.pt`), a training checkpoint (`.ckpt`) or a
    COCO-fine-tuned registry model (`dinov3/...-eomt-panoptic-coco`) for prediction.

    Files are read with `torch.load(weights_only=True)`: no code from a file ever runs.
    device: "cuda" when available, else "cpu", unless given.
    precision: "auto" runs fp32 on CPU and bf16 (fp16 where bf16 is unsupported) autocast on
        CUDA; "fp32", "fp16" or "bf16" force one.
    compile: wrap the network in `torch.compile` (pays off for many images of one batch size).
    weights: for a registry name, a local path or URL of its network weights in any layout the
        models package reads (e.g. the EoMT authors' COCO panoptic files) instead of the default
        source; files carry their own weights, so it is an error with a file.
    """
    options: dict[str, Any] = {"device": device, "precision": precision, "compile": compile}
    path = Path(path_or_name)
    if path.is_file():
        if weights is not None:
            raise ConfigError(
                f"weights={str(weights)!r} was given with the model file '{path}', which carries "
                "its own weights. Pass weights= only with a registry model name."
            )
        exported = ExportedModel.from_dict(read_model_dict(path), source=f"'{path}'")
        return PanopticSegmentationModel(
            exported.build_network(),
            exported.classes,
            model_name=exported.model_name,
            mean=exported.mean,
            std=exported.std,
            image_size=exported.image_size,
            postprocess=exported.postprocess,
            **options,
        )
    return _load_registry_model(str(path_or_name), weights, options)


def _load_registry_model(
    name: str, weights: PathLike | None, options: dict[str, Any]
) -> PanopticSegmentationModel:
    from panoptic_train.models import registry

    if not registry.is_model_name(name):
        raise WeightsError(
            f"'{name}' is neither a file nor a model name. Pass the path of an exported model "
            "(e.g. out/my_experiment/exported_models/exported_best.pt), a training checkpoint "
            "(.ckpt) or a fine-tuned model name: "
            + ", ".join(n for n in registry.list_models() if registry.model_classes(n))
            + "."
        )
    classes = registry.model_classes(name)
    if classes is None:
        raise WeightsError(
            f"Model {name!r} has a pretrained backbone but no panoptic head, so it cannot "
            "predict yet. Train it on your data with "
            f"train_panoptic_segmentation(model={name!r}, ...) and load the exported file, or "
            "load a fine-tuned model such as 'dinov3/vits16-eomt-panoptic-coco'."
        )
    info = registry.get_model_info(name)
    network = registry.create_model(
        name, num_classes=len(classes), backbone_weights="default" if weights is None else weights
    )
    return PanopticSegmentationModel(
        network, ClassMapping.from_list(classes), model_name=info.name, **options
    )


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"Invalid device {device!r}: {error}. Use 'cpu' or 'cuda'.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device!r} was asked for but CUDA is not available here; use device='cpu'."
        )
    return resolved


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[one_of(precision, "precision", get_args(InferencePrecision))]
