"""Optimiser, learning-rate schedule and masked-attention annealing of the EoMT recipe.

- AdamW over parameter groups with layer-wise lr decay: backbone block i gets
  lr * llrd ** (depth - 1 - i), the joint blocks (which also process the queries) use
  `llrd_joint_blocks` instead (1.0 = not decayed, as EoMT does for DINOv3), the patch embedding
  and tokens follow block 0, the final norm and the new modules (queries, heads, upscaler) get lr.
- Two-stage warmup then polynomial decay: the new modules warm up linearly over
  `warmup_steps[0]` while the backbone is frozen (lr 0); then the backbone warms up over
  `warmup_steps[1]`; each part then decays with (1 - progress) ** power to the end of training.
- Masked attention: joint block k keeps its attention masks with probability
  (1 - progress) ** power over its own window of steps, then never again.

The schedule is a pure function of the step, so resuming only needs the step number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from panoptic_train.models.eomt import EoMT

# The EoMT recipe for COCO: 90 000 steps at batch 16 with (2000, 3000) warmup steps.
REFERENCE_STEPS = 90_000
REFERENCE_WARMUP_STEPS = (2000, 3000)
REFERENCE_BATCH_SIZE = 16
# The learning rate at batch 16: EoMT's for a backbone that starts from trained weights, and
# ours for a randomly initialised one (`default_lr`).
REFERENCE_LR = 2e-4
RANDOM_BACKBONE_LR = 8e-4


def default_lr(random_backbone: bool) -> float:
    """The batch-16 learning rate that `model_args["lr"]="auto"` stands for.

    EoMT's 2e-4 fine-tunes a trained backbone without destroying its features; a random backbone
    has none to protect. 4x the rate reaches PQ 50 in half the steps and a higher PQ after 300
    on the synthetic benchmark (benchmarks/RESULTS.md, "Training quality").
    """
    return RANDOM_BACKBONE_LR if random_backbone else REFERENCE_LR


def scaled_lr(lr: float, global_batch_size: int) -> float:
    """Square-root scaling of a batch-16 learning rate to another global batch size."""
    return lr * math.sqrt(global_batch_size / REFERENCE_BATCH_SIZE)


def default_warmup_steps(total_steps: int) -> tuple[int, int]:
    """The recipe's (2000, 3000) warmup, shrunk in proportion for runs shorter than 90 000 steps
    (never below one step each) so that short fine-tuning runs are not all warmup."""
    fraction = min(1.0, total_steps / REFERENCE_STEPS)
    head, backbone = REFERENCE_WARMUP_STEPS
    return max(1, round(head * fraction)), max(1, round(backbone * fraction))


def default_annealing_windows(
    num_joint_blocks: int, total_steps: int, first_block_end: int
) -> list[tuple[int, int]]:
    """Per joint block the (start, end) steps over which its attention masks fade out.

    The first joint block is special for DINOv3: its masks fade out from step 0 to
    `first_block_end`, the end of the backbone's warmup (not a phase of EoMT's schedule; the
    DINOv2 configs anneal it over a phase like the others). The later blocks follow EoMT's COCO
    configs: with three joint blocks (ViT-S/B, 24 epochs) block 1 anneals over 10/24–14/24 of
    training and block 2 over 16/24–20/24; otherwise training is cut into num_joint_blocks + 2
    equal phases, block k >= 1 anneals during phase k + 1 and the last phase has no masking.
    """
    if num_joint_blocks == 3:
        fractions = [(10 / 24, 14 / 24), (16 / 24, 20 / 24)]
    else:
        num_phases = num_joint_blocks + 2
        fractions = [
            ((k + 1) / num_phases, (k + 2) / num_phases) for k in range(1, num_joint_blocks)
        ]
    windows = [(0, min(first_block_end, total_steps))]
    windows += [(round(start * total_steps), round(end * total_steps)) for start, end in fractions]
    return windows


def attn_mask_probability(step: int, window: tuple[int, int], power: float) -> float:
    """1 before the window, (1 - progress) ** power inside it, 0 from its end on."""
    start, end = window
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** power


def set_attn_mask_probs(
    attn_mask_probs: torch.Tensor, step: int, windows: Sequence[tuple[int, int]], power: float
) -> None:
    """Write this step's masking probability of every joint block into the model's buffer."""
    values = [attn_mask_probability(step, window, power) for window in windows]
    attn_mask_probs.copy_(torch.tensor(values, dtype=attn_mask_probs.dtype))


@dataclass(frozen=True)
class TwoStageWarmupPoly:
    """Learning-rate multipliers per optimiser step (0-based index of the step being taken)."""

    total_steps: int
    warmup_steps: tuple[int, int]
    power: float = 0.9

    def factor(self, step: int, is_backbone: bool) -> float:
        head_warmup, backbone_warmup = self.warmup_steps
        if not is_backbone:
            return self._warmup_then_decay(step, start=0, warmup=head_warmup)
        if step < head_warmup:
            return 0.0
        return self._warmup_then_decay(step, start=head_warmup, warmup=backbone_warmup)

    def _warmup_then_decay(self, step: int, start: int, warmup: int) -> float:
        offset = step - start
        if offset < warmup:
            return (offset + 1) / warmup
        decay_steps = max(1, self.total_steps - start - warmup)
        progress = min(1.0, (offset - warmup) / decay_steps)
        return (1.0 - progress) ** self.power


def apply_learning_rates(
    optimizer: torch.optim.Optimizer, schedule: TwoStageWarmupPoly, step: int
) -> None:
    """Set every group's lr for `step` from its `base_lr` and whether it belongs to the backbone."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * schedule.factor(step, group["is_backbone"])


def build_param_groups(
    model: EoMT, *, lr: float, llrd: float, llrd_joint_blocks: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups for an EoMT model (see the module docstring for the multipliers).

    Groups carry `name`, `base_lr` and `is_backbone` besides the optimiser's own keys; frozen
    parameters (requires_grad False) are left out.
    """
    backbone = model.backbone
    blocks = list(backbone.blocks)
    depth = len(blocks)
    first_joint = depth - model.config.num_joint_blocks

    def block_multiplier(index: int) -> float:
        decay = llrd_joint_blocks if index >= first_joint else llrd
        return decay ** (depth - 1 - index)

    assigned: set[int] = set()
    groups: list[dict[str, Any]] = []

    def add(name: str, params: Sequence[nn.Parameter], multiplier: float, is_backbone: bool):
        trainable = [p for p in params if p.requires_grad and id(p) not in assigned]
        assigned.update(id(p) for p in trainable)
        if trainable:
            groups.append(
                {
                    "name": name,
                    "params": trainable,
                    "base_lr": lr * multiplier,
                    "lr": lr * multiplier,
                    "weight_decay": weight_decay,
                    "is_backbone": is_backbone,
                }
            )

    for index, block in enumerate(blocks):
        add(f"backbone.blocks.{index}", list(block.parameters()), block_multiplier(index), True)
    add("backbone.norm", list(backbone.norm.parameters()), 1.0, True)
    add("backbone.embeddings", list(backbone.parameters()), block_multiplier(0), True)
    add("heads", list(model.parameters()), 1.0, False)
    return groups


def build_optimizer(
    model: EoMT,
    *,
    lr: float,
    llrd: float,
    llrd_joint_blocks: float,
    weight_decay: float,
    eps: float = 1e-12,
) -> torch.optim.AdamW:
    """AdamW over `build_param_groups` (lrs are then driven by `apply_learning_rates`).

    `eps` sits far below the clipped gradients: clipping the global norm to 0.01 leaves the
    weights inside a block whose LayerScale is still near its 1e-5 init (a randomly initialised
    or small backbone) with gradients of about 1e-10 per element, and with EoMT's eps of 1e-8
    Adam would move them at a few percent of their learning rate.
    """
    groups = build_param_groups(
        model, lr=lr, llrd=llrd, llrd_joint_blocks=llrd_joint_blocks, weight_decay=weight_decay
    )
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, eps=eps)
