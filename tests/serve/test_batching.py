"""`MicroBatcher` on its own, with a recording `run`: how batches form, per-key calls, the full
queue, timeouts and errors. No model and no server, so the timings are under the test's control."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from panoptic_train.errors import ConfigError
from panoptic_train.serve.batching import BatchTimeoutError, MicroBatcher, QueueFullError
from panoptic_train.serve.config import ServeConfig


class Recorder:
    """A `run` that multiplies payloads by 10, records each call, and can be held back."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, payloads: Sequence[int], key: str) -> list[int]:
        self.calls.append((list(payloads), key))
        self.started.set()
        assert self.release.wait(10), "the test never released the batch"
        return [payload * 10 for payload in payloads]


def _batcher(recorder: Recorder, **config: float) -> MicroBatcher[int, str, int]:
    batcher: MicroBatcher[int, str, int] = MicroBatcher(recorder, ServeConfig(**config))
    batcher.start()
    return batcher


def test_concurrent_requests_share_batches_up_to_max_batch() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch=4, max_wait_ms=300)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i, "k") for i in range(6)))

    try:
        assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]  # each caller gets its own result
    finally:
        batcher.stop()
    assert [payloads for payloads, _ in recorder.calls] == [[0, 1, 2, 3], [4, 5]]
    stats = batcher.stats()
    assert stats["batch_sizes"] == {"2": 1, "4": 1}
    assert (stats["batches"], stats["images"], stats["largest_batch"]) == (2, 6, 4)


def test_a_batch_runs_once_per_key() -> None:
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch=8, max_wait_ms=300)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i, "ab"[i % 2]) for i in range(4)))

    try:
        assert asyncio.run(main()) == [0, 10, 20, 30]
    finally:
        batcher.stop()
    assert sorted(recorder.calls) == [([0, 2], "a"), ([1, 3], "b")]


def test_a_full_queue_refuses_at_once_with_a_retry_estimate() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = _batcher(recorder, max_batch=1, max_queue=1, max_wait_ms=0)

    async def main() -> tuple[list[int], QueueFullError]:
        running = asyncio.ensure_future(batcher.submit(1, "k"))
        await asyncio.to_thread(recorder.started.wait, 10)  # job 1 is in the model
        queued = asyncio.ensure_future(batcher.submit(2, "k"))
        await asyncio.sleep(0.05)  # job 2 holds the only queue place
        with pytest.raises(QueueFullError):
            batcher.ensure_room()
        with pytest.raises(QueueFullError) as refused:
            await batcher.submit(3, "k")
        recorder.release.set()
        return await asyncio.gather(running, queued), refused.value

    try:
        results, error = asyncio.run(main())
    finally:
        batcher.stop()
    assert results == [10, 20]
    assert error.retry_after >= 1 and "all 1 queue places are taken" in str(error)
    assert batcher.stats()["rejected"] == 2


def test_a_request_times_out_and_its_queued_job_never_runs() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = _batcher(recorder, max_batch=1, max_wait_ms=0, timeout_s=0.2)

    async def main() -> list[BaseException | int]:
        return await asyncio.gather(
            batcher.submit(1, "k"), batcher.submit(2, "k"), return_exceptions=True
        )

    try:
        outcomes = asyncio.run(main())
        recorder.release.set()  # job 1 finishes for nobody; job 2 was cancelled while queued
        assert asyncio.run(batcher.submit(3, "k")) == 30
    finally:
        batcher.stop()
    assert all(isinstance(outcome, BatchTimeoutError) for outcome in outcomes)
    assert "No result within 0.2 s" in str(outcomes[0])
    assert [payloads for payloads, _ in recorder.calls] == [[1], [3]]
    assert batcher.stats()["timed_out"] == 2


def test_an_error_in_run_reaches_its_callers_and_the_worker_goes_on() -> None:
    def run(payloads: Sequence[int], key: str) -> list[int]:
        if 0 in payloads:
            raise ValueError("cannot handle 0")
        return list(payloads)

    batcher: MicroBatcher[int, str, int] = MicroBatcher(run, ServeConfig(max_wait_ms=0))
    batcher.start()
    try:
        with pytest.raises(ValueError, match="cannot handle 0"):
            asyncio.run(batcher.submit(0, "k"))
        assert asyncio.run(batcher.submit(5, "k")) == 5
        assert batcher.alive
    finally:
        batcher.stop()
    assert batcher.stats()["failed"] == 1
    assert not batcher.alive


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("max_batch", 0, "max_batch=0: should be greater than or equal to 1"),
        ("max_queue", 2.5, "max_queue=2.5: should be a valid integer"),
        ("max_image_pixels", True, "max_image_pixels=True: should be a valid integer"),
        ("max_wait_ms", -1, "max_wait_ms=-1: should be greater than or equal to 0"),
        ("max_wait_ms", float("nan"), "max_wait_ms=nan: should be greater than or equal to 0"),
        ("timeout_s", 0, "timeout_s=0: should be greater than 0"),
    ],
)
def test_bad_settings_name_the_setting(field: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServeConfig(**{field: value})
    assert str(info.value) == f"Invalid ServeConfig(...):\n  {problem}"
