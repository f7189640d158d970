"""Dynamic batching across concurrent requests.

Requests submit items (one per instance) from the event loop. One collector task takes the first
waiting item, then keeps gathering until `max_batch_size` items or `max_batch_wait_ms` have passed,
and hands the batch to one decode thread. While a batch decodes, new items queue up, so under load
batches fill without waiting and at low load an item waits at most `max_batch_wait_ms`.

The decode work runs in a single dedicated thread: torch already uses the machine's cores inside one
call, and keeping it off the event loop lets the server go on accepting and parsing requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from genrec.serving import instruments as m

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """A request waited longer than the queue allows (serving.max_queue_ms): answered 503."""


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
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            # A new event loop (a test client per test) gets its own queue and collector.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect())
        assert self._queue is not None
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in items]
        queued = time.monotonic()
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future, queued))
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            now = time.monotonic()
            live = []
            for item, future, queued in batch:
                if future.done():
                    continue
                if self.max_queue and now - queued > self.max_queue:
                    self.shed += 1
                    future.set_exception(Overloaded(
                        f"the request waited {1000 * (now - queued):.0f} ms in the queue, more than "
                        f"serving.max_queue_ms={1000 * self.max_queue:.0f}: the server is overloaded, retry"))
                    continue
                live.append((item, future))
                m.STAGE["queue"].observe(now - queued)
            if not live:
                continue
            self.busy_since = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.process, [i for i, _ in live])
            except Exception as exc:  # noqa: BLE001 - the requests get the error, the collector lives on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self.busy_since = None
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)

    def stalled_for(self) -> float:
        """Seconds the batch now decoding has run (0 when idle)."""
        started = self.busy_since
        return 0.0 if started is None else time.monotonic() - started

    def close(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def run_sync(batcher: DynamicBatcher[Any, Any], items: Sequence[Any]) -> list[Any]:
    """Runs items through the batcher's process function directly (benchmarks, tests)."""
    return list(batcher.process(list(items)))
