"""Image transforms: the `transform_args` of training, the train augmentation and THE preprocessing.

`resize_and_pad` is the only preprocessing for validation, `predict`, the CLI and exported-model
runners, so validation PQ measures exactly what users get. The train transform moves the image
and its segment-id map together (torchvision.transforms.v2 with tv_tensors), so masks stay
aligned with pixels whatever the augmentation does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from panoptic_train._validate import StrictConfig, parse_config

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Segment-id value of padded pixels in the train transform; void is 0, real segments are > 0.
PADDING_ID = -1


class NormalizeArgs(StrictConfig):
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _positive_std(self) -> NormalizeArgs:
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive in every channel, got {self.std}")
        return self


class ScaleJitterArgs(StrictConfig):
    """Large-scale jitter: the image is fitted into `image_size`, then scaled by a random factor
    in [min_scale, max_scale] keeping its aspect ratio (EoMT's COCO recipe: 0.1 to 2.0)."""

    min_scale: float = Field(default=0.1, gt=0)
    max_scale: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ScaleJitterArgs:
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale})"
            )
        return self


class ColorJitterArgs(StrictConfig):
    """Photometric jitter applied with `probability` (factors as in torchvision's ColorJitter)."""

    probability: float = Field(default=0.8, ge=0, le=1)
    brightness: float = Field(default=0.3, ge=0)
    contrast: float = Field(default=0.3, ge=0)
    saturation: float = Field(default=0.3, ge=0)
    hue: float = Field(default=0.05, ge=0, le=0.5)


class ValTransformArgs(StrictConfig):
    """Overrides for validation; unset values are taken from the train arguments."""

    image_size: tuple[int, int] | None = None
    normalize: NormalizeArgs | None = None

    @model_validator(mode="after")
    def _positive_size(self) -> ValTransformArgs:
        if self.image_size is not None and min(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        return self


class TransformArgs(StrictConfig):
    """The `transform_args` argument. `image_size` is (height, width)."""

    image_size: tuple[int, int] = (640, 640)
    normalize: NormalizeArgs = NormalizeArgs()
    scale_jitter: ScaleJitterArgs | None = ScaleJitterArgs()
    horizontal_flip_prob: float = Field(default=0.5, ge=0, le=1)
    color_jitter: ColorJitterArgs | None = None
    val: ValTransformArgs = ValTransformArgs()

    @model_validator(mode="after")
    def _positive_size(self) -> TransformArgs:
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        return self

    @property
    def val_image_size(self) -> tuple[int, int]:
        return self.val.image_size or self.image_size

    @property
    def val_normalize(self) -> NormalizeArgs:
        return self.val.normalize or self.normalize


def load_transform_args(transform_args: TransformArgs | dict[str, Any] | None) -> TransformArgs:
    """Validate the `transform_args` argument; None means all defaults."""
    return parse_config(TransformArgs, transform_args, "transform_args")


def resize_and_pad(
    image: torch.Tensor,
    image_size: tuple[int, int],
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Fit an image into `image_size` keeping its aspect ratio, normalise, zero-pad bottom/right.

    `image` is (3, H, W), uint8 in 0..255 or float in 0..1. The scale is
    min(S_h / H, S_w / W), so the longer side (relative to the target) fills the target. Returns
    the float32 (3, S_h, S_w) input and the (height, width) of the image inside the padding, which
    post-processing needs to crop the padding off again.
    """
    _, height, width = image.shape
    target_h, target_w = image_size
    scale = min(target_h / height, target_w / width)
    resized_h = min(target_h, max(1, round(height * scale)))
    resized_w = min(target_w, max(1, round(width * scale)))
    if (resized_h, resized_w) != (height, width):
        image = TF.resize(image, [resized_h, resized_w], antialias=True)
    normalized = _normalize(image, mean, std)
    padded = F.pad(normalized, (0, target_w - resized_w, 0, target_h - resized_h))
    return padded, (resized_h, resized_w)


def _normalize(
    image: torch.Tensor, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]
) -> torch.Tensor:
    """(x / 255 - mean) / std for uint8, (x - mean) / std for float in 0..1, as x * a - b."""
    value_range = 255.0 if image.dtype == torch.uint8 else 1.0
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    # One float copy, then in place: this runs per sample in the data workers.
    return image.to(torch.float32, copy=True).mul_(1.0 / (value_range * std_t)).sub_(mean_t / std_t)


class _ScaleJitter(v2.Transform):
    """Fit into `target_size` (height, width), times a uniform random factor; aspect ratio kept.

    torchvision's v2.ScaleJitter pairs the target's width with the image's height, which is only
    right for square targets, and can round a side down to zero; this one does neither.
    """

    def __init__(self, target_size: tuple[int, int], scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.target_size = target_size
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + float(torch.rand(())) * (high - low)
        ratio = min(self.target_size[0] / height, self.target_size[1] / width) * scale
        return {"size": [max(1, round(height * ratio)), max(1, round(width * ratio))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # tv_tensors dispatch: bilinear + antialias for the image, nearest for the id map.
        return TF.resize(inpt, params["size"], antialias=True)


class TrainTransform:
    """Augments an image and its segment-id map together.

    Pipeline (EoMT's COCO recipe): optional colour jitter, scale jitter keeping the aspect ratio,
    pad and random crop to `image_size`, horizontal flip, normalise. Padded pixels get segment
    id PADDING_ID and a zero (post-normalisation) image value, as `resize_and_pad` pads.
    """

    def __init__(self, args: TransformArgs) -> None:
        self.args = args
        jitter = args.scale_jitter or ScaleJitterArgs(min_scale=1.0, max_scale=1.0)
        steps: list[v2.Transform] = []
        if args.color_jitter is not None:
            cj = args.color_jitter
            steps.append(
                v2.RandomApply(
                    [v2.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue)],
                    p=cj.probability,
                )
            )
        steps += [
            _ScaleJitter(args.image_size, (jitter.min_scale, jitter.max_scale)),
            v2.RandomCrop(
                args.image_size,
                pad_if_needed=True,
                fill={tv_tensors.Image: 0, tv_tensors.Mask: PADDING_ID},
            ),
            v2.RandomHorizontalFlip(args.horizontal_flip_prob),
        ]
        self._geometry = v2.Compose(steps)

    def __call__(
        self, image: torch.Tensor, segment_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) uint8 image + (H, W) int32 ids -> normalised float32 image + ids, both at
        `image_size`."""
        out_image, out_ids = self._geometry(
            tv_tensors.Image(image), tv_tensors.Mask(segment_ids.unsqueeze(0))
        )
        ids = out_ids.as_subclass(torch.Tensor).squeeze(0).contiguous()
        normalized = _normalize(
            out_image.as_subclass(torch.Tensor), self.args.normalize.mean, self.args.normalize.std
        )
        normalized.masked_fill_(ids == PADDING_ID, 0.0)
        return normalized, ids
