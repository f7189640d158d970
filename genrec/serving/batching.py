"""Dynamic batching across concurrent requests.

Requests submit items (one per instance) from the event loop. The batcher is driven by events, not
by a polling task: a submit, a finished batch, or the batch-wait timer each call `_dispatch`, which
starts a batch on the decode thread when that thread is idle and either `max_batch_size` items wait
or the oldest has waited `max_batch_wait_ms`. While a batch decodes, new items queue up, so under
load batches fill without waiting and at low load an item waits at most `max_batch_wait_ms`.

Per request the event loop does a constant amount of work (one future, one timer for the request's
deadline): a collector that awaited each arriving item with its own timeout created a task per item,
which at 800 requests/s cost a measurable share of the core the event loop shares.

The decode work runs in a single dedicated thread: keeping it off the event loop lets the server go
on accepting and parsing requests while a batch decodes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from genrec.serving import instruments as m

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """A request waited longer than the queue allows (serving.max_queue_ms): answered 503."""


class _Request(Generic[R]):
    """One submit: its items' results, and the future its caller awaits."""

    __slots__ = ("future", "results", "missing")

    def __init__(self, future: asyncio.Future[list[R]], size: int) -> None:
        self.future = future
        self.results: list[Any] = [None] * size
        self.missing = size

    def deliver(self, index: int, result: R) -> None:
        if self.future.done():
            return
        self.results[index] = result
        self.missing -= 1
        if not self.missing:
            self.future.set_result(self.results)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class DynamicBatcher(Generic[T, R]):
    def __init__(self, process: Callable[[list[T]], Sequence[R]], max_batch_size: int,
                 max_batch_wait_ms: float, max_queue_ms: float = 0.0) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.process = process
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_batch_wait_ms) / 1000.0
        self.max_queue = max(0.0, max_queue_ms) / 1000.0
        self.shed = 0
        # When the batch now decoding started (monotonic seconds), None while idle: the liveness
        # check tells a stuck decode thread from a busy one by it.
        self.busy_since: float | None = None
        self.closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="genrec-decode")
        # (item, its request, its index in the request, monotonic time it was queued)
        self._pending: collections.deque[tuple[T, _Request[R], int, float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit_many(self, items: Sequence[T], timeout_s: float | None = None) -> list[R]:
        """The items' results, in order; TimeoutError after `timeout_s` (their queued items are then
        skipped, not decoded)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a test client per test): what waited on the old one cannot be answered.
            self._loop = loop
            self._pending.clear()
            self._timer = None
            self.busy_since = None
        request: _Request[R] = _Request(loop.create_future(), len(items))
        queued = time.monotonic()
        self._pending.extend((item, request, index, queued) for index, item in enumerate(items))
        deadline = None
        if timeout_s is not None:
            deadline = loop.call_later(timeout_s, request.fail, TimeoutError())
        self._dispatch()
        try:
            return await request.future
        finally:
            if deadline is not None:
                deadline.cancel()

    def _dispatch(self) -> None:
        """Starts a batch if the decode thread is idle and one is due; else arms the wait timer."""
        if self.busy_since is not None or self.closed:
            return
        pending = self._pending
        while pending and pending[0][1].future.done():
            pending.popleft()  # timed out or failed while queued
        if not pending:
            return
        now = time.monotonic()
        due = pending[0][3] + self.max_wait
        if len(pending) < self.max_batch_size and now < due:
            if self._timer is None:
                assert self._loop is not None
                self._timer = self._loop.call_at(self._loop.time() + (due - now), self._on_timer)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        live: list[tuple[T, _Request[R], int]] = []
        waits: list[float] = []
        while pending and len(live) < self.max_batch_size:
            item, request, index, queued = pending.popleft()
            if request.future.done():
                continue
            if self.max_queue and now - queued > self.max_queue:
                self.shed += 1
                request.fail(Overloaded(
                    f"the request waited {1000 * (now - queued):.0f} ms in the queue, more than "
                    f"serving.max_queue_ms={1000 * self.max_queue:.0f}: the server is overloaded, retry"))
                continue
            live.append((item, request, index))
            waits.append(now - queued)
        if not live:
            self._dispatch()
            return
        stage = m.STAGE["queue"]
        for wait in waits:
            stage.observe(wait)
        self.busy_since = now
        assert self._loop is not None
        decoding = self._loop.run_in_executor(self._executor, self.process, [item for item, _, _ in live])
        decoding.add_done_callback(lambda done: self._finished(live, done))

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _finished(self, batch: list[tuple[T, _Request[R], int]], done: asyncio.Future[Sequence[R]]) -> None:
        self.busy_since = None
        if done.cancelled():
            for _, request, _ in batch:
                request.fail(Overloaded("the decode worker stopped (the server is shutting down): retry"))
        elif done.exception() is not None:
            exc = done.exception()
            for _, request, _ in batch:  # the requests get the error, the batcher lives on
                request.fail(exc)  # type: ignore[arg-type]
        else:
            for (_, request, index), result in zip(batch, done.result()):
                request.deliver(index, result)
        self._dispatch()

    def stalled_for(self) -> float:
        """Seconds the batch now decoding has run (0 when idle)."""
        started = self.busy_since
        return 0.0 if started is None else time.monotonic() - started

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def run_sync(batcher: DynamicBatcher[Any, Any], items: Sequence[Any]) -> list[Any]:
    """Runs items through the batcher's process function directly (benchmarks, tests)."""
    return list(batcher.process(list(items)))
