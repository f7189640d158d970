"""One daemon thread for the predictor's periodic chores: the guard's recovery and the feature store
probe. They must run on an idle server too, where no request would trigger them; a thread keeps them
off the event loop, so a slow probe can never delay a request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger("genrec.serving")

# How often the chores run: the guard's recovery is measured in seconds, so a second is fine enough.
HOUSEKEEPING_SECONDS = 1.0


class Housekeeper:
    def __init__(self, chores: Sequence[Callable[[], None]], interval: float = HOUSEKEEPING_SECONDS) -> None:
        self.chores = list(chores)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genrec-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for chore in self.chores:
                try:
                    chore()
                except Exception:  # noqa: BLE001 - a failing chore is logged; the others go on
                    log.exception("housekeeping chore %s failed", getattr(chore, "__qualname__", chore))

    def stop(self) -> None:
        self._stop.set()
