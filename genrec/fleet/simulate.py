"""A day of the predictor fleet under one scaling policy, second by second.

Each second: the replicas that are ready share the arriving requests equally (the Service balances
them); each serves at its rung as the load test measured it (`genrec.fleet.replica`). Every
`controller.interval_seconds` the beam controller reads what Prometheus would show over its windows
and runs its control law, `genrec.controller.law.decide`, the very function the controller process
calls, with the simulated clock as its `now`; the rung is pushed to every ready replica at once. A
replica that becomes ready starts at `serving.default_rung`, as the predictor does, until the next
interval pushes the controller's rung to it. Every `autoscaling.polling_interval_seconds` KEDA reads
its trigger and the HPA moves the replica count (`genrec.fleet.autoscaler`); a new replica serves
after a start-up delay drawn per replica, and a scale-in removes replicas that are still starting
first, as a ReplicaSet does. What a removed replica still had queued is drained by the others.

Left out, and why it does not flatter the policies that use the controller: the replicas' local
in-flight guards (they would only step down sooner in an overload) and Prometheus' scrape interval
(the windows already lag the load by their length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from genrec.config import GenrecConfig
from genrec.controller.law import LawParams, LawState, Observation, decide
from genrec.fleet.autoscaler import KedaAutoscaler, ScaleChange
from genrec.fleet.replica import ReplicaModel
from genrec.fleet.trigger import widest_capacity

PolicyName = Literal["fixed_widest_autoscaled", "controller_fixed_fleet", "both", "both_utilisation_trigger"]
Trigger = Literal["none", "widest_rung_demand", "utilisation"]
SECONDS_PER_MINUTE = 60
# Little's law with the median taken as half the p99: the requests in flight on a replica.
MEDIAN_OVER_P99 = 0.5
# The utilisation trigger's target (the base manifests' former HPA: scaleMetric cpu, scaleTarget 60).
UTILISATION_TARGET = 0.6


@dataclass(frozen=True)
class Policy:
    name: PolicyName
    # The beam controller runs (else every replica is pinned to the widest rung).
    controller: bool
    # What KEDA scales on: "widest_rung_demand" (request rate / the widest rung's capacity, the
    # ScaledObject of manifests/base), "utilisation" (busy share of each replica at its current rung:
    # what a CPU or GPU-utilisation HPA sees) or "none" (a fixed fleet).
    trigger: Trigger
    description: str


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("fixed_widest_autoscaled", False, "widest_rung_demand",
           "widest beam always, KEDA on the widest rung's demand"),
    Policy("controller_fixed_fleet", True, "none", "beam controller alone on a fixed fleet"),
    Policy("both", True, "widest_rung_demand", "beam controller and KEDA on the widest rung's demand"),
    Policy("both_utilisation_trigger", True, "utilisation",
           "beam controller and an autoscaler on utilisation (the two fight)"),
)}


@dataclass
class DayRecord:
    """Per second of the day, and the scale changes."""

    policy: Policy
    arrivals: np.ndarray
    requested: np.ndarray  # replicas asked for (ready or starting): what the GPUs cost
    ready: np.ndarray
    rung: np.ndarray  # the rung most of the second's requests were served at
    p99: np.ndarray  # the slowest replica's p99 of the second (seconds)
    recall_lost: np.ndarray  # requests x (widest rung's recall - their rung's recall)
    changes: list[ScaleChange] = field(default_factory=list)
    rung_changes: int = 0


@dataclass(frozen=True)
class DaySummary:
    minutes_within_slo: float  # share of minutes whose every second's p99 is within the SLO
    minutes_outside_slo: int
    recall_given_up: float  # share of the widest rung's recall@10, request-weighted
    replica_hours: float
    scale_events: int
    scale_ins: int
    most_scale_ins_per_stabilisation_window: int
    rung_changes: int
    mean_replicas: float
    peak_replicas: int


class Fleet:
    """The replicas of one simulated day: rung, queued requests and the second each serves from."""

    def __init__(self, replicas: int, rung: int) -> None:
        self.rung = np.full(replicas, rung, dtype=np.int64)
        self.backlog = np.zeros(replicas)
        self.ready_at = np.zeros(replicas)

    def __len__(self) -> int:
        return len(self.rung)

    def ready(self, now: float) -> np.ndarray:
        return self.ready_at <= now

    def resize(self, wanted: int, now: float, rung: int, startup: np.random.Generator,
               startup_range: tuple[float, float]) -> None:
        if wanted > len(self):
            new = wanted - len(self)
            self.rung = np.concatenate([self.rung, np.full(new, rung, dtype=np.int64)])
            self.backlog = np.concatenate([self.backlog, np.zeros(new)])
            self.ready_at = np.concatenate([self.ready_at, now + startup.uniform(*startup_range, new)])
        elif wanted < len(self):
            # A ReplicaSet removes pods that are not ready first, then the youngest.
            keep = np.sort(np.argsort(self.ready_at, kind="stable")[:wanted])
            dropped = float(self.backlog.sum() - self.backlog[keep].sum())
            self.rung, self.backlog, self.ready_at = self.rung[keep], self.backlog[keep], self.ready_at[keep]
            serving = self.ready(now)
            if dropped and serving.any():
                self.backlog[serving] += dropped / serving.sum()


def _window_seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(float(duration[:-1]) * units[duration[-1]])


def _observation(record: DayRecord, inflight: float, t: int, window: int, fast_window: int,
                 replicas: int, rung: int) -> Observation:
    """What Prometheus shows the controller at second t: p99 and rate over its window, the rate over
    its fast window, the busiest replica's in-flight requests."""
    start, fast_start = max(0, t - window), max(0, t - fast_window)
    if t == 0:
        return Observation(p99_seconds=math.nan, request_rate=0.0, replicas=replicas, min_rung=rung,
                           guard_stepdowns=0.0)
    rate = float(record.arrivals[start:t].mean())
    latencies = record.p99[start:t][record.arrivals[start:t] > 0]
    p99 = float(latencies.max()) if len(latencies) else math.nan
    return Observation(p99_seconds=p99, request_rate=rate, inflight=inflight, replicas=replicas,
                       fast_rate=float(record.arrivals[fast_start:t].mean()), min_rung=float(rung),
                       guard_stepdowns=0.0)


def initial_replicas(config: GenrecConfig, policy: Policy, first_rate: float, fixed_replicas: int) -> int:
    """Where the day starts: the fixed fleet, or the autoscaler settled on the first second's load."""
    a = config.autoscaling
    if policy.trigger == "none":
        return fixed_replicas
    widest = widest_capacity(config)
    target = a.target_utilisation if policy.trigger == "widest_rung_demand" else UTILISATION_TARGET
    return min(max(math.ceil(first_rate / widest / target), a.min_replicas), a.max_replicas)


def simulate_day(config: GenrecConfig, model: ReplicaModel, arrivals: np.ndarray, policy: Policy,
                 recall: Sequence[float], fixed_replicas: int = 0) -> DayRecord:
    """The day under `policy`: `arrivals` per second, `recall` of each rung (narrowest first)."""
    controller, serving, a = config.controller, config.serving, config.autoscaling
    if len(recall) != len(model.rungs) or len(model.rungs) != len(serving.beam_ladder):
        raise ValueError(f"the replica model has {len(model.rungs)} rungs and recall {len(recall)}; "
                         f"serving.beam_ladder has {len(serving.beam_ladder)}: measure the same ladder")
    if policy.trigger == "none" and fixed_replicas < 1:
        raise ValueError("a fixed fleet needs at least one replica")
    top = model.top_rung
    params = LawParams.from_config(controller, serving)
    seconds = len(arrivals)
    replicas = initial_replicas(config, policy, float(arrivals[0]), fixed_replicas)
    fleet = Fleet(replicas, top)
    state = LawState(rung=top, last_change=None, last_good=0.0)
    autoscaler = KedaAutoscaler(a, replicas) if policy.trigger != "none" else None
    startup = np.random.default_rng(config.fleet.seed + 1)
    startup_range = (config.fleet.startup_seconds_min, config.fleet.startup_seconds_max)
    record = DayRecord(policy, arrivals, np.zeros(seconds, dtype=np.int64), np.zeros(seconds, dtype=np.int64),
                       np.zeros(seconds, dtype=np.int64), np.zeros(seconds), np.zeros(seconds))
    window, fast_window = _window_seconds(controller.window), _window_seconds(controller.fast_window)
    trigger_window = _window_seconds(a.window)
    interval = max(1, round(controller.interval_seconds))
    recall_gap = float(recall[top]) - np.asarray(recall, dtype=np.float64)
    capacity = widest_capacity(config) if policy.trigger == "widest_rung_demand" else 0.0
    utilisation = np.zeros(seconds)
    inflight = 0.0
    for t in range(seconds):
        ready = fleet.ready(t)
        if policy.controller and t % interval == 0:
            rungs_now = fleet.rung[ready]
            obs = _observation(record, inflight, t, window, fast_window, int(ready.sum()),
                               int(rungs_now.min()) if len(rungs_now) else state.rung)
            before = state.rung
            state, _ = decide(state, obs, float(t), params)
            record.rung_changes += int(state.rung != before)
            fleet.rung[ready] = state.rung
        if autoscaler is not None and t % a.polling_interval_seconds == 0 and t > 0:
            start = max(0, t - trigger_window)
            if policy.trigger == "widest_rung_demand":
                metric, target = float(arrivals[start:t].mean()) / capacity, a.target_utilisation
            else:
                metric, target = float(utilisation[start:t].mean()), UTILISATION_TARGET
            wanted = autoscaler.poll(float(t), metric, target)
            joining = serving.default_rung if policy.controller else top
            fleet.resize(wanted, float(t), joining, startup, startup_range)
            ready = fleet.ready(t)
        if not policy.controller:
            fleet.rung[:] = top
        n = int(ready.sum())
        record.requested[t], record.ready[t] = len(fleet), n
        if n == 0:
            record.p99[t] = math.inf
            record.rung[t] = state.rung
            continue
        offered = np.full(n, arrivals[t] / n)
        served, backlog, p99 = model.second(fleet.rung[ready], offered, fleet.backlog[ready])
        fleet.backlog[ready] = backlog
        rungs = fleet.rung[ready]
        record.p99[t] = float(p99.max())
        record.rung[t] = int(np.bincount(rungs).argmax())
        record.recall_lost[t] = float((offered * recall_gap[rungs]).sum())
        inflight = float((backlog + offered * p99 * MEDIAN_OVER_P99).max())
        utilisation[t] = float(np.minimum(1.0, offered / model.throughput(rungs)).sum())
    record.changes = list(autoscaler.changes) if autoscaler is not None else []
    return record


def summarise(record: DayRecord, config: GenrecConfig, recall: Sequence[float]) -> DaySummary:
    slo = config.controller.slo_p99_seconds
    minutes = len(record.p99) // SECONDS_PER_MINUTE
    per_minute = record.p99[: minutes * SECONDS_PER_MINUTE].reshape(minutes, SECONDS_PER_MINUTE).max(axis=1)
    outside = int((per_minute > slo).sum())
    window = config.autoscaling.scale_down_stabilisation_seconds
    ins = [c.time for c in record.changes if c.after < c.before]
    most = max((sum(1 for u in ins if t <= u < t + window) for t in ins), default=0)
    top = float(recall[-1])
    total = float(record.arrivals.sum())
    return DaySummary(
        minutes_within_slo=1.0 - outside / minutes,
        minutes_outside_slo=outside,
        recall_given_up=float(record.recall_lost.sum()) / (top * total) if total and top else 0.0,
        replica_hours=float(record.requested.sum()) / 3600.0,
        scale_events=len(record.changes),
        scale_ins=len(ins),
        most_scale_ins_per_stabilisation_window=most,
        rung_changes=record.rung_changes,
        mean_replicas=float(record.requested.mean()),
        peak_replicas=int(record.requested.max()),
    )
