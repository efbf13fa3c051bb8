"""`visualize` on a hand-built result; a draw_segmentation_masks snippet on `predict` output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.inference.visualize import visualize

GRAY = 100


def _hand_built() -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """40x60 gray image: left half segment 0 (category 1), right-top segment 1 (category 10),
    right-bottom void."""
    image = np.full((40, 60, 3), GRAY, dtype=np.uint8)
    masks = torch.full((40, 60, 2), -1, dtype=torch.int64)
    masks[:, :30] = torch.tensor([1, 0])
    masks[:20, 30:] = torch.tensor([10, 1])
    result = {
        "masks": masks,
        "segment_ids": torch.tensor([0, 1]),
        "scores": torch.tensor([0.9, 0.95]),
        "labels": torch.tensor([1, 10]),
    }
    return image, result


def test_overlay_colours_segments_keeps_void_and_draws_borders() -> None:
    image, result = _hand_built()
    overlay = visualize(image, result, labels=False)
    assert isinstance(overlay, Image.Image) and overlay.mode == "RGB"
    assert overlay.size == (60, 40)
    pixels = np.asarray(overlay)
    assert (pixels[21:, 31:] == GRAY).all()  # void keeps the image
    interior = [pixels[10:30, 5:25], pixels[3:15, 35:55]]
    colours = [tuple(region[0, 0]) for region in interior]
    for region, colour in zip(interior, colours, strict=True):
        assert (region == colour).all() and colour != (GRAY,) * 3
    assert colours[0] != colours[1]
    # borders: the column where segment 0 meets segment 1, and segment 1's edge towards void
    assert (pixels[:20, 29] == 255).all()
    assert (pixels[19, 30:] == 255).all()
    no_borders = np.asarray(visualize(image, result, labels=False, borders=False))
    assert (no_borders[:20, 29] == no_borders[10, 10]).all()


def test_class_names_are_written_inside_their_segments() -> None:
    image, result = _hand_built()
    plain = np.asarray(visualize(image, result, labels=False))
    named = np.asarray(visualize(image, result, {1: "disk", 10: "sky"}))
    changed = (plain != named).any(axis=2)
    assert changed[:, :30].any() and changed[:20, 30:].any()
    assert not changed[21:, 31:].any()  # nothing is written on void
    by_id = np.asarray(visualize(image, result))
    assert (by_id != named).any()  # without names the category ids are written instead


def test_numpy_results_and_size_mismatches() -> None:
    image, result = _hand_built()
    as_numpy = {key: value.numpy() for key, value in result.items()}
    assert np.array_equal(
        np.asarray(visualize(image, as_numpy)), np.asarray(visualize(image, result))
    )
    with pytest.raises(ValueError, match="pass the image the result was predicted from"):
        visualize(image[:20], result)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_the_spec_matplotlib_snippet_runs_on_predict_output(
    tiny_model: PanopticSegmentationModel, tmp_path: Path
) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    path = tmp_path / "image.jpg"
    Image.fromarray(rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)).save(path)
    results = tiny_model.predict(str(path), threshold=0.0, overlap_threshold=0.0)
    assert results["segment_ids"].numel() > 0

    # --- torchvision's draw_segmentation_masks + matplotlib, as users write it (README) ---
    import matplotlib.pyplot as plt
    from torchvision.io import read_image
    from torchvision.utils import draw_segmentation_masks

    image = read_image(str(path))
    masks = results["masks"]
    segment_ids = results["segment_ids"]
    masks = torch.stack(
        [masks[..., 1] == -1] + [masks[..., 1] == segment_id for segment_id in segment_ids]
    )
    colors = [(0, 0, 0)] + [
        [int(color * 255) for color in plt.cm.tab20c(i / len(segment_ids))[:3]]
        for i in range(len(segment_ids))
    ]
    image_with_masks = draw_segmentation_masks(image, masks, colors=colors, alpha=1.0)
    plt.imshow(image_with_masks.permute(1, 2, 0))
    # --- end of snippet ---

    plt.savefig(tmp_path / "figure.png")
    plt.close("all")
    assert image_with_masks.shape == (3, 36, 52)
    # every pixel is covered by exactly one of the stacked masks (void or one segment)
    assert torch.equal(masks.sum(dim=0), torch.ones(36, 52, dtype=torch.int64))
