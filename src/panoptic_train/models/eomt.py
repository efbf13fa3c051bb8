"""EoMT: the Encoder-only Mask Transformer (Kerssies et al., CVPR 2025) on a DINOv3 ViT.

Learned queries join the token sequence before the last `num_joint_blocks` backbone blocks. While
training, every joint block is preceded by a prediction (class and mask logits from the shared
heads) and the final prediction follows the last block; the mask of each prediction may restrict
the next block's query-to-patch attention (masked attention, annealed away during training through
the `attn_mask_probs` buffer). In eval mode only the final prediction is computed and no mask is
built, so the eval graph has no data-dependent control flow (ONNX/TensorRT export). In training
mode the mask logits stay factored (`MaskProjection`): the loss reads them only for the matched
queries and at its sampled points, so the (B, Q, H/4, W/4) maps are never built.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from panoptic_train._validate import positive_int
from panoptic_train.errors import ConfigError
from panoptic_train.models.backbones import get_backbone
from panoptic_train.models.dinov3 import PATCH_SIZE, DinoV3ViT, rope_for_tokens

MASK_STRIDE = 4  # mask logits come out at 1/4 of the input resolution
# "auto" activation checkpointing turns on when the activations it saves would take more than
# this share of the memory available on the training device.
CHECKPOINT_MEMORY_SHARE = 0.25

logger = logging.getLogger(__name__)

# What a training forward's backward recomputes instead of keeping: nothing, the elementwise
# tail of every upscale block (GELU, depthwise conv, LayerNorm), or the whole upscaler.
Recompute = Literal["nothing", "tails", "upscaler"]


@dataclass(frozen=True)
class EoMTConfig:
    """Everything needed to rebuild an EoMT architecture (stored in exported model files).

    Attributes:
        backbone: DINOv3 size, a key of `backbones.BACKBONES` (e.g. "vits16").
        num_classes: number of classes C; the class head predicts C + 1 logits (last = no object).
        num_queries: number of learned queries (segments one image can hold).
        num_joint_blocks: L2, the number of final backbone blocks that also process the queries.
        image_size: (height, width) the model is trained and run at; multiples of 16.
    """

    backbone: str
    num_classes: int
    num_queries: int = 200
    num_joint_blocks: int = 3
    image_size: tuple[int, int] = (640, 640)

    def __post_init__(self) -> None:
        depth = get_backbone(self.backbone).arch.depth
        for name in ("num_classes", "num_queries", "num_joint_blocks"):
            positive_int(getattr(self, name), f"EoMT {name}")
        if self.num_joint_blocks > depth:
            raise ConfigError(
                f"EoMT num_joint_blocks={self.num_joint_blocks} exceeds the {depth} blocks of "
                f"backbone {self.backbone!r}; use a value between 1 and {depth}."
            )
        size = tuple(self.image_size)
        if (
            len(size) != 2
            or not all(isinstance(side, int) and side > 0 for side in size)
            or any(side % PATCH_SIZE for side in size)
        ):
            raise ConfigError(
                f"EoMT image_size must be (height, width) with positive multiples of {PATCH_SIZE}, "
                f"got {self.image_size!r}."
            )
        object.__setattr__(self, "image_size", size)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only, so exported files load with `torch.load(weights_only=True)`."""
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EoMTConfig:
        """Inverse of `to_dict`; unknown keys are an error rather than silently dropped."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown EoMT config keys {unknown}; valid keys are {sorted(known)}."
            )
        values = dict(data)
        if "image_size" in values:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)


class MaskProjection(NamedTuple):
    """Mask logits not multiplied out: logits[..., q, y, x] = embeddings[..., q, :] ·
    features[..., :, y, x], batched (B, Q, D) and (B, D, h, w) or for one image (Q, D) and
    (D, h, w). The projection is linear per pixel, so bilinear samples or resizes of the features
    projected equal those of the logits, for D instead of Q channels."""

    embeddings: Tensor
    features: Tensor

    def logits(self) -> Tensor:
        """The dense mask logits, (B, Q, h, w) or (Q, h, w): one (batched) matmul, which
        onnxruntime runs ~2x faster than the same product as an Einsum node."""
        return _project(self.embeddings, self.features)

    def logits_of(self, image: int, queries: Tensor) -> Tensor:
        """The dense (K, h, w) logits of image `image`'s `queries` (bool (Q,) flags or indices)
        of a batched projection: what the merge needs of its confident queries."""
        return _project(self.embeddings[image][queries], self.features[image])


def _project(embeddings: Tensor, features: Tensor) -> Tensor:
    return (embeddings @ features.flatten(-2)).unflatten(-1, features.shape[-2:])


class EoMTOutput(NamedTuple):
    """One entry per prediction: L2 + 1 while training, only the final one in eval mode.

    The mask logits are dense in eval mode (`mask_logits`; `mask_projections` is empty) and
    factored in training mode (`mask_projections`; `mask_logits` is empty): there the full maps
    would cost as much as the upscaler, and the loss reads a few of their rows. `forward`'s
    `factored_masks` picks either form in either mode (`predict` multiplies out the confident
    queries only).
    """

    class_logits: list[Tensor]  # each (B, Q, C + 1)
    mask_logits: list[Tensor]  # each (B, Q, H / 4, W / 4)
    mask_projections: list[MaskProjection]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UpscaleBlock(nn.Module):
    """2x upsampling: transposed conv 2x2/2, GELU, depthwise 3x3 conv (no bias), LayerNorm2d.

    The transposed convolution's kernel equals its stride, so each input pixel maps to its own
    2x2 output block: in PyTorch it runs as one matmul and a pixel shuffle (on the CPU about 1.3x
    faster forward and backward than the convolution kernel, same values); exported graphs keep
    the ConvTranspose node, which onnxruntime runs faster than the matmul form.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: Tensor, recompute_tail: bool = False) -> Tensor:
        """recompute_tail: keep only the transposed convolution's output for backward and
        recompute GELU, depthwise conv and LayerNorm there (two of its three full-resolution maps
        fewer for a few elementwise passes)."""
        if torch.onnx.is_in_onnx_export():
            upsampled = self.deconv(x)
        else:
            upsampled = _upsample_2x2(x, self.deconv.weight, self.deconv.bias)
        if recompute_tail:
            return checkpoint(self._tail, upsampled, use_reentrant=False)
        return self._tail(upsampled)

    def _tail(self, upsampled: Tensor) -> Tensor:
        return self.norm(self.dwconv(F.gelu(upsampled)))


def _upsample_2x2(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`F.conv_transpose2d(x, weight, bias, stride=2)` for a 2x2 kernel as a matmul: (B, C, H, W)
    -> (B, D, 2H, 2W), channels-last like the upscaler's maps."""
    batch, channels, height, width = x.shape
    dim = weight.shape[1]
    blocks = F.linear(  # per pixel its 2x2 block (dy, dx, D)
        x.permute(0, 2, 3, 1).reshape(-1, channels),
        weight.permute(0, 2, 3, 1).flatten(1).T,
        None if bias is None else bias.repeat(4),
    )
    blocks = blocks.view(batch, height, width, 2, 2, dim).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(batch, 2 * height, 2 * width, dim).permute(0, 3, 1, 2)


class MaskMLP(nn.Module):
    """Three linear layers with GELU between them: query embedding -> mask embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.fc3 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class EoMT(nn.Module):
    """EoMT network: `forward(images) -> EoMTOutput` (see the module docstring).

    activation_checkpointing: what of the upscaler the training backward recomputes instead
        of keeping. "auto" (the default): the elementwise tail of each upscale block (GELU,
        depthwise conv, LayerNorm: two of its three full-resolution maps, −0.25 GiB for ViT-T at
        640x640, batch 2, for a few elementwise passes), and the whole upscaler when its
        activations (`checkpointed_bytes`) would take more than CHECKPOINT_MEMORY_SHARE of the
        memory available on the device at the first training step (free CUDA memory, or the
        host's available memory), decided once. True: always the whole upscaler (0.59 GiB for
        ViT-T at 640x640, batch 2, for about 10 % more step time). False: nothing.
    """

    attn_mask_probs: Tensor
    activation_checkpointing: bool | Literal["auto"] = "auto"

    def __init__(self, config: EoMTConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = DinoV3ViT(get_backbone(config.backbone).arch)
        dim = self.backbone.embed_dim
        self.queries = nn.Embedding(config.num_queries, dim)
        self.class_head = nn.Linear(dim, config.num_classes + 1)
        self.mask_head = MaskMLP(dim)
        num_upscale = round(math.log2(PATCH_SIZE // MASK_STRIDE))
        self.upscale = nn.Sequential(*(UpscaleBlock(dim) for _ in range(num_upscale)))
        # Probability that a query keeps its masked attention, per joint block. Set by the training
        # schedule (anneals 1 -> 0); a buffer so that checkpoints resume the schedule exactly.
        self.register_buffer("attn_mask_probs", torch.ones(config.num_joint_blocks))
        self._checkpoint_decision: bool | None = None

    @property
    def first_joint_block(self) -> int:
        """Index of the first backbone block that also processes the queries."""
        return len(self.backbone.blocks) - self.config.num_joint_blocks

    def forward(self, images: Tensor, factored_masks: bool | None = None) -> EoMTOutput:
        """Images (B, 3, H, W), normalised, H and W multiples of 16. factored_masks: return the
        mask logits as `mask_projections` (default in training) or dense as `mask_logits`
        (default in eval mode)."""
        backbone = self.backbone
        x, grid = backbone.prepare_tokens(images)
        patch_rope = backbone.rope(*grid)
        rope = rope_for_tokens(patch_rope, backbone.num_prefix_tokens)
        # Read the schedule once per step (one host sync) rather than once per block.
        probs = self.attn_mask_probs.tolist() if self.training else []
        recompute = self._recompute(images)
        class_logits: list[Tensor] = []
        masks: list[MaskProjection] = []
        for index, block in enumerate(backbone.blocks):
            attn_mask = None
            if index == self.first_joint_block:
                queries = self.queries.weight.to(x.dtype)
                x = torch.cat((queries.expand(x.shape[0], -1, -1), x), dim=1)
                rope = rope_for_tokens(
                    patch_rope, backbone.num_prefix_tokens + self.config.num_queries
                )
            if self.training and index >= self.first_joint_block:
                block_class, block_mask = self._predict(backbone.norm(x), grid, recompute)
                class_logits.append(block_class)
                masks.append(block_mask)
                prob = probs[index - self.first_joint_block]
                if prob > 0:
                    attn_mask = self._attention_mask(block_mask, prob, grid, x.shape[1])
            x = block(x, rope, attn_mask)
        final_class, final_mask = self._predict(backbone.norm(x), grid, recompute)
        class_logits.append(final_class)
        masks.append(final_mask)
        if self.training if factored_masks is None else factored_masks:
            return EoMTOutput(class_logits, mask_logits=[], mask_projections=masks)
        return EoMTOutput(class_logits, [mask.logits() for mask in masks], mask_projections=[])

    def _predict(
        self, x: Tensor, grid: tuple[int, int], recompute: Recompute = "nothing"
    ) -> tuple[Tensor, MaskProjection]:
        """Class logits (B, Q, C+1) and the mask projection (features at 4*gh x 4*gw) from
        normalised tokens; `recompute`: what of the upscaler backward recomputes."""
        num_queries = self.config.num_queries
        queries = x[:, :num_queries]
        patches = x[:, num_queries + self.backbone.num_prefix_tokens :]
        if recompute == "upscaler":
            features = checkpoint(self._pixel_features, patches, grid, use_reentrant=False)
        else:
            features = self._pixel_features(patches, grid, recompute_tails=recompute == "tails")
        return self.class_head(queries), MaskProjection(self.mask_head(queries), features)

    def _pixel_features(
        self, patches: Tensor, grid: tuple[int, int], recompute_tails: bool = False
    ) -> Tensor:
        # (B, gh, gw, D) viewed as (B, D, gh, gw) is a channels-last map without a copy; the
        # depthwise convolutions of the upscaler run several times faster in that layout.
        features = patches.unflatten(1, grid).permute(0, 3, 1, 2)
        features = features.contiguous(memory_format=torch.channels_last)
        for block in self.upscale:
            features = block(features, recompute_tail=recompute_tails)
        return features

    def _recompute(self, images: Tensor) -> Recompute:
        """What this forward's backward recomputes (see `activation_checkpointing`)."""
        if not (self.training and torch.is_grad_enabled()) or not self.activation_checkpointing:
            return "nothing"
        return "upscaler" if self._checkpointing(images) else "tails"

    def _checkpointing(self, images: Tensor) -> bool:
        """Whether this training forward checkpoints (see `activation_checkpointing`)."""
        if self.activation_checkpointing != "auto":
            return bool(self.activation_checkpointing)
        if self._checkpoint_decision is None:
            needed = checkpointed_bytes(self, images.shape[0], (images.shape[-2], images.shape[-1]))
            available = _available_memory(images.device)
            self._checkpoint_decision = (
                available is not None and needed > CHECKPOINT_MEMORY_SHARE * available
            )
            logger.info(
                "Activation checkpointing of the whole upscaler %s: it keeps ~%.2f GiB "
                "per step, %s GiB available.",
                "on" if self._checkpoint_decision else "off",
                needed / 2**30,
                "unknown" if available is None else f"{available / 2**30:.1f}",
            )
        return self._checkpoint_decision

    @torch.no_grad()
    def _attention_mask(
        self, masks: MaskProjection, prob: float, grid: tuple[int, int], num_tokens: int
    ) -> Tensor:
        """Bool (B, 1, N, N), True = may attend: each query sees only the patches its predicted
        mask covers (logit > 0 on the patch grid: the mask logits resized bilinearly, here as
        the projection of the resized features), except that each (image, query) keeps this
        restriction only with probability `prob`. All other token pairs stay unrestricted."""
        batch, num_queries = masks.embeddings.shape[:2]
        features = F.interpolate(masks.features, size=grid, mode="bilinear", align_corners=False)
        blocked = MaskProjection(masks.embeddings, features).logits().flatten(2) <= 0
        keep = torch.rand(batch, num_queries, 1, device=blocked.device) < prob
        allowed = torch.ones(batch, num_tokens, num_tokens, dtype=torch.bool, device=blocked.device)
        patch_start = num_queries + self.backbone.num_prefix_tokens
        allowed[:, :num_queries, patch_start:] = ~(blocked & keep)
        return allowed[:, None]


def checkpointed_bytes(network: EoMT, batch: int, image_size: tuple[int, int]) -> int:
    """Activation bytes that checkpointing saves in one training forward of `batch` images:
    per prediction and upscale block the outputs of its transposed convolution, GELU, depthwise
    convolution and LayerNorm (four maps of D channels at the block's resolution), except the
    last LayerNorm's, the pixel features the loss keeps, plus the block's weight in matmul
    form (D x 4D)."""
    dim = network.backbone.embed_dim
    element = next(network.parameters()).element_size()
    pixels = [
        (image_size[0] // PATCH_SIZE * 2**level) * (image_size[1] // PATCH_SIZE * 2**level)
        for level in range(1, len(network.upscale) + 1)
    ]
    maps = batch * dim * (4 * sum(pixels) - pixels[-1])
    weights = len(pixels) * dim * 4 * dim
    return (network.config.num_joint_blocks + 1) * (maps + weights) * element


def _available_memory(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or the host's available memory (Linux, else the free
    physical pages); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


__all__ = ["EoMT", "EoMTConfig", "EoMTOutput", "MaskProjection", "checkpointed_bytes"]
