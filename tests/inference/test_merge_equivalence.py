"""The panoptic merge (decided per mask-grid cell, `runtime._cell_assign`) against the direct
merge written out here: every confident query's probability at every output pixel, then
Mask2Former's per-query loop. Equal on every pixel, for torch tensors and numpy arrays, on random
logits of many shapes and scales (ties, saturation, non-finite values, tiny and large images)
and on a network's logits."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from panoptic_train.runtime import _cell_assign, postprocess
from panoptic_train.runtime.array_ops import array_ops
from panoptic_train.runtime.postprocess import PostprocessConfig, panoptic_postprocess

from .conftest import tiny_network


def _taps(n_out: int, resized: int, inp: int, n_in: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (align_corners=False, border clamp) from the grid to original pixels."""
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (resized * n_in / (n_out * inp))
    source = np.clip(centres - 0.5, 0, n_in - 1)
    low = np.floor(source).astype(np.int64)
    return low, np.minimum(low + 1, n_in - 1), (source - low).astype(np.float32)


def _reference(
    class_logits: Any,
    mask_logits: Any,
    is_thing: list[bool],
    input_size: tuple[int, int],
    resized: tuple[int, int],
    orig: tuple[int, int],
    config: PostprocessConfig,
) -> dict[str, Any]:
    """The direct merge of one image (batch of 1), with the backend's own lerp and sigmoid."""
    ops = array_ops(class_logits)
    probs = ops.softmax(class_logits[0], axis=-1)
    labels = probs.argmax(axis=-1)
    scores = ops.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    kept = [
        k
        for k in range(probs.shape[0])
        if int(labels[k]) != probs.shape[1] - 1 and float(scores[k]) > config.threshold
    ]
    height, width = orig
    seg_map = ops.full((height, width), -1, "int64", like=class_logits)
    class_map = ops.full((height, width), -1, "int64", like=class_logits)
    segments: list[tuple[int, float]] = []
    if kept:
        low_y, high_y, frac_y = (
            ops.asarray(a, like=class_logits)
            for a in _taps(height, resized[0], input_size[0], mask_logits.shape[-2])
        )
        low_x, high_x, frac_x = (
            ops.asarray(a, like=class_logits)
            for a in _taps(width, resized[1], input_size[1], mask_logits.shape[-1])
        )
        maps = []
        for k in kept:
            grid = mask_logits[0, k]
            rows = ops.lerp(grid[low_y], grid[high_y], frac_y[:, None])
            maps.append(ops.sigmoid(ops.lerp(rows[:, low_x], rows[:, high_x], frac_x[None, :])))
        prob = ops.stack(maps, axis=0)  # (K, H0, W0)
        weighted = prob * ops.stack([scores[k] for k in kept], axis=0)[:, None, None]
        assign = weighted.argmax(axis=0)
        own = prob >= config.mask_threshold
        stuff_segment: dict[int, int] = {}
        for position, k in enumerate(kept):
            won = assign == position
            mask = won & own[position]
            own_area, assigned, final = int(own[position].sum()), int(won.sum()), int(mask.sum())
            if own_area == 0 or final == 0 or assigned / own_area < config.overlap_threshold:
                continue
            label = int(labels[k])
            if not is_thing[label] and label in stuff_segment:
                segment = stuff_segment[label]
            else:
                segment = len(segments)
                segments.append((label, float(scores[k])))
                if not is_thing[label]:
                    stuff_segment[label] = segment
            seg_map[mask] = segment
            class_map[mask] = label
    return {
        "masks": ops.stack([class_map, seg_map], axis=-1),
        "labels": [label for label, _ in segments],
        "scores": [score for _, score in segments],
    }


def _assert_same(
    class_logits: Any,
    mask_logits: Any,
    is_thing: list[bool],
    input_size: tuple[int, int],
    resized: tuple[int, int],
    orig: tuple[int, int],
    config: PostprocessConfig,
) -> int:
    """Assert the merge equals the reference for both backends; the number of segments."""
    for backend in ("numpy", "torch"):
        if backend == "torch":
            class_logits, mask_logits = (
                torch.from_numpy(class_logits),
                torch.from_numpy(mask_logits),
            )
        expected = _reference(
            class_logits, mask_logits, is_thing, input_size, resized, orig, config
        )
        (result,) = panoptic_postprocess(
            class_logits, mask_logits, is_thing, input_size, [resized], [orig], config
        )
        assert type(result["masks"]) is type(class_logits)
        mismatched = int((result["masks"] != expected["masks"]).any(axis=-1).sum())
        assert mismatched == 0, f"{backend}: {mismatched} of {orig[0] * orig[1]} pixels differ"
        assert result["labels"].tolist() == expected["labels"], backend
        assert result["scores"].tolist() == expected["scores"], backend
    return len(expected["labels"])


def _mask_logits(rng: np.random.Generator, queries: int, grid: tuple[int, int]) -> np.ndarray:
    """Mask logits like a network's: blobs (discs of random radius and steepness), smooth noise,
    or noise rounded to integers (exact ties between queries)."""
    kind = rng.integers(3)
    h, w = grid
    if kind == 0:
        y, x = np.mgrid[0:h, 0:w]
        centres = rng.uniform(0, 1, (queries, 2)) * (h, w)
        radii = rng.uniform(0.5, max(h, w) / 2, (queries, 1, 1))
        distance = np.hypot(y - centres[:, 0, None, None], x - centres[:, 1, None, None])
        logits = (radii - distance) * rng.choice([0.5, 2.0, 8.0])
    else:
        coarse = rng.normal(size=(queries, h // 3 + 2, w // 3 + 2))
        logits = np.kron(coarse, np.ones((3, 3)))[:, :h, :w] * rng.choice([1.0, 4.0, 30.0])
        if kind == 2:
            logits = np.round(logits)
    return logits[None].astype(np.float32)


def _class_logits(rng: np.random.Generator, queries: int, classes: int) -> np.ndarray:
    """Confident and unconfident queries, some with identical rows (exactly equal scores)."""
    logits = rng.normal(size=(queries, classes + 1)) * rng.choice([1.0, 6.0])
    logits[rng.uniform(size=queries) < 0.7, rng.integers(classes)] += 8.0
    duplicates = rng.integers(queries, size=queries // 2)
    logits[rng.integers(queries, size=queries // 2)] = logits[duplicates]
    return logits[None].astype(np.float32)


def test_random_logits_of_many_shapes_and_thresholds() -> None:
    segments = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        queries, classes = int(rng.integers(1, 25)), int(rng.integers(1, 6))
        grid = (int(rng.integers(1, 14)), int(rng.integers(1, 14)))
        input_size = (4 * grid[0], 4 * grid[1])
        resized = tuple(int(rng.integers(1, side + 1)) for side in input_size)
        orig = tuple(int(rng.choice([1, 2, 3, rng.integers(1, 90)])) for _ in range(2))
        config = PostprocessConfig(
            threshold=float(rng.choice([0.0, 0.3, 0.8])),
            mask_threshold=float(rng.choice([0.0, 0.3, 0.5, 0.9, 1.0])),
            overlap_threshold=float(rng.choice([0.0, 0.5, 0.8, 1.0])),
        )
        is_thing = [bool(flag) for flag in rng.integers(0, 2, classes)]
        segments += _assert_same(
            _class_logits(rng, queries, classes),
            _mask_logits(rng, queries, grid),
            is_thing,
            input_size,
            resized,
            orig,
            config,
        )
    assert segments > 80  # real merges were compared, not empty maps


def test_saturated_queries_of_equal_scores_tie_as_directly() -> None:
    """Overlapping discs whose sigmoids are exactly 1 in float32 and whose scores are equal:
    the first query wins each tie, as the direct merge's argmax decides."""
    rng = np.random.default_rng(0)
    class_logits = np.full((1, 30, 4), -5.0, dtype=np.float32)
    class_logits[0, :, 0] = 8.0  # 30 queries of one class and one score
    y, x = np.mgrid[0:40, 0:40]
    centres = rng.uniform(0, 40, (30, 2))
    radii = rng.uniform(5, 20, (30, 1, 1))
    masks = radii - np.hypot(y - centres[:, 0, None, None], x - centres[:, 1, None, None])
    config = PostprocessConfig(overlap_threshold=0.0)
    segments = _assert_same(
        class_logits, (masks * 4)[None].astype(np.float32), [True, False, True], (160, 160),
        (120, 160), (120, 160), config,
    )  # fmt: skip
    assert segments > 10


def test_non_finite_logits_give_the_direct_result() -> None:
    rng = np.random.default_rng(1)
    class_logits = _class_logits(rng, 6, 3)
    class_logits[0, :, 0] = 9.0
    masks = _mask_logits(rng, 6, (8, 8))
    masks[0, 1, 2, 3], masks[0, 2, 5, 5], masks[0, 3, 0, :] = np.nan, np.inf, -np.inf
    for threshold in (0.0, 0.5):
        config = PostprocessConfig(mask_threshold=threshold, overlap_threshold=0.0)
        with np.errstate(invalid="ignore"):  # inf - inf in numpy's interpolation
            _assert_same(
                class_logits, masks, [True, False, True], (32, 32), (32, 32), (40, 33), config
            )


def test_a_large_image_merged_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    class_logits = _class_logits(rng, 5, 3)
    class_logits[0, :, 1] = 9.0
    masks = _mask_logits(rng, 5, (40, 30))
    masks[0] = np.round(masks[0] * 2) / 2
    config = PostprocessConfig(overlap_threshold=0.3)
    whole = (1500, 1100)
    _assert_same(class_logits, masks, [True, False, True], (160, 120), (160, 120), whole, config)
    monkeypatch.setattr(postprocess, "_MAX_BAND_ELEMENTS", 5000)  # refinement in many chunks
    _assert_same(class_logits, masks, [True, False, True], (160, 120), (150, 117), whole, config)


@pytest.mark.parametrize(
    ("orig", "gathered"),
    [((23, 30), True), ((7, 45), False), ((40, 17), True), ((97, 130), False), ((1, 1), False)],
)
def test_cell_bounds_are_the_corner_extrema(orig: tuple[int, int], gathered: bool) -> None:
    """Each cell's logit bounds are the min and max of its four corner grid values, whether the
    cells' taps are read in runs of neighbours (upsampling) or gathered (an image smaller than the
    mask grid), and every interpolated logit of the cell lies between them."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 40, 48)).astype(np.float32)
    for backend in (np.asarray, torch.from_numpy):
        array = backend(logits)
        ops = array_ops(array)
        taps = [
            postprocess._LinearTaps.build(ops, n_out, side, side, n_in, array)
            for n_out, n_in, side in zip(orig, (40, 48), (160, 192), strict=True)
        ]
        rows, cols = (axis.cells for axis in taps)
        lowest, highest = (
            np.asarray(bound) for bound in _cell_assign._corner_extrema(ops, array, rows, cols)
        )
        row_taps, col_taps = (
            (np.asarray(rows.low), np.asarray(rows.high)),
            (np.asarray(cols.low), np.asarray(cols.high)),
        )
        corners = np.stack([logits[:, :, y][:, :, :, x] for y in row_taps for x in col_taps])
        np.testing.assert_array_equal(lowest, corners.min(axis=0))
        np.testing.assert_array_equal(highest, corners.max(axis=0))
        interpolated = np.asarray(taps[1].apply(ops, taps[0].apply(ops, array, axis=-2), axis=-1))
        cell_of = np.ix_(np.asarray(rows.of_pixel), np.asarray(cols.of_pixel))
        assert (interpolated >= lowest[:, :, cell_of[0], cell_of[1]] - 1e-6).all()
        assert (interpolated <= highest[:, :, cell_of[0], cell_of[1]] + 1e-6).all()
    assert (max(len(rows.runs), len(cols.runs)) > _cell_assign._MAX_RUNS) == gathered


@pytest.fixture(scope="module")
def fitted_logits() -> tuple[np.ndarray, np.ndarray]:
    """Class and mask logits (2 images) of the tiny network after 15 steps fitting 8 random
    discs per image: structured masks like a trained model's (a random network's are noise)."""
    network = tiny_network()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = torch.rand(2, 8, 2, generator=generator) * 16
    radii = torch.rand(2, 8, 1, 1, generator=generator) * 5 + 2
    distance = torch.hypot(y - centres[..., 0, None, None], x - centres[..., 1, None, None])
    targets, labels = (distance < radii).float(), torch.randint(0, 6, (2, 8), generator=generator)
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread is several times faster on a busy CPU
    try:
        for _ in range(15):
            output = network(images)
            loss = sum(
                torch.nn.functional.binary_cross_entropy_with_logits(masks.logits(), targets)
                + torch.nn.functional.cross_entropy(classes.flatten(0, 1), labels.flatten())
                for masks, classes in zip(output.mask_projections, output.class_logits, strict=True)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.inference_mode():
            output = network.eval()(images)
    finally:
        torch.set_num_threads(threads)
    return output.class_logits[-1].numpy(), output.mask_logits[-1].numpy()


@pytest.mark.parametrize(
    ("resized", "orig"), [((64, 64), (64, 64)), ((64, 33), (97, 50)), ((40, 64), (188, 301))]
)
def test_logits_of_a_network(
    fitted_logits: tuple[np.ndarray, np.ndarray], resized: tuple[int, int], orig: tuple[int, int]
) -> None:
    class_logits, mask_logits = fitted_logits
    is_thing = [True, True, True, False, False, False]
    segments = 0
    for image, mask_threshold, overlap in itertools.product(range(2), [0.5, 0.2], [0.0, 0.8]):
        config = PostprocessConfig(
            threshold=0.0, mask_threshold=mask_threshold, overlap_threshold=overlap
        )
        segments += _assert_same(
            class_logits[image : image + 1],
            mask_logits[image : image + 1],
            is_thing,
            (64, 64),
            resized,
            orig,
            config,
        )
    assert segments >= 16
