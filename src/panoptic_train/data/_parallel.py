"""Per-item work spread over worker processes: dataset checks and conversions decode one image
per item, which is CPU-bound and independent, so processes (not threads) give the speed-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def map_in_processes(
    function: Callable[[ItemT], ResultT], items: Sequence[ItemT], num_workers: int
) -> Iterator[ResultT]:
    """`map(function, items)`, results in item order; in `num_workers` processes when > 0.

    `function` and the items must pickle (a module-level function, or a `functools.partial`
    of one). Chunks amortise the inter-process overhead over several items.
    """
    if num_workers <= 0 or len(items) < 2:
        yield from map(function, items)
        return
    chunk = max(1, min(64, len(items) // (4 * num_workers)))
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        yield from pool.map(function, items, chunksize=chunk)
