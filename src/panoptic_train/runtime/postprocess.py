"""EoMT panoptic post-processing: per-query class and mask logits -> one panoptic map per image.

The single implementation behind validation, `predict`, the `predict` CLI and the exported-model
runners, so that the PQ reported during training is the PQ a user gets. The merge follows
EoMT / Mask2Former: keep confident queries, give every pixel to the query maximising
score * sigmoid(mask), drop queries that lost too much of their own mask to others, merge stuff
queries of one class, and leave everything else void (-1).

Everything is vectorised over pixels and queries; the only Python loops run over images and over
bounded chunks of very large images (to bound memory). Pixels are given to queries per cell of
the mask grid and evaluated one by one only where a cell is undecided (`runtime._cell_assign`);
the fixed-shape form evaluates every query at every pixel. The code is written once for torch
tensors and numpy arrays (`runtime.array_ops`): the ONNX and TensorRT runners, which must
work without PyTorch, run these same lines on numpy arrays, and `merge_queries` (fixed shapes)
is what an ONNX export with the merge baked in traces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypedDict, runtime_checkable

import numpy as np

from panoptic_train._types import is_number
from panoptic_train.errors import ConfigError
from panoptic_train.runtime._cell_assign import AxisCells, assign_band, assign_by_cells
from panoptic_train.runtime.array_ops import Array, ArrayOps, array_ops

# Upper bound on the number of per-query probabilities held at once at full resolution
# (2**23 float32 = 32 MiB). Typical images fit in one band; a 12 MP photo is processed in bands.
_MAX_BAND_ELEMENTS = 2**23
# Pixels per band and query, whatever the bound: float32 counts of up to 2**24 are exact.
_MAX_BAND_PIXELS = 2**23


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of the panoptic merge (EoMT's defaults).

    threshold: a query is kept when its best class (not "no object") has a softmax score above it.
    mask_threshold: a pixel belongs to a query's own mask when sigmoid(mask logit) >= it.
    overlap_threshold: a query becomes a segment when the pixels it wins cover at least this
        fraction of its own mask.
    """

    threshold: float = 0.8
    mask_threshold: float = 0.5
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        for name in ("threshold", "mask_threshold", "overlap_threshold"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1:
                raise ConfigError(
                    f"Post-processing {name}={value!r} is invalid: it must be a number in [0, 1] "
                    f"(default {getattr(PostprocessConfig, name)})."
                )

    def replace(
        self,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
    ) -> PostprocessConfig:
        """A copy with the given thresholds overridden (None keeps the current value)."""
        return PostprocessConfig(
            threshold=self.threshold if threshold is None else threshold,
            mask_threshold=self.mask_threshold if mask_threshold is None else mask_threshold,
            overlap_threshold=(
                self.overlap_threshold if overlap_threshold is None else overlap_threshold
            ),
        )


class PanopticPrediction(TypedDict):
    """One image's panoptic result with contiguous class indices (callers map to category ids).

    Arrays are torch tensors for tensor inputs and numpy arrays for numpy inputs.
    masks: int64 (H0, W0, 2): (class index, segment id) per pixel; void pixels are -1 in both.
    segment_ids: int64 (S,): 0..S-1, in the order of the query that founded each segment.
    scores: float32 (S,): class score of that founding query.
    labels: int64 (S,): class index of each segment.
    """

    masks: Array
    segment_ids: Array
    scores: Array
    labels: Array


class MergedBatch(NamedTuple):
    """Fixed-shape result of `merge_queries` for B images of K candidate queries each.

    masks: int64 (B, H0, W0, 2) as in PanopticPrediction.
    num_segments: int64 (B,): S per image.
    labels: int64 (B, K): slot j holds segment j's class index; -1 for slots j >= S.
    scores: float32 (B, K): slot j holds segment j's score; 0 for slots j >= S.
    """

    masks: Array
    num_segments: Array
    labels: Array
    scores: Array


@runtime_checkable
class FactoredMaskLogits(Protocol):
    """Mask logits not yet multiplied out (`models.eomt.MaskProjection`): the merge builds the
    rows of the confident queries only, a fraction of the (Q, h, w) product."""

    @property
    def embeddings(self) -> Array:
        """(B, Q, D)"""
        ...

    def logits_of(self, image: int, queries: Array) -> Array:
        """The dense (K, h, w) mask logits of image `image`'s `queries` (bool (Q,) flags)."""
        ...


def panoptic_postprocess(
    class_logits: Array,
    mask_logits: Array | FactoredMaskLogits,
    is_thing: Sequence[bool] | Array,
    input_size: tuple[int, int],
    resized_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
    config: PostprocessConfig | None = None,
) -> list[PanopticPrediction]:
    """Merge the network's last prediction into one panoptic map per image.

    class_logits: (B, Q, C + 1), the last entry being "no object"; a torch tensor or a numpy
        array (the result uses the same kind).
    mask_logits: (B, Q, h, w), covering the whole padded input of size `input_size` (H, W); or,
        from a torch network, their `MaskProjection` (only the kept queries' rows are built).
    is_thing: (C,) thing flags; stuff queries of one class merge into a single segment.
    resized_sizes: per image, the (height, width) of the image inside the padded input (the rest
        is padding at the bottom/right and is cropped off).
    orig_sizes: per image, the (height, width) the result is returned at.
    """
    merges = panoptic_merge(
        class_logits, mask_logits, is_thing, input_size, resized_sizes, orig_sizes, config
    )
    return [
        PanopticPrediction(
            masks=merge.masks(),
            segment_ids=merge.segment_ids,
            scores=merge.scores,
            labels=merge.labels,
        )
        for merge in merges
    ]


def panoptic_merge(
    class_logits: Array,
    mask_logits: Array | FactoredMaskLogits,
    is_thing: Sequence[bool] | Array,
    input_size: tuple[int, int],
    resized_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
    config: PostprocessConfig | None = None,
) -> list[PanopticMerge]:
    """`panoptic_postprocess` before the full-resolution maps exist: per image, the segments and
    the merge in row bands, so that a writer can stream the map of a very large image (see
    `PanopticMerge`). Arguments as `panoptic_postprocess`; `mask_logits` may also be factored
    (torch only), and then only the confident queries' logits are built."""
    config = config or PostprocessConfig()
    ops = array_ops(class_logits)
    batch, num_queries, num_logits = class_logits.shape
    kept_rows = _kept_rows(mask_logits, batch, num_queries, class_logits.shape)
    thing = _as_flags(ops, is_thing, like=class_logits)
    if tuple(thing.shape) != (num_logits - 1,):
        raise ValueError(
            f"is_thing has {thing.shape[0]} flags but class_logits have {num_logits - 1} classes "
            "(plus no-object)."
        )
    if len(resized_sizes) != batch or len(orig_sizes) != batch:
        raise ValueError(
            f"Got {len(resized_sizes)} resized and {len(orig_sizes)} original sizes for a batch "
            f"of {batch} images."
        )
    scores, labels = class_scores(ops, class_logits)
    keep = (labels != num_logits - 1) & (scores > config.threshold)
    merges = []
    for i in range(batch):
        # Only the confident queries take part: the merge then costs K, not Q, maps per pixel.
        kept = keep[i]
        merge = _merge_in_bands(
            ops,
            scores=scores[i][kept][None],
            labels=labels[i][kept][None],
            mask_logits=kept_rows(i, kept)[None],
            is_thing=thing,
            input_size=input_size,
            resized_size=resized_sizes[i],
            orig_size=orig_sizes[i],
            config=config,
            keep=None,
            max_band_elements=_MAX_BAND_ELEMENTS,
        )
        merges.append(PanopticMerge(ops, merge, like=class_logits))
    return merges


def _kept_rows(
    mask_logits: Array | FactoredMaskLogits,
    batch: int,
    num_queries: int,
    class_shape: tuple[int, ...],
) -> Callable[[int, Array], Array]:
    """`(image, kept) -> that image's (K, h, w) mask logits of its kept queries`, after checking
    the logits' shape against the class logits'."""
    dense: Array = mask_logits

    def dense_rows(image: int, kept: Array) -> Array:
        return dense[image][kept]

    if isinstance(mask_logits, FactoredMaskLogits):
        shape, expected = tuple(mask_logits.embeddings.shape), f"({batch}, {num_queries}, D)"
        rows: Callable[[int, Array], Array] = mask_logits.logits_of
        rank = 3
    else:
        shape, expected = tuple(dense.shape), f"({batch}, {num_queries}, h, w)"
        rows, rank = dense_rows, 4
    if len(shape) != rank or shape[:2] != (batch, num_queries):
        raise ValueError(
            f"mask_logits of shape {shape} do not match class_logits of shape "
            f"{tuple(class_shape)}: expected {expected}."
        )
    return rows


class PanopticMerge:
    """One image's merge: its segments, and its (class index, segment id) maps by row band.

    The maps are built band by band from one int16 per pixel (the query it went to), so a
    writer that consumes `bands()` in turn holds 2 bytes per pixel, not the 16 of `masks()`.

    segment_ids, scores, labels: as in PanopticPrediction (labels: contiguous class indices).
    height, width: the size of the maps.
    """

    def __init__(self, ops: ArrayOps, merge: _BandMerge, like: Array) -> None:
        self._ops = ops
        self._merge = merge
        count = int(merge.num_segments[0])
        self.segment_ids = ops.asarray(np.arange(count, dtype=np.int64), like=like)
        self.scores = merge.slot_scores[0, :count]
        self.labels = merge.slot_labels[0, :count]
        self.height, self.width = merge.height, merge.width

    def bands(self) -> Iterator[tuple[slice, Array, Array]]:
        """(rows, classes, segments) in order from the top: int64 (len(rows), width) maps of
        the class index and segment id of each pixel, -1 in both for void."""
        for rows, classes, segments in self._merge.band_maps(self._ops):
            yield rows, classes[0], segments[0]

    def masks(self, class_ids: Array | None = None) -> Array:
        """The whole int64 (height, width, 2) (class index, segment id) map, void -1 in both;
        with `class_ids` (C,), those ids instead of the class indices (e.g. category ids)."""
        masks = self._ops.full((self.height, self.width, 2), -1, "int64", like=self.labels)
        for rows, classes, segments in self.bands():
            if class_ids is not None:
                classes = self._ops.where(classes >= 0, class_ids[classes.clip(min=0)], -1)
            masks[rows, :, 0] = classes
            masks[rows, :, 1] = segments
        return masks


def class_scores(ops: ArrayOps, class_logits: Array) -> tuple[Array, Array]:
    """Best softmax probability and its class per query (the class may be "no object")."""
    probs = ops.softmax(ops.astype(class_logits, "float32"), axis=-1)
    labels = probs.argmax(axis=-1)
    return ops.take_along_axis(probs, labels[..., None], axis=-1)[..., 0], labels


def merge_queries(
    ops: ArrayOps,
    scores: Array,
    labels: Array,
    mask_logits: Array,
    is_thing: Array,
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    orig_size: tuple[int, int],
    config: PostprocessConfig,
    keep: Array | None = None,
    max_band_elements: int | None = None,
) -> MergedBatch:
    """Panoptic merge of B images with K candidate queries each, in fixed-size arrays.

    scores, labels: (B, K) class score and index per query; mask_logits: (B, K, h, w).
    keep: optional (B, K) mask of the queries that take part (None: all of them). With it the
        merge has no data-dependent shapes, so it can be traced into an ONNX graph; `predict`
        instead passes only the confident queries.
    max_band_elements: bound on the (B, K, rows, W0) probabilities held at once (None: none
        beyond _MAX_BAND_PIXELS rows * W0).
    """
    merge = _merge_in_bands(
        ops,
        scores,
        labels,
        mask_logits,
        is_thing,
        input_size,
        resized_size,
        orig_size,
        config,
        keep,
        max_band_elements,
    )
    bands = [
        ops.stack([classes, segments], axis=-1) for _, classes, segments in merge.band_maps(ops)
    ]
    return MergedBatch(
        masks=ops.concat(bands, axis=1),
        num_segments=merge.num_segments,
        labels=merge.slot_labels,
        scores=merge.slot_scores,
    )


class _BandMerge(NamedTuple):
    """The merge of B images before its maps: per row band, the query each pixel went to.

    queries: per band, (B, rows * width) int16 (int32 for more than 32767 queries): the index
        of the query that won the pixel, -1
        where the pixel lies outside that query's own mask (void).
    segment_of_query, query_labels: (B, K) int64: each query's segment id (-1: not a segment)
        and class index.
    num_segments, slot_labels, slot_scores: MergedBatch's `num_segments`, `labels`, `scores`.
    """

    rows: list[slice]
    queries: list[Array]
    height: int
    width: int
    segment_of_query: Array
    query_labels: Array
    num_segments: Array
    slot_labels: Array
    slot_scores: Array

    def band_maps(self, ops: ArrayOps) -> Iterator[tuple[slice, Array, Array]]:
        """(rows, classes, segments) per band: int64 (B, len(rows), width), void -1 in both."""
        batch, num_queries = self.segment_of_query.shape
        for rows, queries in zip(self.rows, self.queries, strict=True):
            shape = (batch, rows.stop - rows.start, self.width)
            if num_queries == 0:  # nothing to gather from: all void
                void = ops.full(shape, -1, "int64", like=self.segment_of_query)
                yield rows, void, void
                continue
            index = ops.astype(queries, "int64")
            won = index >= 0
            index = index.clip(min=0)
            segments = ops.where(won, ops.take_along_axis(self.segment_of_query, index, axis=1), -1)
            classes = ops.where(
                segments >= 0, ops.take_along_axis(self.query_labels, index, axis=1), -1
            )
            yield rows, classes.reshape(shape), segments.reshape(shape)


def _merge_in_bands(
    ops: ArrayOps,
    scores: Array,
    labels: Array,
    mask_logits: Array,
    is_thing: Array,
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    orig_size: tuple[int, int],
    config: PostprocessConfig,
    keep: Array | None,
    max_band_elements: int | None,
) -> _BandMerge:
    """The merge of `merge_queries` (same arguments), keeping 2 bytes per pixel.

    Without `keep` (`predict`, validation, the runners) the pixels are assigned per mask-grid
    cell (`runtime._cell_assign`): the same result at a fraction of the cost, the bands' query
    maps views of one array allocated up front (per-band arrays allocated among each band's
    temporaries fragment the heap so that the temporaries' memory is not returned: a 100 MP
    image then needs twice its 200 MB). With `keep` (graphs traced into ONNX, which need fixed
    shapes and take no in-place writes) every query is evaluated at every pixel, band by band.
    """
    batch, num_queries = scores.shape[:2]
    height, width = (int(side) for side in orig_size)
    # Rows per band: within the memory bound, and under 2**23 pixels so counts stay exact.
    band = max(1, _MAX_BAND_PIXELS // width)
    if max_band_elements is not None:
        band = min(band, max(1, max_band_elements // (max(1, num_queries) * width)))
    row_bands = [slice(top, min(top + band, height)) for top in range(0, height, band)]
    if num_queries == 0:
        nothing = ops.full((batch, 0), -1, "int64", like=scores)
        return _BandMerge(
            rows=row_bands,
            queries=[nothing] * len(row_bands),
            height=height,
            width=width,
            segment_of_query=nothing,
            query_labels=nothing,
            num_segments=ops.full((batch,), 0, "int64", like=scores),
            slot_labels=nothing,
            slot_scores=ops.full((batch, 0), 0.0, "float32", like=scores),
        )
    logits = ops.astype(mask_logits, "float32")
    rows, cols = (
        _LinearTaps.build(ops, int(n_out), int(resized), int(inp), int(n_in), like=scores)
        for n_out, resized, inp, n_in in zip(
            orig_size, resized_size, input_size, mask_logits.shape[-2:], strict=True
        )
    )
    query_ids = ops.asarray(np.arange(num_queries), like=scores)
    # A query index per pixel: 2 bytes where the queries allow (num_queries is 200 by default).
    index_type = "int16" if num_queries < 2**15 else "int32"
    if keep is None:
        assignment = assign_by_cells(
            ops, logits, scores, rows, cols, config.mask_threshold, index_type, max_band_elements
        )
        own_area, assigned_area, final_area = assignment[:3]
        queries = [assignment.queries[:, r.start * width : r.stop * width] for r in row_bands]
    else:
        bands = [
            assign_band(ops, logits, scores, rows, cols, band, config.mask_threshold, keep)
            for band in row_bands
        ]
        own_area = sum(band.own_area for band in bands)
        assigned_area = sum(band.assigned_area for band in bands)
        final_area = sum(band.final_area for band in bands)
        queries = [ops.astype(band.queries, index_type) for band in bands]

    # A query is a segment when it wins pixels of its own mask and enough of that mask overall.
    ratio = ops.astype(assigned_area, "float64") / ops.astype(own_area.clip(min=1), "float64")
    is_segment = (own_area > 0) & (final_area > 0) & (ratio >= config.overlap_threshold)
    if keep is not None:
        is_segment = is_segment & keep

    # Segments group into one per thing query and one per stuff class, numbered in the order of
    # the query founding each group (its first query), as transformers' EoMT post-processing
    # numbers them (tests/runtime/test_postprocess.py compares the two).
    num_classes = is_thing.shape[0]
    stuff = ~is_thing[labels.clip(max=num_classes - 1)]  # no-object labels only where not kept
    same_query = query_ids[:, None] == query_ids[None, :]
    same_stuff = (labels[:, :, None] == labels[:, None, :]) & stuff[:, :, None] & stuff[:, None, :]
    group = is_segment[:, None, :] & (same_query[None] | same_stuff)  # (B, query, member)
    founder = ops.astype(group, "float32").argmax(axis=-1)  # first member of each query's group
    is_founder = is_segment & (founder == query_ids[None])
    number = ops.astype(is_founder, "int64").cumsum(axis=1) - 1
    segment_of_query = ops.where(is_segment, ops.take_along_axis(number, founder, axis=1), -1)

    # Slot j of the outputs holds segment j: the founder numbered j.
    in_slot = is_founder[:, None, :] & (number[:, None, :] == query_ids[None, :, None])
    num_segments = ops.astype(is_founder, "int64").sum(axis=1)
    slot_labels = (ops.astype(in_slot, "int64") * labels[:, None, :]).sum(axis=-1)
    used = query_ids[None, :] < num_segments[:, None]
    return _BandMerge(
        rows=row_bands,
        queries=queries,
        height=height,
        width=width,
        segment_of_query=segment_of_query,
        query_labels=labels,
        num_segments=num_segments,
        slot_labels=ops.where(used, slot_labels, -1),
        slot_scores=(ops.astype(in_slot, "float32") * scores[:, None, :]).sum(axis=-1),
    )


class _LinearTaps(NamedTuple):
    """1-D linear interpolation from a mask-grid axis to original-image pixels.

    Original pixel centre y maps to (y + 0.5) * resized / orig in the padded input and so to
    (y + 0.5) * resized * n_in / (orig * input) - 0.5 on the mask grid, clamped to the grid
    (torch grid_sample's bilinear, align_corners=False, border padding). `cells` groups the
    output pixels by their two taps (`runtime._cell_assign`).
    """

    low: Array
    high: Array
    fraction: Array
    cells: AxisCells

    @classmethod
    def build(
        cls, ops: ArrayOps, n_out: int, resized: int, inp: int, n_in: int, like: Array
    ) -> _LinearTaps:
        if not 0 < resized <= inp:
            raise ValueError(f"Resized size {resized} does not fit the input size {inp}.")
        centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (resized * n_in / (n_out * inp))
        source = np.clip(centres - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(np.int64)
        fraction = (source - low).astype(np.float32)
        high = np.minimum(low + 1, n_in - 1)
        return cls(
            ops.asarray(low, like),
            ops.asarray(high, like),
            ops.asarray(fraction, like),
            AxisCells.build(ops, low, n_in, like),
        )

    def apply(self, ops: ArrayOps, array: Array, axis: int, rows: slice | None = None) -> Array:
        """Interpolate `array` along axis -1 or -2 (optionally only at output `rows`)."""
        part = slice(None) if rows is None else rows
        low, high, fraction = self.low[part], self.high[part], self.fraction[part]
        if axis == -2:
            fraction = fraction[:, None]
        axis %= array.ndim
        return ops.lerp(ops.take(array, low, axis=axis), ops.take(array, high, axis=axis), fraction)


def _as_flags(ops: ArrayOps, is_thing: Sequence[bool] | Array, like: Array) -> Array:
    if isinstance(is_thing, (list, tuple, np.ndarray)):
        return ops.asarray(np.asarray(is_thing, dtype=bool), like)
    return ops.astype(is_thing, "bool")
