"""Checking an exported graph against the PyTorch model it came from, on the same images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from panoptic_train._types import ExportPrecision
from panoptic_train.export.exportable import ExportableModel
from panoptic_train.export.metadata import LOGIT_OUTPUTS

# The largest |exported - PyTorch fp32| allowed on each logits output, relative to
# max(1, max |PyTorch logit|). fp32 graphs agree to ~1e-6 in onnxruntime, fp16 ones to ~1e-3.
TOLERANCE: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2}
# Graphs with the merge baked in: share of pixels whose (category, segment) must equal the
# shared merge run on the graph's own logits (float rounding may flip rare near-tie pixels).
MIN_PIXEL_AGREEMENT = 0.999
_SEED = 0


@dataclass(frozen=True)
class VerificationReport:
    """An exported graph (run by `engine`) against PyTorch fp32 on the same random images.

    max_errors / tolerances: per logits output, the largest absolute difference and its bound.
    pixel_agreement: graphs with the merge baked in only, see MIN_PIXEL_AGREEMENT.
    """

    engine: str
    precision: ExportPrecision
    batch_size: int
    max_errors: dict[str, float]
    tolerances: dict[str, float]
    pixel_agreement: float | None = None

    @property
    def passed(self) -> bool:
        within = all(self.max_errors[name] <= self.tolerances[name] for name in self.max_errors)
        merged = self.pixel_agreement is None or self.pixel_agreement >= MIN_PIXEL_AGREEMENT
        return within and merged

    def __str__(self) -> str:
        parts = [
            f"{name} max abs error {self.max_errors[name]:.3g} (tolerance "
            f"{self.tolerances[name]:.3g})"
            for name in self.max_errors
        ]
        if self.pixel_agreement is not None:
            parts.append(
                f"merged pixels agreeing {self.pixel_agreement:.4%} "
                f"(at least {MIN_PIXEL_AGREEMENT:.1%})"
            )
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"Verification {verdict} ({self.engine} {self.precision} vs PyTorch fp32, batch of "
            f"{self.batch_size}): " + "; ".join(parts)
        )


def example_images(
    count: int, image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Random images normalised like real ones, the same on every call."""
    generator = torch.Generator().manual_seed(_SEED)
    pixels = torch.rand(count, 3, *image_size, generator=generator)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def compare_logits(
    model: ExportableModel,
    images: torch.Tensor,
    outputs: Mapping[str, np.ndarray],
    precision: ExportPrecision,
) -> tuple[dict[str, float], dict[str, float]]:
    """Max abs errors of `outputs` against the model's fp32 network on `images`, and bounds.

    The reference runs on the CPU: CUDA convolutions (and matmuls, if enabled) default to TF32,
    whose rounding alone could approach the fp32 tolerance.
    """
    network = model.network
    if next(network.parameters()).device.type != "cpu":
        network = model.to_exported().build_network()
    with torch.inference_mode():
        reference = network(images.cpu().float())
    expected = {
        LOGIT_OUTPUTS[0]: reference.class_logits[-1].float().cpu().numpy(),
        LOGIT_OUTPUTS[1]: reference.mask_logits[-1].float().cpu().numpy(),
    }
    rtol = TOLERANCE[precision]
    errors = {name: float(np.abs(outputs[name] - expected[name]).max()) for name in expected}
    bounds = {name: rtol * max(1.0, float(np.abs(want).max())) for name, want in expected.items()}
    return errors, bounds
