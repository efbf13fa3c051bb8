"""The pixel assignment of the panoptic merge, decided per mask-grid cell and exact per pixel.

The merge gives each output pixel to the query maximising score * sigmoid(mask logit), where the
logit is bilinearly interpolated from the 1/4-resolution mask grid, and counts each query's own
mask (sigmoid >= mask_threshold). Computed directly (`assign_band`) that is K sigmoids per
output pixel. `assign_by_cells` decides on the grid instead: the output pixels between the same
two grid rows and the same two grid columns form a cell, and inside a cell every interpolated
logit lies between the cell's four corner values. When one query's lower bound beats every other
query's upper bound the whole cell is that query's; when a query's bounds are both on one side
of the mask threshold its own mask covers all or none of the cell. Only what is left undecided
(near boundaries) is evaluated per pixel, with the direct computation's operations in its order,
so the result is the direct one on every pixel.

Float32 rounding is covered by widening the bounds far beyond its few units in the last place:
a cell is only decided when no rounding could change the outcome; ties and scores in the
subnormal range are evaluated per pixel, and logits that are not all finite directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from panoptic_train.runtime.array_ops import Array, ArrayOps

# Widening of the logit bounds: 2**-16 of the largest logit magnitude (plus 2**-16), hundreds
# of times the float32 error of the two interpolations (a few 2**-24 of their operands).
_LOGIT_SLACK = 2.0**-16
# Relative widening of the probability bounds: 2**-20, several times the float32 error of the
# sigmoid and the product with the score (a few 2**-24 each).
_PROB_SLACK = 2.0**-20
# Absolute widening (2**-100): below it float32 results lose relative accuracy (subnormals).
_TINY = 2.0**-100
# From this logit on, float32 sigmoid is exactly 1 (exp(-17) < 2**-24, so 1 + it rounds to 1)
# and score * sigmoid exactly the score: known values, which settle the ties of saturated queries
# of equal scores as the direct computation does (the first one wins).
_SURE_ONE = 17.0
# Elements (cells x queries x pixels per cell, or queries x pixels) evaluated at once: bounded
# memory whatever the image size, and arrays small enough to stay in cache.
_CHUNK_ELEMENTS = 2**20
# A query-pixel pair evaluated in an undecided cell costs about this many evaluated directly (the
# cells' gathers and padding): rows of cells with more undecided work than that are evaluated
# directly, so that logits without structure (noise) cost no more than the direct merge.
_REFINE_COST = 2.0


class AxisCells(NamedTuple):
    """The cells of one axis: runs of output pixels interpolated from the same two grid taps.

    Runs longer than the typical one (where the border clamps several pixels to the same taps)
    are split, so that cells padded to the largest one waste little.

    of_pixel: (n_out,) the cell of each output pixel.
    low, high: (C,) the two grid taps of each cell; start, size: (C,) its first output pixel and
        its number of pixels (cells are contiguous: the taps grow with the output coordinate).
    max_size: the largest size.
    first, last: the lowest and highest grid tap of any cell.
    runs: the cells' low taps, counted from `first`, as (start, stop) runs of consecutive taps
        (a cell's low tap may repeat its neighbour's, where a run was split or the border
        clamps): how few slices read the grid at the cells (`_at_cells`).
    """

    of_pixel: Array
    low: Array
    high: Array
    start: Array
    size: Array
    max_size: int
    first: int
    last: int
    runs: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, ops: ArrayOps, low: np.ndarray, n_in: int, like: Array) -> AxisCells:
        """Cells from the per-pixel low taps (non-decreasing) of a grid axis of n_in points."""
        run_low, run_start, run_size = np.unique(low, return_index=True, return_counts=True)
        cap = -(-len(low) // len(run_low))  # the mean run length, rounded up
        pieces = -(-run_size // cap)
        run = np.repeat(np.arange(len(run_low)), pieces)
        offset = (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * cap
        size = np.minimum(cap, run_size[run] - offset)
        of_pixel = np.repeat(np.arange(len(size)), size)
        cell_low = run_low[run]
        high = np.minimum(cell_low + 1, n_in - 1)
        arrays = (of_pixel, cell_low, high, run_start[run] + offset, size)
        as_arrays = (ops.asarray(array.astype(np.int64), like) for array in arrays)
        tap = cell_low - cell_low[0]
        breaks = np.flatnonzero(np.diff(tap) != 1) + 1
        bounds = zip(np.r_[0, breaks], np.r_[breaks, len(tap)], strict=True)
        runs = tuple((int(tap[a]), int(tap[a] + b - a)) for a, b in bounds)
        return cls._make((*as_arrays, int(size.max()), int(cell_low[0]), int(high[-1]), runs))


class AxisTaps(Protocol):
    """One axis of the bilinear resampling (`postprocess._LinearTaps`): per output pixel its two
    grid taps and the weight of the second, and the axis's cells. Read-only, as a NamedTuple's
    fields are."""

    @property
    def low(self) -> Array: ...

    @property
    def high(self) -> Array: ...

    @property
    def fraction(self) -> Array: ...

    @property
    def cells(self) -> AxisCells: ...

    def apply(self, ops: ArrayOps, array: Array, axis: int, rows: slice | None = None) -> Array:
        """Interpolate `array` along axis -1 or -2 (optionally only at output `rows`)."""
        ...


class Assignment(NamedTuple):
    """Per image b and query k: own_area[b, k] pixels in its own mask, assigned_area[b, k] pixels
    it won, final_area[b, k] pixels won inside its own mask (int64 (B, K)); queries (B, P):
    per output pixel the query it went to, -1 where outside that query's own mask."""

    own_area: Array
    assigned_area: Array
    final_area: Array
    queries: Array


def assign_band(
    ops: ArrayOps,
    logits: Array,
    scores: Array,
    rows: AxisTaps,
    cols: AxisTaps,
    band: slice,
    mask_threshold: float,
    keep: Array | None = None,
) -> Assignment:
    """The assignment of the output rows `band`, every query evaluated at every pixel (fixed
    shapes: what graphs traced into ONNX run). Arguments as `assign_by_cells`; keep: optional
    (B, K) flags of the queries that take part. queries: int64 (B, len(band) * W0)."""
    batch, num_queries = scores.shape
    # Cropping the padding and resizing to the original size in one bilinear resampling.
    probs = ops.sigmoid(cols.apply(ops, rows.apply(ops, logits, axis=-2, rows=band), axis=-1))
    own = probs >= mask_threshold
    weighted = probs * scores[:, :, None, None]
    if keep is not None:
        weighted = ops.where(keep[:, :, None, None], weighted, -1.0)
    assign = weighted.argmax(axis=1)[:, None]  # (B, 1, rows, W0): each pixel's query
    valid = ops.take_along_axis(own, assign, axis=1)  # inside its query's own mask
    assign, valid = assign.reshape(batch, -1), valid.reshape(batch, -1)
    # A float32 sum: torch reduces floats several times faster than bools; exact for bands of
    # fewer than 2**24 pixels.
    own_area = ops.astype(ops.astype(own, "float32").sum(axis=(2, 3)), "int64")
    everywhere = ops.full(assign.shape, 1, "int64", like=assign)
    assigned_area = ops.bincount(assign, everywhere, num_queries)
    final_area = ops.bincount(assign, valid, num_queries)
    return Assignment(own_area, assigned_area, final_area, ops.where(valid, assign, -1))


def assign_by_cells(
    ops: ArrayOps,
    logits: Array,
    scores: Array,
    rows: AxisTaps,
    cols: AxisTaps,
    mask_threshold: float,
    index_type: str,
    max_elements: int | None = None,
) -> Assignment:
    """The merge's assignment of the (H0, W0) output pixels of B images to their K queries.

    logits: float32 (B, K, h, w) mask logits; scores: float32 (B, K) class scores in [0, 1];
    rows, cols: the resampling of the grid to the output; index_type: the integer type of
    `queries`, which is (B, H0 * W0), a view of one array; max_elements: bound on the per-pixel
    values held at once (at most `_CHUNK_ELEMENTS`).
    """
    merge = _CellMerge(ops, logits, scores, rows, cols, mask_threshold, index_type, max_elements)
    merge.undecided_cells()
    merge.crossed_own_masks()
    merge.direct_rows()
    return merge.result()


class _CellMerge:
    """The steps of `assign_by_cells`, sharing the bounds, the areas and the output buffer.

    Cell rows where the undecided cells hold more work than evaluating the whole row directly
    (`_REFINE_COST`) are evaluated directly (`assign_band`); the cells of the other rows are
    painted when decided and refined when not.
    """

    def __init__(
        self,
        ops: ArrayOps,
        logits: Array,
        scores: Array,
        rows: AxisTaps,
        cols: AxisTaps,
        mask_threshold: float,
        index_type: str,
        max_elements: int | None,
    ) -> None:
        self.ops, self.logits, self.scores = ops, logits, scores
        self.rows, self.cols, self.mask_threshold = rows, cols, mask_threshold
        self.index_type = index_type
        self.limit = min(max_elements or _CHUNK_ELEMENTS, _CHUNK_ELEMENTS)
        batch, num_queries = scores.shape
        self.size = (batch, num_queries)
        self.query_ids = ops.asarray(np.arange(num_queries), like=scores)
        self.sampler = _PixelSampler(ops, logits, rows, cols)
        self.width = cols.low.shape[0]
        self.pixels = rows.low.shape[0] * self.width
        # One flat buffer for the map, with a slot more that takes the writes of the
        # refinements that have nothing to write (padding, void pixels).
        self.discard = batch * self.pixels
        self.buffer = ops.full((self.discard + 1,), -1, index_type, like=scores)
        self.queries = self.buffer[: self.discard].reshape(batch, self.pixels)  # a view
        self.grid_width = cols.cells.size.shape[0]
        self.cells = rows.cells.size.shape[0] * self.grid_width
        zero = ops.full(self.size, 0, "int64", like=scores)
        self.own_area = self.assigned_area = self.final_area = zero
        # The undecided cells' (b, i, j, candidates) and the crossed masks' (b, k, i, j).
        self.undecided: tuple[Array, ...] = ()
        self.crossed: tuple[Array, ...] = ()

        bounds = _Bounds.of(ops, logits, scores, rows.cells, cols.cells, mask_threshold)
        if bounds is None:  # nothing can be decided: every row directly
            self.direct = ops.full(rows.cells.size.shape, True, "bool", like=scores)
            return
        self.best = bounds.best
        b, i, j = ops.nonzero(~bounds.decided)
        candidates, counts = self._candidates(bounds, b, i, j)
        self.direct = self._direct(i, j, counts)
        kept = ~_gather(ops, self.direct, i)
        self.undecided = (b[kept], i[kept], j[kept], candidates[kept])
        self.decided, sure_own, unsure_own = bounds.decided, bounds.sure_own, bounds.unsure_own
        if bool(self.direct.any()):  # the cells of rows evaluated directly take no part
            on_cells = ~self.direct[None, :, None]
            self.decided = self.decided & on_cells
            sure_own, unsure_own = sure_own & on_cells[:, None], unsure_own & on_cells[:, None]
        self.crossed = ops.nonzero(unsure_own)
        self._decided_cells(sure_own)

    def _candidates(self, bounds: _Bounds, b: Array, i: Array, j: Array) -> tuple[Array, Array]:
        """Per undecided cell its candidates (the queries that may win some of its pixels) in
        increasing order and padded with the first, (N, M), and their number (N,). With the
        candidates in order the first of equal values is the first query, as directly."""
        ops, num_queries = self.ops, self.size[1]
        cell = i * self.grid_width + j
        entry = (b[:, None] * num_queries + self.query_ids) * self.cells + cell[:, None]
        candidate = _gather(ops, bounds.candidate, entry)
        counts = candidate.sum(axis=1)
        ranked = ops.sort(ops.where(candidate, self.query_ids, num_queries), axis=1)
        most = int(ops.amax(counts, axis=0)) if b.shape[0] else 0
        ranked = ranked[:, :most]
        return ops.where(ranked < num_queries, ranked, ranked[:, :1]), counts

    def _direct(self, i: Array, j: Array, counts: Array) -> Array:
        """(Ch,) flags of the cell rows cheaper to evaluate directly than cell by cell."""
        ops, cells = self.ops, self.rows.cells
        pairs = counts * _gather(ops, cells.size, i) * _gather(ops, self.cols.cells.size, j)
        refine = ops.bincount(i[None], pairs[None], cells.size.shape[0])[0]
        return refine * _REFINE_COST > cells.size * (self.size[0] * self.size[1] * self.width)

    def _decided_cells(self, sure_own: Array) -> None:
        """Areas of the decided cells and of the sure own masks, whole cells at a time, and the
        decided cells' winners painted into the map."""
        ops, batch, num_queries = self.ops, *self.size
        winner_own = ops.take_along_axis(sure_own, self.best[:, None], axis=1)[:, 0]
        winner_own = winner_own & self.decided
        rows, cols = self.rows.cells, self.cols.cells
        cell_pixels = rows.size[:, None] * cols.size[None, :]  # (Ch, Cw)
        flat_best = self.best.reshape(batch, -1)
        won = (ops.astype(self.decided, "int64") * cell_pixels).reshape(batch, -1)
        self.assigned_area = ops.bincount(flat_best, won, num_queries)
        won_own = (ops.astype(winner_own, "int64") * cell_pixels).reshape(batch, -1)
        self.final_area = ops.bincount(flat_best, won_own, num_queries)
        # over cell columns in float32, exact (at most W0 < 2**24 pixels), then over cell rows
        own_rows = ops.astype(sure_own, "float32") @ ops.astype(cols.size, "float32")
        own_area = ops.astype(own_rows, "float64") @ ops.astype(rows.size, "float64")
        self.own_area = ops.astype(own_area, "int64")

        index_type = self.index_type
        painted = ops.astype(winner_own, index_type) * (ops.astype(self.best, index_type) + 1) - 1
        band = max(1, self.limit // (batch * self.width))
        for top in range(0, self.rows.low.shape[0], band):
            cell_rows = rows.of_pixel[top : top + band]
            expanded = ops.take(ops.take(painted, cell_rows, 1), cols.of_pixel, 2)
            span = slice(top * self.width, (top + cell_rows.shape[0]) * self.width)
            self.queries[:, span] = expanded.reshape(batch, -1)

    def undecided_cells(self) -> None:
        """Undecided cells: their candidates' exact values at each of their pixels."""
        if not self.undecided:
            return
        ops, num_queries = self.ops, self.size[1]
        b, i, j, candidates = self.undecided
        step = max(1, self.limit // (max(candidates.shape[1], 1) * self.sampler.cell_pixels))
        for start in range(0, b.shape[0], step):
            cell_b, cell_i, cell_j = (index[start : start + step, None] for index in (b, i, j))
            query = candidates[start : start + step]  # (N, M)
            plane = cell_b * num_queries + query
            probs, inside, pixel = self.sampler.sample(plane, cell_i, cell_j)  # (N, M, R, C)
            weighted = probs * _gather(ops, self.scores, plane)[..., None, None]
            slot = _first_max(ops, weighted)  # (N, R, C)
            assign = ops.take_along_axis(query, slot.reshape(slot.shape[0], -1), 1)
            assign = assign.reshape(slot.shape)
            inside = inside[:, 0]
            own = probs >= self.mask_threshold
            valid = ops.take_along_axis(own, slot[:, None], axis=1)[:, 0] & inside
            winner = cell_b[..., None] * num_queries + assign
            self.assigned_area = self.assigned_area + _tally(ops, winner, inside, self.size)
            self.final_area = self.final_area + _tally(ops, winner, valid, self.size)
            self._paint(valid, cell_b[..., None] * self.pixels + pixel[:, 0], assign)

    def crossed_own_masks(self) -> None:
        """Cells that a query's own mask crosses: that query's exact values there, and the
        pixels it wins in the decided ones."""
        if not self.crossed:
            return
        ops, num_queries = self.ops, self.size[1]
        b, k, i, j = self.crossed
        step = max(1, self.limit // self.sampler.cell_pixels)
        for start in range(0, b.shape[0], step):
            cell_b, cell_k, cell_i, cell_j = (index[start : start + step] for index in (b, k, i, j))
            plane = cell_b * num_queries + cell_k
            probs, inside, pixel = self.sampler.sample(plane, cell_i, cell_j)  # (T, R, C)
            own = (probs >= self.mask_threshold) & inside
            own_count = own.sum(axis=(1, 2))
            self.own_area = self.own_area + _tally(ops, plane, own_count, self.size)
            cell = cell_b * self.cells + cell_i * self.grid_width + cell_j
            wins = (cell_k == _gather(ops, self.best, cell)) & _gather(ops, self.decided, cell)
            self.final_area = self.final_area + _tally(ops, plane, own_count * wins, self.size)
            painted = own & wins[:, None, None]
            position = cell_b[:, None, None] * self.pixels + pixel
            self._paint(painted, position, ops.where(painted, cell_k[:, None, None], -1))

    def direct_rows(self) -> None:
        """The rows of cells to evaluate directly, in bands of at most `limit` values."""
        ops, batch, num_queries = self.ops, *self.size
        starts, sizes = self.rows.cells.start.tolist(), self.rows.cells.size.tolist()
        band = max(1, self.limit // (batch * num_queries * self.width))
        for flag, start, size in zip(self.direct.tolist(), starts, sizes, strict=True):
            for top in range(start, start + size, band) if flag else ():
                rows = slice(top, min(top + band, start + size))
                area = assign_band(
                    ops, self.logits, self.scores, self.rows, self.cols, rows, self.mask_threshold
                )
                self.own_area = self.own_area + area.own_area
                self.assigned_area = self.assigned_area + area.assigned_area
                self.final_area = self.final_area + area.final_area
                span = slice(rows.start * self.width, rows.stop * self.width)
                self.queries[:, span] = ops.astype(area.queries, self.index_type)

    def result(self) -> Assignment:
        return Assignment(self.own_area, self.assigned_area, self.final_area, self.queries)

    def _paint(self, where: Array, position: Array, query: Array) -> None:
        """Write `query` at the flat map positions where `where` holds (same shapes)."""
        ops = self.ops
        index = ops.where(where, position, self.discard).reshape(-1)
        ops.put(self.buffer, index, ops.astype(query, self.index_type).reshape(-1))


class _Bounds(NamedTuple):
    """What the grid decides per cell: (B, Ch, Cw) arrays, and (B, K, Ch, Cw) ones per query.

    candidate: the query may win pixels of the cell, its upper bound reaching the cell's floor
    (the highest lower bound, which the winning value reaches at every pixel): the others
    neither win nor tie there. best: the first candidate; decided: it wins all pixels of the
    cell. sure_own: the query's own mask covers the whole cell; unsure_own: it may cover part of
    it (neither that nor none of it is certain).
    """

    best: Array
    decided: Array
    candidate: Array
    sure_own: Array
    unsure_own: Array

    @classmethod
    def of(
        cls,
        ops: ArrayOps,
        logits: Array,
        scores: Array,
        rows: AxisCells,
        cols: AxisCells,
        mask_threshold: float,
    ) -> _Bounds | None:
        """The bounds, or None where the logits are not all finite (nothing is decided)."""
        # The interpolated logits of a cell lie between the min and max of its four corners.
        lowest, highest = _corner_extrema(ops, logits, rows, cols)
        magnitude = float(ops.amax(ops.maximum(-lowest, highest).reshape(-1), 0))
        if not math.isfinite(magnitude):
            return None
        slack = _LOGIT_SLACK * (1 + magnitude)
        prob_low, prob_high = ops.sigmoid(lowest - slack), ops.sigmoid(highest + slack)

        # Bounds of score * sigmoid, and never above the score (the float32 sigmoid is at most
        # 1). The lower bound is the score itself where the sigmoid is surely 1.
        score = scores[:, :, None, None]
        lower = prob_low * (score * (1 - _PROB_SLACK)) - _TINY
        lower = ops.where(lowest >= _SURE_ONE, score, lower)
        upper = ops.minimum(prob_high * (score * (1 + _PROB_SLACK)) + _TINY, score)
        candidate = upper >= ops.amax(lower, axis=1)[:, None]

        # The first candidate wins every pixel when it is the only one, or when its lower bound
        # reaches every upper bound (exactly saturated queries of equal scores): the others then
        # at most tie, and a tie goes to the earlier query.
        flags = ops.astype(candidate, "float32")
        best = _first_index(ops, flags)
        best_lower = ops.take_along_axis(lower, best[:, None], axis=1)[:, 0]
        decided = (flags.sum(axis=1) == 1) | (best_lower == ops.amax(upper, axis=1))

        # Own masks: sigmoid >= threshold, decided with the same margins.
        sure_own = prob_low >= mask_threshold * (1 + 2 * _PROB_SLACK)
        possible = prob_high >= mask_threshold * (1 - 2 * _PROB_SLACK) - _TINY
        unsure_own = possible ^ sure_own  # the sure ones are possible too
        return cls(best, decided, candidate, sure_own, unsure_own)


# With more runs of cells than this an axis is read with one gather rather than a slice per run.
_MAX_RUNS = 8


def _corner_extrema(
    ops: ArrayOps, logits: Array, rows: AxisCells, cols: AxisCells
) -> tuple[Array, Array]:
    """(B, K, Ch, Cw): the lowest and the highest of each cell's four corner logits, as the
    extrema over pairs of neighbouring grid columns, then over pairs of such rows."""
    grid = logits[:, :, rows.first : rows.last + 1, cols.first : cols.last + 1]
    lowest, highest = (
        _at_cells(ops, _at_cells(ops, grid, cols, 3, reduce), rows, 2, reduce)
        for reduce in (ops.minimum, ops.maximum)
    )
    return lowest, highest


def _at_cells(
    ops: ArrayOps, grid: Array, cells: AxisCells, axis: int, reduce: Callable[[Array, Array], Array]
) -> Array:
    """`reduce` of each cell's two taps along `axis` of `grid` (whose first entry there is the
    cells' first tap): slices of the reduced neighbouring pairs, or one gather from them."""

    def part(array: Array, start: int, stop: int) -> Array:
        return array[(slice(None),) * axis + (slice(start, stop),)]

    taps = cells.last - cells.first + 1
    pairs = reduce(part(grid, 0, taps - 1), part(grid, 1, taps))  # tap t with tap t + 1
    alone = part(grid, taps - 1, taps)  # the grid's last tap, its own pair at the border
    if len(cells.runs) > _MAX_RUNS:
        return ops.take(ops.concat([pairs, alone], axis), cells.low - cells.first, axis)
    pieces = []
    for start, stop in cells.runs:
        if start < taps - 1:
            pieces.append(part(pairs, start, min(stop, taps - 1)))
        if stop == taps:
            pieces.append(alone)
    return pieces[0] if len(pieces) == 1 else ops.concat(pieces, axis)


def _first_max(ops: ArrayOps, array: Array) -> Array:
    """argmax along axis 1: the first of equal maxima, NaN counting as the maximum."""
    top = ops.amax(array, axis=1)[:, None]
    return _first_index(ops, ops.astype((array == top) | (array != array), "float32"))


def _first_index(ops: ArrayOps, flags: Array) -> Array:
    """The first index along axis 1 where float32 `flags` is 1 (one there at least), from a
    max reduction: torch's CPU argmax over a non-last axis is tens of times slower."""
    count = flags.shape[1]
    shape = (1, count) + (1,) * (flags.ndim - 2)
    reverse = ops.asarray(np.arange(count, 0, -1, dtype=np.float32).reshape(shape), like=flags)
    return count - ops.astype(ops.amax(flags * reverse, axis=1), "int64")


def _gather(ops: ArrayOps, array: Array, index: Array) -> Array:
    """array.reshape(-1)[index] for an index of any shape (one flat gather: fast in torch)."""
    return ops.take(array.reshape(-1), index.reshape(-1), 0).reshape(index.shape)


def _tally(ops: ArrayOps, plane: Array, counts: Array, size: tuple[int, int]) -> Array:
    """int64 (B, K) sums of `counts` (integers or bools) per plane index b * K + k."""
    total = ops.bincount(plane.reshape(1, -1), counts.reshape(1, -1), size[0] * size[1])
    return total.reshape(size)


class _PixelSampler:
    """Exact per-pixel probabilities of (image, query) planes at the pixels of chosen cells.

    All pixels of a cell interpolate between the same four grid values, so those are gathered
    once per cell and plane; the arithmetic is the direct merge's, element by element: the two
    row interpolations, the column interpolation, the sigmoid. Cells are padded to the largest
    cell's R x C pixels.
    """

    def __init__(self, ops: ArrayOps, logits: Array, rows: AxisTaps, cols: AxisTaps) -> None:
        self._ops = ops
        self._logits = logits
        self._rows, self._cols = rows, cols
        self._offsets = [
            ops.asarray(np.arange(axis.cells.max_size), like=logits) for axis in (rows, cols)
        ]
        self.cell_pixels = rows.cells.max_size * cols.cells.max_size

    def sample(self, plane: Array, cell_row: Array, cell_col: Array) -> tuple[Array, ...]:
        """probs float32 S + (R, C) for plane indices b * K + k of shape S at the pixels of
        cells (cell_row, cell_col) (broadcastable to S); inside, bool, and pixel, the output
        index y * W0 + x (both of the cells' shape + (R, C)): which padded positions are pixels."""
        ops, rows, cols, logits = self._ops, self._rows, self._cols, self._logits
        grid_h, grid_w = (int(side) for side in logits.shape[-2:])
        plane_rows = plane * grid_h
        top = (plane_rows + _gather(ops, rows.cells.low, cell_row)) * grid_w
        bottom = (plane_rows + _gather(ops, rows.cells.high, cell_row)) * grid_w
        left = _gather(ops, cols.cells.low, cell_col)
        right = _gather(ops, cols.cells.high, cell_col)
        y, inside_y = self._pixels(rows, cell_row, self._offsets[0])  # (..., R)
        x, inside_x = self._pixels(cols, cell_col, self._offsets[1])  # (..., C)
        fraction = _gather(ops, rows.fraction, y)[..., None]  # (..., R, 1)

        def row_lerp(column: Array) -> Array:  # S + (R, 1)
            upper, lower = _gather(ops, logits, top + column), _gather(ops, logits, bottom + column)
            return ops.lerp(upper[..., None, None], lower[..., None, None], fraction)

        column_fraction = _gather(ops, cols.fraction, x)[..., None, :]  # (..., 1, C)
        probs = ops.sigmoid(ops.lerp(row_lerp(left), row_lerp(right), column_fraction))
        inside = inside_y[..., None] & inside_x[..., None, :]
        pixel = y[..., None] * cols.low.shape[0] + x[..., None, :]
        return probs, inside, pixel

    @staticmethod
    def _pixels(axis: AxisTaps, cell: Array, offsets: Array) -> tuple[Array, Array]:
        """Output coordinates of the pixels of `cell` along one axis, padded to the largest cell
        (padding repeats a valid coordinate), and whether each is the cell's."""
        start = axis.cells.start[cell][..., None]
        inside = offsets < axis.cells.size[cell][..., None]
        return (start + offsets).clip(max=axis.low.shape[0] - 1), inside
