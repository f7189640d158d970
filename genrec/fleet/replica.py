"""One predictor replica as the load test measured it (benchmarks/results/serving_load.json): per
rung, p99 latency against the request rate it carries, and the most it can serve a second.

Below its throughput a replica answers with the measured p99 of that rate (interpolated, and made
non-decreasing in the rate: a dip in a noisy measurement is not a property of the server). Above it,
the surplus queues: the backlog carries over to the next second, and every request waits for it to
drain, so latency climbs for as long as the overload lasts and falls only once the backlog is gone.
A rung whose test never found its limit (it served the highest offered load) is given that load as
its throughput: a lower bound, so the simulation errs towards overload, not away from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# A load point counts as carried, and enters the latency curve, when it served this share of what
# was offered with no errors; the others are overload, which the queue models instead.
CARRIED_SHARE = 0.98
MS = 1e-3


@dataclass(frozen=True)
class RungCurve:
    """p99 (seconds) at each carried rate (requests/s, increasing), and the rung's throughput."""

    rates: tuple[float, ...]
    p99_seconds: tuple[float, ...]
    throughput: float

    @classmethod
    def from_points(cls, points: list[dict[str, Any]], throughput: float) -> RungCurve:
        carried = sorted((p["achieved_qps"], p["p99_ms"] * MS) for p in points
                         if not p["errors"] and p["achieved_qps"] >= CARRIED_SHARE * p["offered_qps"])
        if not carried:
            raise ValueError("a rung of the load test carried no load point: nothing to model its latency on")
        rates = [rate for rate, _ in carried]
        p99 = np.maximum.accumulate([latency for _, latency in carried])
        return cls(tuple(rates), tuple(float(x) for x in p99), float(max(throughput, rates[-1])))

    def p99(self, rate: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(rate, self.rates, self.p99_seconds))


@dataclass(frozen=True)
class ReplicaModel:
    """Every rung of the ladder, narrowest first."""

    rungs: tuple[RungCurve, ...]

    @classmethod
    def from_serving_load(cls, figures: dict[str, Any]) -> ReplicaModel:
        """From the `figures` of serving_load.json: its `rungs`, keyed by rung index."""
        measured = figures["rungs"]
        return cls(tuple(RungCurve.from_points(measured[key]["points"],
                                               measured[key]["throughput_capacity_qps"])
                         for key in sorted(measured, key=int)))

    @property
    def top_rung(self) -> int:
        return len(self.rungs) - 1

    def throughput(self, rungs: np.ndarray) -> np.ndarray:
        return np.array([curve.throughput for curve in self.rungs])[rungs]

    def second(self, rungs: np.ndarray, offered: np.ndarray, backlog: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One second of every replica: (served, backlog after, p99 seconds of this second's requests).
        `rungs`, `offered` (requests arriving at each replica) and `backlog` (requests still queued
        from before) are per replica."""
        capacity = self.throughput(rungs)
        served = np.minimum(offered + backlog, capacity)
        left = offered + backlog - served
        carried = np.minimum(offered, capacity)
        service = np.empty(len(rungs))
        for rung in np.unique(rungs):
            mine = rungs == rung
            service[mine] = self.rungs[int(rung)].p99(carried[mine])
        # A request arriving now waits behind the backlog, which drains at the rung's throughput.
        return served, left, service + left / capacity
