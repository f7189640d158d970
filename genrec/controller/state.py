"""The controller's state across restarts, in `controller.state_file`.

Written atomically whenever anything a restart needs changes: the rung, the time of the last change
(the cool-down), the fallback flag, the learned ceilings, the calm rates and the count of calm
intervals. Read back at start, so a restart resumes the same rung, cool-down and learned capacity
instead of flapping to a default. Clock times are stored as wall times: the monotonic clock does not
survive a restart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from genrec.controller.law import LawState
from genrec.io import write_json

log = logging.getLogger("genrec.controller")


def persisted(state: LawState) -> tuple[Any, ...]:
    """What `save_state` writes: the state is saved whenever this changes."""
    return (state.rung, state.last_change, state.fallen_back, state.calm, dict(state.ceilings),
            dict(state.calm_rates))


def save_state(path: str | Path, state: LawState, clock_now: float, wall_now: float) -> None:
    """Clock times become wall times: the monotonic clock does not survive a restart."""

    def wall(t: float) -> float:
        return wall_now - (clock_now - t)

    write_json({
        "rung": state.rung,
        "last_change": None if state.last_change is None else wall(state.last_change),
        "fallen_back": state.fallen_back,
        "calm": state.calm,
        "ceilings": {str(r): [rate, wall(t)] for r, (rate, t) in state.ceilings.items()},
        "calm_rates": {str(r): [rate, wall(t)] for r, (rate, t) in state.calm_rates.items()},
        "written_at": wall_now,
    }, path)


def load_state(path: str | Path, top_rung: int, clock_now: float, wall_now: float) -> LawState | None:
    """The saved state, or None (missing, unreadable, or naming a rung the ladder no longer has)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        rung = int(raw["rung"])
        if not 0 <= rung <= top_rung:
            log.warning("state file %s names rung %d, outside the ladder 0..%d: ignored",
                        path, rung, top_rung)
            return None

        def clock(t: float) -> float:
            return clock_now - (wall_now - float(t))

        def table(key: str) -> dict[int, tuple[float, float]]:
            return {int(r): (float(rate), clock(t)) for r, (rate, t) in (raw.get(key) or {}).items()
                    if 0 <= int(r) <= top_rung}

        ceilings, calm_rates = table("ceilings"), table("calm_rates")
        last = raw.get("last_change")
        return LawState(rung=rung, last_change=None if last is None else clock(last), last_good=clock_now,
                        fallen_back=bool(raw.get("fallen_back", False)), ceilings=ceilings,
                        calm_rates=calm_rates, calm=max(0, int(raw.get("calm", 0))))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("state file %s is unreadable (%s): ignored", path, exc)
        return None
