"""Progress of long work as plain lines, for logs without a terminal (pipeline steps, Ray drivers).

    progress = LineProgress("ingest: buckets")
    for done, total in ...:
        progress(done, total)      # prints at most every `every_seconds`, and always the last step
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between two progress lines of one task: a line per bucket would flood a 1,000-bucket run.
DEFAULT_EVERY_SECONDS = 5.0


class LineProgress:
    """A `progress(done, total)` callback that prints `what: done/total (pct) in Ns` lines."""

    def __init__(self, what: str, every_seconds: float = DEFAULT_EVERY_SECONDS,
                 stream: TextIO | None = None) -> None:
        self.what = what
        self.every_seconds = every_seconds
        self.stream = stream
        self.started = time.perf_counter()
        self.last_line = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last_line < self.every_seconds:
            return
        self.last_line = now
        share = f" ({done / total:.0%})" if total else ""
        print(f"{self.what}: {done}/{total}{share} in {now - self.started:.1f}s",
              file=self.stream or sys.stdout, flush=True)
