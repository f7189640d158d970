"""The control law: a pure function of state, observation and time (`decide`).

- p99 above `step_down_ratio` x SLO: one rung down (narrower, cheaper), unless inside the cool-down.
- p99 below `step_up_ratio` x SLO for `up_after` consecutive intervals: one rung up, unless inside
  the cool-down, the GPUs are busier than `gpu_util_ceiling`, the busiest replica is near its local
  in-flight guard, or the request rate is above `capacity_margin` of the rate at which that rung last
  broke the threshold (learned capacity, see below).
- Between the two thresholds: stay.

Feed-forward from a load test (`controller.rung_capacity_rps`, optional). A latency reading lags the
load it answers for by the window, and on a fast ramp the widest rung is already deep in its queue
when its p99 finally breaks. With each rung's measured throughput the controller acts on the request
rate instead (over a short `fast_window`, the larger of it and the slow window's): above
`capacity_down_utilisation` of the rung's capacity it moves down at once, skipping rungs as needed
and without the cool-down, since the decision does not wait on a latency window; it moves up only
while the rate is below `capacity_up_utilisation` of the wider rung's capacity. p99 stays the backstop
for anything a capacity table cannot know (a noisy neighbour, a slower node).

Replicas' local guards act between two intervals (one rung down when in-flight requests pass
`serving.inflight_guard`). When a guard has fired and a replica now runs a narrower rung than the
controller's, the controller adopts that rung instead of pushing the old one back over it, learns the
current rate as the ceiling of the rung the guard left, and does not climb while a guard fired within
the fast window.

Learned capacity is our addition to plain hysteresis. Two thresholds alone do not stop flapping at
constant load when the ladder is coarse: if rung r-1 is comfortably under the up threshold and rung r
is over the down threshold at the same load, the controller climbs, breaks, falls and climbs again
every `up_after` intervals. Remembering the per-replica rate at which rung r broke (throughput in
overload is the capacity) lets the controller stay at r-1 until the load has really dropped. A
break at a rate that rung (or a wider one) has already carried calmly is not load: it is noise (a
noisy neighbour on the node, a pause), and no ceiling is learned from it, so one bad interval cannot
keep a rung out of use for `capacity_memory_seconds`.

No traffic at all is not an error: with zero requests `histogram_quantile` is NaN, but the request
rate is a clean 0, so the controller reads it as light load and climbs to the widest rung.

Fail-safes: Prometheus unreachable, or NaN p99 while requests flow (or no series at all): the last
rung is kept for `hold_seconds`, then the controller falls back to `safe_rung`.

The settings are checked with the rest of the config, when it is loaded (`GenrecConfig.check`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from genrec.config import ControllerConfig, ServingConfig


@dataclass(frozen=True)
class LawParams:
    slo_seconds: float
    step_down_ratio: float
    step_up_ratio: float
    up_after: int
    cooldown_seconds: float
    hold_seconds: float
    safe_rung: int
    top_rung: int
    gpu_util_ceiling: float
    up_inflight_limit: float
    capacity_margin: float
    capacity_memory_seconds: float
    # Feed-forward (empty: off): per-replica throughput of each rung, narrowest first.
    rung_capacity: tuple[float, ...]
    capacity_down_utilisation: float
    capacity_up_utilisation: float

    @classmethod
    def from_config(cls, controller: ControllerConfig, serving: ServingConfig) -> LawParams:
        return cls(
            slo_seconds=controller.slo_p99_seconds,
            step_down_ratio=controller.step_down_ratio,
            step_up_ratio=controller.step_up_ratio,
            up_after=controller.up_after,
            cooldown_seconds=controller.cooldown_seconds,
            hold_seconds=controller.hold_seconds,
            safe_rung=controller.safe_rung,
            top_rung=len(serving.beam_ladder) - 1,
            gpu_util_ceiling=controller.gpu_util_ceiling,
            up_inflight_limit=controller.up_inflight_ratio * serving.inflight_guard,
            capacity_margin=controller.capacity_margin,
            capacity_memory_seconds=controller.capacity_memory_seconds,
            rung_capacity=tuple(float(c) for c in controller.rung_capacity_rps),
            capacity_down_utilisation=controller.capacity_down_utilisation,
            capacity_up_utilisation=controller.capacity_up_utilisation,
        )

    @property
    def down_threshold(self) -> float:
        return self.step_down_ratio * self.slo_seconds

    @property
    def up_threshold(self) -> float:
        return self.step_up_ratio * self.slo_seconds


@dataclass(frozen=True)
class Observation:
    """One reading from Prometheus. None means the series is absent; `error` means no answer."""

    p99_seconds: float | None = None
    request_rate: float | None = None
    inflight: float | None = None
    gpu_util: float | None = None
    replicas: int = 1
    error: str | None = None
    # Request rate over controller.fast_window (feed-forward); optional like the GPU reading.
    fast_rate: float | None = None
    # The narrowest rung any replica runs, and local-guard step-downs within the fast window.
    min_rung: float | None = None
    guard_stepdowns: float | None = None

    @property
    def idle(self) -> bool:
        """Prometheus answered and no request arrived in the window: nothing to protect."""
        return (self.error is None and self.request_rate == 0.0
                and (self.p99_seconds is None or math.isnan(self.p99_seconds)))

    @property
    def usable(self) -> bool:
        if self.error is not None:
            return False
        if self.idle:
            return True
        return self.p99_seconds is not None and not math.isnan(self.p99_seconds)

    @property
    def rate_per_replica(self) -> float | None:
        if self.request_rate is None or math.isnan(self.request_rate):
            return None
        return self.request_rate / max(1, self.replicas)

    @property
    def load_per_replica(self) -> float | None:
        """The rate the feed-forward acts on: the larger of the fast and the slow window's, so a
        rise shows as soon as the fast window sees it and a lull in it does not hide a load."""
        rates = [r for r in (self.request_rate, self.fast_rate) if r is not None and not math.isnan(r)]
        return max(rates) / max(1, self.replicas) if rates else None

    @property
    def guard_fired(self) -> bool:
        g = self.guard_stepdowns
        return g is not None and not math.isnan(g) and g > 0


@dataclass(frozen=True)
class LawState:
    rung: int
    # Clock time of the last rung change (None: no change since start and none remembered).
    last_change: float | None
    # Clock time of the last usable observation (the hold timer runs from here).
    last_good: float
    # Consecutive intervals below the step-up threshold.
    calm: int = 0
    fallen_back: bool = False
    # rung -> (per-replica request rate at which it broke the step-down threshold, clock time).
    ceilings: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    # rung -> (highest per-replica request rate it served calmly, clock time): evidence against
    # learning a ceiling from a break that load does not explain (a noisy neighbour, a GC pause).
    calm_rates: Mapping[int, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    action: str  # up | down | hold | fallback
    rung: int
    reason: str


def _fresh(table: Mapping[int, tuple[float, float]], now: float, params: LawParams
           ) -> dict[int, tuple[float, float]]:
    return {r: (rate, t) for r, (rate, t) in table.items() if now - t < params.capacity_memory_seconds}


def calm_floor(calm_rates: Mapping[int, tuple[float, float]], rung: int) -> float:
    """The highest rate `rung` is known to carry calmly: a wider rung is costlier, so what a wider
    rung (or this one) carried calmly, this one carries too."""
    return max((rate for r, (rate, _) in calm_rates.items() if r >= rung), default=0.0)


def capacity_ceiling(ceilings: Mapping[int, tuple[float, float]], rung: int) -> float | None:
    """The learned capacity bound of `rung`: a narrower rung is cheaper, so what broke at a narrower
    rung (or at this one) also bounds this one."""
    bounds = [rate for r, (rate, _) in ceilings.items() if r <= rung]
    return min(bounds) if bounds else None


def feed_forward_rung(load: float, rung: int, params: LawParams) -> int:
    """The widest rung at or below `rung` whose capacity carries `load` within the down
    utilisation. If none does, the widest rung of the highest capacity: a narrower rung that the
    load test found no faster (the CPU table's three narrowest rungs are equal) would give up
    recall for nothing, and the p99 law still steps further down if that rung breaks."""
    for r in range(rung, 0, -1):
        if load <= params.capacity_down_utilisation * params.rung_capacity[r]:
            return r
    most = max(params.rung_capacity[: rung + 1])
    return max(r for r in range(rung + 1) if params.rung_capacity[r] >= most)


def decide(state: LawState, obs: Observation, now: float, params: LawParams) -> tuple[LawState, Decision]:
    """The control law: the next state and what was decided. Pure: time comes in as `now`."""
    ceilings = _fresh(state.ceilings, now, params)
    state = dataclasses.replace(state, calm_rates=_fresh(state.calm_rates, now, params))
    if not obs.usable:
        why = obs.error or "p99 is NaN or absent while requests flow"
        held_for = now - state.last_good
        if state.fallen_back or held_for < params.hold_seconds:
            new = dataclasses.replace(state, calm=0, ceilings=ceilings)
            suffix = "already on the safe rung" if state.fallen_back else f"holding {held_for:.0f}s"
            return new, Decision("hold", state.rung, f"no usable reading ({why}); {suffix}")
        changed = state.rung != params.safe_rung
        new = dataclasses.replace(state, rung=params.safe_rung, calm=0, fallen_back=True, ceilings=ceilings,
                                  last_change=now if changed else state.last_change)
        return new, Decision("fallback", params.safe_rung,
                             f"no usable reading for {held_for:.0f}s ({why}): safe rung {params.safe_rung}")

    state = dataclasses.replace(state, last_good=now, fallen_back=False, ceilings=ceilings)
    cooled = state.last_change is None or now - state.last_change >= params.cooldown_seconds
    rate = obs.rate_per_replica
    p99 = 0.0 if obs.idle else float(obs.p99_seconds)  # type: ignore[arg-type]

    if obs.guard_fired and obs.min_rung is not None and not math.isnan(obs.min_rung) \
            and int(obs.min_rung) < state.rung:
        rung = max(0, int(obs.min_rung))
        # A guard fires on a queue, not on a latency reading that noise could explain: the rung it
        # left cannot carry this rate, so remember it as that rung's ceiling (else the controller
        # climbs back, the guard fires again, and the ladder flaps at constant load).
        if rate is not None:
            ceilings = {**ceilings, rung + 1: (rate, now)}
        new = dataclasses.replace(state, rung=rung, last_change=now, calm=0, ceilings=ceilings)
        return new, Decision("down", rung, f"a replica's local in-flight guard stepped down to rung {rung}")

    load = obs.load_per_replica
    if params.rung_capacity and load is not None:
        target = feed_forward_rung(load, state.rung, params)
        if target < state.rung:
            new = dataclasses.replace(state, rung=target, last_change=now, calm=0)
            return new, Decision("down", target, (
                f"rate {load:.1f}/s per replica > {params.capacity_down_utilisation:.2f} x "
                f"{params.rung_capacity[state.rung]:.1f}/s, the capacity of rung {state.rung}"))

    if p99 > params.down_threshold:
        state = dataclasses.replace(state, calm=0)
        if state.rung == 0:
            return state, Decision("hold", 0, f"p99 {p99:.4f}s over threshold, already on the narrowest rung")
        if not cooled:
            return state, Decision("hold", state.rung, f"p99 {p99:.4f}s over threshold, in cool-down")
        # Learn a ceiling only if load explains the break: the rate is clearly above what this
        # rung (or a wider one) carried calmly; else it was noise, and remembering it would keep
        # the rung out of use for capacity_memory_seconds at a load it handles.
        if rate is not None and rate * params.capacity_margin > calm_floor(state.calm_rates, state.rung):
            ceilings = {**ceilings, state.rung: (rate, now)}
        new = dataclasses.replace(state, rung=state.rung - 1, last_change=now, ceilings=ceilings)
        return new, Decision("down", new.rung, f"p99 {p99:.4f}s > {params.down_threshold:.4f}s")

    if p99 >= params.up_threshold:
        return dataclasses.replace(state, calm=0), Decision("hold", state.rung, f"p99 {p99:.4f}s in the band")

    state = dataclasses.replace(state, calm=state.calm + 1)
    if rate is not None and rate >= state.calm_rates.get(state.rung, (0.0, 0.0))[0]:
        state = dataclasses.replace(state, calm_rates={**state.calm_rates, state.rung: (rate, now)})
    if rate is not None and state.rung in ceilings and rate > ceilings[state.rung][0]:
        # This rung now carries more than it broke at before: the old figure was pessimistic.
        ceilings = {**ceilings, state.rung: (rate, now)}
        state = dataclasses.replace(state, ceilings=ceilings)
    blocked = _up_blocker(state, obs, rate, cooled, params)
    if blocked:
        return state, Decision("hold", state.rung, f"p99 {p99:.4f}s calm; {blocked}")
    new = dataclasses.replace(state, rung=state.rung + 1, last_change=now, calm=0)
    return new, Decision("up", new.rung,
                         f"p99 {p99:.4f}s < {params.up_threshold:.4f}s for {state.calm} intervals")


def _up_blocker(state: LawState, obs: Observation, rate: float | None, cooled: bool,
                params: LawParams) -> str:
    if state.rung >= params.top_rung:
        return "already on the widest rung"
    if state.calm < params.up_after:
        return f"calm for {state.calm}/{params.up_after} intervals"
    if not cooled:
        return "in cool-down"
    if obs.guard_fired:
        return "a replica's local guard fired within the fast window"
    load = obs.load_per_replica
    if params.rung_capacity and load is not None:
        wider = params.rung_capacity[state.rung + 1]
        if load > params.capacity_up_utilisation * wider:
            return (f"rate {load:.1f}/s per replica > {params.capacity_up_utilisation:.2f} x {wider:.1f}/s, "
                    f"the capacity of rung {state.rung + 1}")
    if obs.gpu_util is not None and not math.isnan(obs.gpu_util) and obs.gpu_util >= params.gpu_util_ceiling:
        return f"GPU utilisation {obs.gpu_util:.0f}% >= {params.gpu_util_ceiling:.0f}%"
    if obs.inflight is not None and not math.isnan(obs.inflight) and obs.inflight >= params.up_inflight_limit:
        return f"{obs.inflight:.0f} requests in flight on the busiest replica"
    ceiling = capacity_ceiling(state.ceilings, state.rung + 1)
    if rate is not None and ceiling is not None and rate >= params.capacity_margin * ceiling:
        return (f"rate {rate:.1f}/s per replica >= {params.capacity_margin:.2f} x {ceiling:.1f}/s, "
                f"where rung {state.rung + 1} broke")
    return ""
