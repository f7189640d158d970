"""Logging for a server facing hostile traffic: one line per client mistake, and a rate limit.

A client error (4xx) is the client's problem: it gets the full message in its response, and the
server log gets one WARNING line with no traceback. An attacker sending thousands of bad requests
must not be able to fill the disk or bury real errors, so `RateLimitFilter` lets at most a set
number of records a minute through each logger it guards and counts the rest; the next record let
through says how many were dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

# The logger client errors go to (one line each, rate-limited).
CLIENT_ERRORS = "genrec.serving.client_errors"
WINDOW_SECONDS = 60.0
# Loggers that log a line per bad request on their own: uvicorn's "Invalid HTTP request received."
# among them.
NOISY_LOGGERS = ("uvicorn.error",)


class RateLimitFilter(logging.Filter):
    """At most `per_window` WARNING-or-lower records per `window` seconds; ERROR and above always
    pass (a server bug must never be hidden by a flood of client mistakes)."""

    def __init__(self, per_window: int, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 on_drop: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.per_window = per_window
        self.on_drop = on_drop
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._passed = 0
        self.dropped = 0
        self._unreported = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        with self._lock:
            now = self.clock()
            if now - self._started >= self.window:
                self._started, self._passed = now, 0
            if self._passed >= self.per_window:
                self.dropped += 1
                self._unreported += 1
                if self.on_drop is not None:
                    self.on_drop()
                return False
            self._passed += 1
            if self._unreported:
                record.msg = f"{record.msg} ({self._unreported} similar lines dropped by the rate limit)"
                self._unreported = 0
        return True


def install_rate_limits(per_minute: int, on_drop: Callable[[], None] | None = None) -> None:
    """Guards the client-error logger and the noisy third-party loggers (idempotent). `on_drop` is
    called for each line dropped (a counter, so that a flood shows even if no later line reports it)."""
    for name in (CLIENT_ERRORS, *NOISY_LOGGERS):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RateLimitFilter)]:
            logger.removeFilter(old)
        logger.addFilter(RateLimitFilter(per_minute, on_drop=on_drop))


def client_error(status: int, method: str, path: str, message: str) -> None:
    """One WARNING line for a request the server refused (paths cut short: they are client input)."""
    logging.getLogger(CLIENT_ERRORS).warning("%d %s %s: %s", status, method[:10], path[:120],
                                             message[:300])
