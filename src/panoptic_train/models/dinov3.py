"""DINOv3 Vision Transformer with Meta's architecture and parameter layout.

The module names follow Meta's `.pth` checkpoints (`cls_token`, `storage_tokens`,
`patch_embed.proj`, `blocks.N.attn.qkv`, `ls1.gamma`, `mlp.fc1` / `mlp.w1`, `norm`), so
Meta's files load without renaming and other layouts convert onto this one (`convert.py`).

The pieces are exposed individually (`prepare_tokens`, `rope`, `blocks`, `norm`) because EoMT runs
the blocks one by one with extra query tokens and an attention mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_train.errors import ConfigError
from panoptic_train.models.backbones import DinoV3Arch

PATCH_SIZE = 16
NUM_REGISTERS = 4
ROPE_BASE = 100.0
LAYER_NORM_EPS = 1e-5
LAYER_SCALE_INIT = 1e-5


class PatchEmbed(nn.Module):
    """Non-overlapping 16x16 patches projected to the embedding width."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images)


class RopeEmbedding(nn.Module):
    """Axial rotary position embedding over the patch grid (no learnable weights).

    A quarter of each head's channels encodes y, a quarter x (then repeated for the rotate-half
    pairing). During training the coordinates are scaled by one log-uniform factor in
    [1/rescale, rescale] per forward pass, as DINOv3 was pretrained; evaluation uses the exact grid.
    """

    periods: Tensor

    def __init__(self, head_dim: int, rescale: float | None = 2.0) -> None:
        super().__init__()
        if head_dim % 4 != 0:
            raise ConfigError(f"RoPE needs a head dimension divisible by 4, got {head_dim}.")
        self.rescale = rescale
        exponents = torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 4)
        # Not learned, but saved: Meta's checkpoints carry bfloat16-rounded periods, and keeping
        # them reproduces those models exactly; other sources get these float32 values.
        self.register_buffer("periods", ROPE_BASE**exponents)

    def forward(self, grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
        """Return (sin, cos), each (grid_h * grid_w, head_dim) in float32, rows in raster order."""
        device = self.periods.device
        coords_h = torch.arange(0.5, grid_h, device=device, dtype=torch.float32) / grid_h
        coords_w = torch.arange(0.5, grid_w, device=device, dtype=torch.float32) / grid_w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)
        coords = 2.0 * coords.flatten(0, 1) - 1.0  # patch centres in [-1, 1], (HW, 2)
        if self.training and self.rescale is not None:
            log_range = math.log(self.rescale)
            factor = torch.empty((), device=device).uniform_(-log_range, log_range).exp()
            coords = coords * factor
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def rope_for_tokens(rope: tuple[Tensor, Tensor], num_prefix: int) -> tuple[Tensor, Tensor]:
    """`apply_rope`'s tables for `num_prefix` tokens followed by the patches of `rope` (sin, cos).

    Patch tokens always come last; CLS, registers and any tokens put in front (EoMT queries)
    get angle 0, i.e. keep their content. The rotate-half pairing's sign is folded into sin, so
    that the rotation is a few elementwise ops over all tokens (no slicing of the patches).
    """
    sin, cos = rope
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    # Concatenated rather than F.pad: the ONNX exporter writes pads with a reversed slice, which
    # its constant folding skips (with a warning at every export).
    prefix = (num_prefix, sin.shape[-1])
    return torch.cat((sin.new_zeros(prefix), sin)), torch.cat((cos.new_ones(prefix), cos))


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate `x` (B, heads, N, head_dim) by the per-token tables (N, head_dim) of
    `rope_for_tokens`, in float32 as in Meta's code."""
    rotated = x.float()
    first, second = rotated.chunk(2, dim=-1)
    return (rotated * cos + torch.cat((second, first), dim=-1) * sin).to(x.dtype)


class KeyMaskedBiasLinear(nn.Linear):
    """Fused q/k/v projection whose key bias is multiplied by zero.

    The key bias only shifts every score of a query by the same amount, so Meta trains with it
    masked; the `bias_mask` buffer is part of their checkpoints.
    """

    bias_mask: Tensor

    def __init__(self, embed_dim: int) -> None:
        super().__init__(embed_dim, 3 * embed_dim, bias=True)
        mask = torch.ones(3 * embed_dim)
        mask[embed_dim : 2 * embed_dim] = 0
        self.register_buffer("bias_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on patch tokens, through scaled_dot_product_attention."""

    def __init__(self, embed_dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv: nn.Linear = (
            KeyMaskedBiasLinear(embed_dim)
            if qkv_bias
            else nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        )
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        attn_mask: Tensor | None,
        scale: LayerScale,
    ) -> Tensor:
        """`rope`: (sin, cos) of every token, from `rope_for_tokens`; `scale`: the branch's
        LayerScale, applied with the output projection."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q = apply_rope(q, *rope)
        k = apply_rope(k, *rope)
        # A copy of v, not a view: backward then keeps it instead of the whole qkv output.
        out = F.scaled_dot_product_attention(q, k, v.contiguous(), attn_mask=attn_mask)
        return scale.linear(self.proj, out.transpose(1, 2).reshape(batch, tokens, dim))


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, applied by its last linear layer:
    (x W^T + b) * gamma as x (gamma W)^T + gamma b. Backward then keeps only that layer's input,
    not its output too, and no elementwise pass over the tokens is made (exported graphs fold
    the product into the weights)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def linear(self, layer: nn.Linear, x: Tensor) -> Tensor:
        """`layer(x) * gamma`."""
        bias = None if layer.bias is None else layer.bias * self.gamma
        return F.linear(x, layer.weight * self.gamma[:, None], bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, scale: LayerScale) -> Tensor:
        return scale.linear(self.fc2, F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), Meta's naming."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, scale: LayerScale) -> Tensor:
        return scale.linear(self.w3, F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, arch: DinoV3Arch) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, arch.num_heads, arch.qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp: Mlp | SwiGLU = (
            SwiGLU(dim, arch.ffn_hidden) if arch.swiglu else Mlp(dim, arch.ffn_hidden)
        )
        self.ls2 = LayerScale(dim)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], attn_mask: Tensor | None = None
    ) -> Tensor:
        """`rope`: from `rope_for_tokens`; `attn_mask`: None, or bool (B, 1, N, N) with True where
        attention is allowed."""
        x = x + self.attn(self.norm1(x), rope, attn_mask, self.ls1)
        return x + self.mlp(self.norm2(x), self.ls2)


class DinoV3ViT(nn.Module):
    """DINOv3 ViT backbone: tokens [CLS, 4 registers, patches] through `depth` blocks and a norm.

    Args:
        arch: the size (`backbones.BACKBONES[name].arch`).
        rope_rescale: training-time RoPE coordinate rescale range (None disables it).
    """

    def __init__(self, arch: DinoV3Arch, rope_rescale: float | None = 2.0) -> None:
        super().__init__()
        self.arch = arch
        dim = self.arch.embed_dim
        self.embed_dim = dim
        self.num_prefix_tokens = 1 + NUM_REGISTERS
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, NUM_REGISTERS, dim))
        self.rope_embed = RopeEmbedding(self.arch.head_dim, rope_rescale)
        self.blocks = nn.ModuleList(Block(self.arch) for _ in range(self.arch.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init as in Meta's code (used when no pretrained weights are loaded)."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def prepare_tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Embed images (B, 3, H, W), H and W multiples of 16, into [CLS, registers, patches].

        Returns the tokens (B, 5 + H/16 * W/16, D) and the patch grid (H/16, W/16).
        """
        height, width = images.shape[-2:]
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not exporting and (height % PATCH_SIZE or width % PATCH_SIZE):
            raise ConfigError(
                f"Image size {height}x{width} is not a multiple of the patch size {PATCH_SIZE}; "
                "resize or pad the images so that both sides are multiples of 16."
            )
        patches = self.patch_embed(images)
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        prefix = torch.cat((self.cls_token, self.storage_tokens), dim=1).to(patches.dtype)
        return torch.cat((prefix.expand(batch, -1, -1), patches), dim=1), grid

    def rope(self, grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
        """(sin, cos) for a patch grid; rescaled randomly while training. The blocks take them
        extended to the prefix tokens (`rope_for_tokens`)."""
        return self.rope_embed(grid_h, grid_w)

    def forward(self, images: Tensor) -> Tensor:
        """Normalised tokens (B, 5 + num_patches, D): CLS, registers, then patches row by row."""
        x, grid = self.prepare_tokens(images)
        rope = rope_for_tokens(self.rope(*grid), self.num_prefix_tokens)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)
