"""Dynamic batching: requests that arrive close together run through the model as one batch.

One worker thread owns the model, so the network never runs twice at once and needs no locking.
It takes the oldest waiting job, then keeps gathering until `max_batch` jobs are in hand or
`max_wait` has passed since it took the first, and runs them together. Under load the queue
fills while a batch runs, so the next batch forms without waiting at all; a lone request pays
at most `max_wait` of latency. Jobs with different keys (the server's thresholds) cannot share
a `run` call, so a gathered batch runs as one call per key.

Back-pressure and deadlines are explicit: a full queue refuses a job at once (`QueueFullError`,
HTTP 503) instead of letting latency grow without bound, and a caller stops waiting after
`timeout` (`BatchTimeoutError`, HTTP 504); a job whose caller gave up is dropped before it runs.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from panoptic_train.serve.config import ServeConfig

Payload = TypeVar("Payload")
Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")

# Weight of the newest batch in the running mean of batch durations (for Retry-After).
_DURATION_SMOOTHING = 0.2


class QueueFullError(Exception):
    """The queue holds `max_queue` jobs; `retry_after` estimates seconds until there is room."""

    def __init__(self, max_queue: int, retry_after: int) -> None:
        super().__init__(
            f"The server is busy: all {max_queue} queue places are taken. Retry in about "
            f"{retry_after} s, or start the server with a larger --max-queue."
        )
        self.retry_after = retry_after


class BatchTimeoutError(Exception):
    """A job did not finish within the batcher's timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"No result within {timeout:g} s (time in the queue plus inference): the server is "
            "overloaded or the image is very large. Retry later, send a smaller image, or start "
            "the server with a larger --timeout."
        )


@dataclass
class _Job(Generic[Payload, Key, Result]):
    payload: Payload
    key: Key
    future: Future[Result]


class MicroBatcher(Generic[Payload, Key, Result]):
    """Gathers submitted payloads into batches for `run(payloads, key) -> results` (same order).

    `run` is called only from the batcher's own thread. Exceptions it raises reach the callers
    of that batch; the thread keeps serving.
    """

    def __init__(
        self, run: Callable[[Sequence[Payload], Key], Sequence[Result]], config: ServeConfig
    ) -> None:
        self.config = config
        self._run = run
        self._queue: queue.Queue[_Job[Payload, Key, Result] | None] = queue.Queue(config.max_queue)
        self._lock = threading.Lock()
        self._batch_sizes: Counter[int] = Counter()
        self._rejected = 0
        self._timed_out = 0
        self._failed = 0
        self._batch_seconds = 0.0
        self._thread = threading.Thread(target=self._work, name="model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in progress, fail the jobs still queued, end the thread."""
        pending: list[_Job[Payload, Key, Result]] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("The server is shutting down."))
        self._queue.put(None)
        self._thread.join()

    async def submit(self, payload: Payload, key: Key) -> Result:
        """Queue one payload and wait for its result (at most `timeout_s`)."""
        future: Future[Result] = Future()
        try:
            self._queue.put_nowait(_Job(payload, key, future))
        except queue.Full:
            raise self._refusal() from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.config.timeout_s)
        except asyncio.TimeoutError:  # also cancels the job if it has not started
            with self._lock:
                self._timed_out += 1
            raise BatchTimeoutError(self.config.timeout_s) from None

    def ensure_room(self) -> None:
        """Raise `QueueFullError` if a submit now would be refused, so that callers can refuse
        a request before reading and decoding it."""
        if self._queue.full():
            raise self._refusal()

    def _refusal(self) -> QueueFullError:
        with self._lock:
            self._rejected += 1
        return QueueFullError(self.config.max_queue, self.retry_after())

    def retry_after(self) -> int:
        """Whole seconds the queue needs to drain at the recent batch duration (at least 1)."""
        with self._lock:
            batch_seconds = self._batch_seconds
        batches = math.ceil(self._queue.qsize() / self.config.max_batch)
        return max(1, math.ceil(batches * batch_seconds))

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running (it only stops with `stop`)."""
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Counters since start: batch sizes as run, refused / timed-out / failed jobs."""
        with self._lock:
            sizes = dict(sorted(self._batch_sizes.items()))
            return {
                "queued": self._queue.qsize(),
                "batches": sum(sizes.values()),
                "images": sum(size * count for size, count in sizes.items()),
                "largest_batch": max(sizes, default=0),
                "batch_sizes": {str(size): count for size, count in sizes.items()},
                "rejected": self._rejected,
                "timed_out": self._timed_out,
                "failed": self._failed,
                "mean_batch_ms": round(self._batch_seconds * 1000, 3),
            }

    def _work(self) -> None:
        while (jobs := self._gather()) is not None:
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            groups: dict[Key, list[_Job[Payload, Key, Result]]] = {}
            for job in live:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._run_group(key, group)

    def _gather(self) -> list[_Job[Payload, Key, Result]] | None:
        """The next batch: the oldest job plus those arriving within max_wait; None to stop."""
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(jobs) < self.config.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # stop() after this batch
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run_group(self, key: Key, jobs: list[_Job[Payload, Key, Result]]) -> None:
        start = time.perf_counter()
        try:
            results = self._run([job.payload for job in jobs], key)
            if len(results) != len(jobs):
                raise RuntimeError(f"run returned {len(results)} results for {len(jobs)} inputs.")
        except Exception as error:  # the callers get the error; the worker keeps serving
            with self._lock:
                self._failed += len(jobs)
            for job in jobs:
                job.future.set_exception(error)
            return
        elapsed = time.perf_counter() - start
        with self._lock:
            first = not self._batch_sizes
            self._batch_sizes[len(jobs)] += 1
            smoothing = 1.0 if first else _DURATION_SMOOTHING
            self._batch_seconds += smoothing * (elapsed - self._batch_seconds)
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
