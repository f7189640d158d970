"""The dynamic batcher: every request gets its own results in order, batches respect their bounds,
a lone request waits at most max_batch_wait_ms, and a request that timed out is never decoded."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from genrec.serving.batching import DynamicBatcher


class Recorder:
    """A decode function that records the batches it got (in the decode thread)."""

    def __init__(self, seconds: float = 0.0, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[int]] = []
        self.started: list[float] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.started.append(time.monotonic())
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"item {self.fail_on} is poison")
        return [item * 10 for item in items]


def test_concurrent_requests_get_their_own_results_in_order_within_batch_bounds() -> None:
    """The reference: each request's answer is process() of its items, whatever batches carried them."""
    recorder = Recorder(seconds=0.002)
    rng = random.Random(0)
    requests = [[rng.randrange(1000) for _ in range(rng.randint(1, 5))] for _ in range(200)]

    async def scenario() -> list[list[int]]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=8, max_batch_wait_ms=1)
        try:
            async def one(index: int, items: list[int]) -> list[int]:
                await asyncio.sleep(rng.random() * 0.05)
                return await batcher.submit_many(items, timeout_s=10)

            return list(await asyncio.gather(*(one(i, items) for i, items in enumerate(requests))))
        finally:
            batcher.close()

    answers = asyncio.run(scenario())
    assert answers == [[item * 10 for item in items] for items in requests]
    assert max(len(b) for b in recorder.batches) <= 8
    assert sum(len(b) for b in recorder.batches) == sum(len(r) for r in requests)
    assert any(len(b) > 1 for b in recorder.batches), "concurrent requests were never batched"
    assert all(name.startswith("genrec-decode") for name in recorder.threads)


def test_a_lone_request_waits_for_the_batch_window_and_a_full_batch_goes_at_once() -> None:
    recorder = Recorder()

    async def scenario() -> tuple[float, float]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=4, max_batch_wait_ms=200)
        try:
            started = time.monotonic()
            assert await batcher.submit_many([1]) == [10]
            lone = recorder.started[-1] - started
            started = time.monotonic()
            assert await batcher.submit_many([1, 2, 3, 4]) == [10, 20, 30, 40]
            full = recorder.started[-1] - started
            return lone, full
        finally:
            batcher.close()

    lone, full = asyncio.run(scenario())
    assert 0.19 <= lone < 2.0, f"a lone request went after {lone:.3f} s, not after the 200 ms window"
    assert full < 0.1, f"a full batch waited {full:.3f} s"


def test_a_request_that_timed_out_in_the_queue_is_not_decoded() -> None:
    recorder = Recorder(seconds=0.3)

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=1, max_batch_wait_ms=0)
        try:
            first = asyncio.ensure_future(batcher.submit_many([1], timeout_s=5))
            await asyncio.sleep(0.02)
            with pytest.raises(TimeoutError):
                await batcher.submit_many([2], timeout_s=0.05)  # queued behind a 300 ms decode
            assert await first == [10]
            assert await batcher.submit_many([3], timeout_s=5) == [30]
        finally:
            batcher.close()

    asyncio.run(scenario())
    assert recorder.batches == [[1], [3]]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    recorder = Recorder(fail_on=7)

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(recorder, max_batch_size=8, max_batch_wait_ms=0)
        try:
            with pytest.raises(ValueError, match="poison"):
                await batcher.submit_many([7, 8], timeout_s=5)
            assert await batcher.submit_many([1, 2], timeout_s=5) == [10, 20]
            assert batcher.stalled_for() == 0.0
        finally:
            batcher.close()

    asyncio.run(scenario())
