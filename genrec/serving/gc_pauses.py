"""Timing the garbage collector's pauses (`gc.callbacks`), in the serving process and in the decode
process, which reports them with each batch it answers (it has no metrics endpoint of its own).

A collection stops every thread of its interpreter. A full one walks every tracked object, and an
interpreter that imported torch holds hundreds of thousands: unfrozen, such a collection in the
decode process stalled every request in flight by about 150 ms (bench_serving, before the decode
process froze its start-up objects with `gc.freeze()`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


class GcPauses:
    """Calls `record(generation, seconds)` after each collection of this interpreter."""

    def __init__(self, record: Callable[[int, float], None]) -> None:
        self.record = record
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.record(int(info["generation"]), time.perf_counter() - self._started)

    @classmethod
    def install_once(cls, record: Callable[[int, float], None]) -> GcPauses:
        """The timer installed in `gc.callbacks`, unless one is there already (then that one)."""
        for callback in gc.callbacks:
            if isinstance(callback, cls):
                return callback
        timer = cls(record)
        gc.callbacks.append(timer)
        return timer


class PauseLog:
    """Pauses kept until `drain()`: the decode process sends them with its next answer."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []

    def record(self, generation: int, seconds: float) -> None:
        self.pauses.append((generation, seconds))

    def drain(self) -> tuple[tuple[int, float], ...]:
        drained, self.pauses = tuple(self.pauses), []
        return drained
