"""The beam-width controller: reads Prometheus, moves along the beam ladder, pushes the rung to replicas.

Beam width is the fast knob for latency (replica autoscaling is the slow one). Every
`controller.interval_seconds` the controller

1. finds the predictor replicas (a fixed list locally, the Endpoints of a Service in a cluster);
2. asks Prometheus for p99 latency, request rate, the busiest replica's in-flight requests and,
   where a DCGM exporter runs, GPU utilisation;
3. runs the control law (`decide`, a pure function of state, observation and time);
4. pushes the chosen rung to every replica's admin endpoint, each replica on its own task with
   retries and back-off, so a slow or refusing replica never holds up the others or the loop.

The control law:

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
rung is kept for `hold_seconds`, then the controller falls back to `safe_rung`. The rung, the time of
the last change and the learned capacities are written atomically to `state_file` on every change,
and read back at start, so a restart resumes the same rung (and cool-down) instead of flapping to a
default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from genrec.config import ConfigError, ControllerConfig, ServingConfig
from genrec.io import write_json
from genrec.serving import metrics as names
from genrec.serving.policy import BeamLadder

log = logging.getLogger("genrec.controller")

ADMIN_PATH = "/admin/beam-policy"
# Status codes after which retrying the same push cannot help: the replica rejects the rung itself
# (its ladder differs from ours). Everything else (401 while a rotated Secret propagates, 403, 5xx,
# timeouts, refused connections) is retried with back-off.
PERMANENT_PUSH_FAILURES = frozenset({400, 422})

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


# ------------------------------------------------------------------------------------------------
# Control law (pure)
# ------------------------------------------------------------------------------------------------


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
        check_controller_config(controller, serving)
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
    utilisation (rung 0 if none does)."""
    for r in range(rung, 0, -1):
        if load <= params.capacity_down_utilisation * params.rung_capacity[r]:
            return r
    return 0


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


# ------------------------------------------------------------------------------------------------
# Config checks
# ------------------------------------------------------------------------------------------------


def check_controller_config(controller: ControllerConfig, serving: ServingConfig) -> None:
    c = controller
    if c.slo_p99_seconds <= 0:
        raise ConfigError("controller.slo_p99_seconds must be positive")
    if not 0 < c.step_up_ratio < c.step_down_ratio:
        raise ConfigError("controller: need 0 < step_up_ratio < step_down_ratio (the hysteresis band)")
    if c.up_after < 1:
        raise ConfigError("controller.up_after must be at least 1")
    for name in ("interval_seconds", "query_timeout_seconds", "push_timeout_seconds", "resync_seconds",
                 "capacity_memory_seconds"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"controller.{name} must be positive")
    for name in ("cooldown_seconds", "hold_seconds", "push_backoff_seconds", "push_retries",
                 "up_inflight_ratio"):
        if getattr(c, name) < 0:
            raise ConfigError(f"controller.{name} must be non-negative")
    if not 0 < c.capacity_margin <= 1:
        raise ConfigError("controller.capacity_margin must be in (0, 1]")
    for name in ("window", "fast_window"):
        if not _DURATION.match(getattr(c, name)):
            raise ConfigError(f"controller.{name}={getattr(c, name)!r} is not a Prometheus duration "
                              "such as 30s or 1m")
    if c.rung_capacity_rps:
        capacity = list(c.rung_capacity_rps)
        if len(capacity) != len(serving.beam_ladder):
            raise ConfigError(f"controller.rung_capacity_rps has {len(capacity)} entries; it needs one per "
                              f"rung of serving.beam_ladder ({len(serving.beam_ladder)}), narrowest first, "
                              "or none to turn the feed-forward off")
        if any(not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 for x in capacity):
            raise ConfigError(f"controller.rung_capacity_rps={capacity}: every entry must be a positive "
                              "number of requests/s")
        if any(b > a for a, b in zip(capacity, capacity[1:])):
            raise ConfigError(f"controller.rung_capacity_rps={capacity}: a wider rung cannot carry more "
                              "than a narrower one; list the capacities narrowest rung first")
    if not 0 < c.capacity_up_utilisation < c.capacity_down_utilisation <= 1:
        raise ConfigError("controller: need 0 < capacity_up_utilisation < capacity_down_utilisation <= 1 "
                          "(the feed-forward's hysteresis band)")
    if not 0 <= c.safe_rung < len(serving.beam_ladder):
        raise ConfigError(f"controller.safe_rung={c.safe_rung} must name a rung of serving.beam_ladder")


# ------------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------------


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or did not answer a query."""


def controller_queries(c: ControllerConfig) -> dict[str, str]:
    sel, w = c.selector, c.window
    return {
        # Aggregated over replicas: the policy is one for all, so is the latency it answers for.
        "p99": f"histogram_quantile(0.99, sum by (le) (rate({names.REQUEST_SECONDS}_bucket{{{sel}}}[{w}])))",
        "rate": f"sum(rate({names.REQUESTS}{{{sel}}}[{w}]))",
        # The busiest replica: its local guard is what steps in first.
        "inflight": f"max({names.INFLIGHT}{{{sel}}})",
        "gpu": f"avg(DCGM_FI_DEV_GPU_UTIL{{{c.gpu_selector}}})",
        "fast_rate": f"sum(rate({names.REQUESTS}{{{sel}}}[{c.fast_window}]))",
        "min_rung": f"min({names.BEAM_RUNG}{{{sel}}})",
        "guard": f"sum(increase({names.GUARD_STEPDOWNS}{{{sel}}}[{c.fast_window}]))",
    }


class PrometheusClient:
    def __init__(self, base_url: str, http: httpx.AsyncClient, timeout: float) -> None:
        self.url = base_url.rstrip("/") + "/api/v1/query"
        self.http = http
        self.timeout = timeout

    async def scalar(self, promql: str) -> float | None:
        """The single value of an instant query; None for an empty result (no such series)."""
        try:
            response = await self.http.get(self.url, params={"query": promql}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PrometheusError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
            if body.get("status") != "success":
                raise PrometheusError(f"query failed: {body.get('error', body)}")
            result = body["data"]["result"]
            if body["data"]["resultType"] == "scalar":
                return float(result[1])
            if not result:
                return None
            return float(result[0]["value"][1])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise PrometheusError(f"unexpected answer: {response.text[:200]}") from exc


async def observe(prom: PrometheusClient, queries: Mapping[str, str], replicas: int) -> Observation:
    keys = list(queries)
    answers = await asyncio.gather(*(prom.scalar(queries[k]) for k in keys), return_exceptions=True)
    values = dict(zip(keys, answers))
    for key in ("p99", "rate", "inflight"):
        if isinstance(values[key], BaseException):
            return Observation(replicas=replicas, error=f"{key}: {values[key]}")
    def optional(key: str) -> float | None:
        # Optional readings: an error or an absent series just means no such signal.
        value = values.get(key)
        return None if isinstance(value, BaseException) else value

    return Observation(
        p99_seconds=values["p99"],  # type: ignore[arg-type]
        request_rate=values["rate"],  # type: ignore[arg-type]
        inflight=values["inflight"],  # type: ignore[arg-type]
        gpu_util=optional("gpu"),
        replicas=replicas,
        fast_rate=optional("fast_rate"),
        min_rung=optional("min_rung"),
        guard_stepdowns=optional("guard"),
    )


# ------------------------------------------------------------------------------------------------
# Replicas
# ------------------------------------------------------------------------------------------------


def _host(ip: str) -> str:
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def parse_endpoints(doc: Mapping[str, Any], port: int) -> list[str]:
    """Base URLs of the ready addresses of a v1 Endpoints document that serve `port`.

    Endpoints list target (container) ports, so `port` is the predictor's container port. An address
    in `notReadyAddresses` is skipped: it is starting or failing its probe, and pushing to it would
    only count errors; it gets the policy once it turns ready. A subset without ports (a headless
    Service without ports) is taken to serve `port`.
    """
    urls: set[str] = set()
    for subset in doc.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or []]
        if ports and port not in ports:
            continue
        for address in subset.get("addresses") or []:
            if address.get("ip"):
                urls.add(f"http://{_host(address['ip'])}:{port}")
    return sorted(urls)


class StaticReplicas:
    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = [u.rstrip("/") for u in urls]

    async def discover(self) -> list[str]:
        return list(self.urls)


class KubernetesReplicas:
    """The ready addresses of a Service, read from its Endpoints object with the `kubernetes` client.

    The `kubernetes` client is pinned in requirements.lock (kfp depends on it), so the image has it.
    In a pod the client uses the service account (token and CA under
    /var/run/secrets/kubernetes.io/serviceaccount); outside one, the local kubeconfig. The Role in
    manifests/base/controller.yaml allows `get` on this one Endpoints object only. The raw JSON is
    parsed (not the client's models), so the same `parse_endpoints` serves every path; it is read
    once per interval, so replicas that come and go are picked up within one interval.
    """

    def __init__(self, service: str, namespace: str, port: int, api_client: Any = None) -> None:
        self.service, self.namespace, self.port = service, namespace, port
        self._api_client = api_client
        self._api: Any = None

    def _core(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            if self._api_client is None:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
                self._api_client = client.ApiClient()
            self._api = client.CoreV1Api(self._api_client)
        return self._api

    def _read(self) -> list[str]:
        response = self._core().read_namespaced_endpoints(self.service, self.namespace,
                                                          _preload_content=False)
        return parse_endpoints(json.loads(response.data), self.port)

    async def discover(self) -> list[str]:
        return await asyncio.to_thread(self._read)


# ------------------------------------------------------------------------------------------------
# Pushing policies
# ------------------------------------------------------------------------------------------------


class ReplicaPusher:
    """Pushes the rung to each replica on its own task; retries with exponential back-off.

    `reconcile` never waits: a replica that times out or refuses only delays itself. A newer rung
    cancels an older push in progress. A replica that acknowledged the rung is left alone until
    `resync_seconds` have passed (a process restarted at the same address comes back on its default
    rung; a new address is a new replica and is pushed at once).
    """

    def __init__(self, http: httpx.AsyncClient, token: str, c: ControllerConfig, on_error: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.http, self.token = http, token
        self.timeout, self.retries = c.push_timeout_seconds, c.push_retries
        self.backoff = c.push_backoff_seconds
        self.resync = c.resync_seconds
        self.on_error, self.clock = on_error, clock
        self.acked: dict[str, tuple[int, float]] = {}
        self.tasks: dict[str, tuple[int, asyncio.Task[bool]]] = {}

    def reconcile(self, urls: Sequence[str], rung: int) -> None:
        now = self.clock()
        for gone in set(self.tasks) - set(urls):
            self.tasks.pop(gone)[1].cancel()
        for gone in set(self.acked) - set(urls):
            del self.acked[gone]
        for url in urls:
            running = self.tasks.get(url)
            if running and not running[1].done():
                if running[0] == rung:
                    continue
                running[1].cancel()
            acked = self.acked.get(url)
            if acked and acked[0] == rung and now - acked[1] < self.resync:
                continue
            self.tasks[url] = (rung, asyncio.create_task(self._push(url, rung)))

    async def wait(self) -> None:
        """Waits for the pushes in progress (tests, shutdown)."""
        running = [t for _, t in self.tasks.values() if not t.done()]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def cancel(self) -> None:
        for _, task in self.tasks.values():
            task.cancel()

    async def _push(self, url: str, rung: int) -> bool:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            permanent = False
            try:
                response = await self.http.put(url + ADMIN_PATH, json={"rung": rung}, timeout=self.timeout,
                                               headers={"Authorization": f"Bearer {self.token}"})
                if response.status_code == 200 and _acknowledges(response, rung):
                    self.acked[url] = (rung, self.clock())
                    if attempt:
                        log.info("replica %s took rung %d after %d retries", url, rung, attempt)
                    return True
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                permanent = response.status_code in PERMANENT_PUSH_FAILURES
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.on_error()
            last = permanent or attempt == self.retries
            log.warning("push of rung %d to %s failed (attempt %d/%d): %s%s", rung, url, attempt + 1,
                        self.retries + 1, error, "; giving up until the next interval" if last else "")
            if last:
                return False
            await asyncio.sleep(delay)
            delay *= 2
        return False


def _acknowledges(response: httpx.Response, rung: int) -> bool:
    try:
        return int(response.json()["rung"]) == rung
    except (ValueError, KeyError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------
# State file
# ------------------------------------------------------------------------------------------------


def save_state(path: str | Path, state: LawState, clock_now: float, wall_now: float) -> None:
    """Clock times become wall times: the monotonic clock does not survive a restart."""

    def wall(t: float) -> float:
        return wall_now - (clock_now - t)

    write_json({
        "rung": state.rung,
        "last_change": None if state.last_change is None else wall(state.last_change),
        "fallen_back": state.fallen_back,
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
                        calm_rates=calm_rates)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("state file %s is unreadable (%s): ignored", path, exc)
        return None


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


class ControllerMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.decisions = Counter(names.CONTROLLER_DECISIONS, "Control-law decisions by action",
                                 ["action"], registry=self.registry)
        for action in ("up", "down", "hold", "fallback"):
            self.decisions.labels(action=action)  # every series exists from the start, for rate()
        self.rung = Gauge(names.CONTROLLER_RUNG, "Beam ladder rung the controller wants",
                          registry=self.registry)
        self.prometheus_errors = Counter(names.CONTROLLER_PROM_ERRORS.removesuffix("_total"),
                                         "Prometheus queries that failed", registry=self.registry)
        self.push_errors = Counter(names.CONTROLLER_PUSH_ERRORS.removesuffix("_total"),
                                   "Failed policy pushes to replicas (attempts)", registry=self.registry)
        self.p99 = Gauge(names.CONTROLLER_P99_SECONDS, "p99 latency the controller last read (NaN: none)",
                         registry=self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.registry)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


@dataclass
class Tick:
    decision: Decision
    observation: Observation
    replicas: list[str]


class BeamController:
    def __init__(self, controller: ControllerConfig, serving: ServingConfig, token: str, *,
                 replicas: StaticReplicas | KubernetesReplicas | None = None,
                 http: httpx.AsyncClient | None = None, metrics: ControllerMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.config, self.serving = controller, serving
        self.params = LawParams.from_config(controller, serving)
        self.ladder = BeamLadder.from_config(serving.beam_ladder, serving.default_rung,
                                             serving.max_beam_width)
        self.http = http or httpx.AsyncClient()
        self.metrics = metrics or ControllerMetrics()
        self.clock, self.wall = clock, wall
        if replicas is None and not controller.replicas and not controller.kubernetes_service:
            raise ConfigError("controller: set controller.replicas (base URLs) or "
                              "controller.kubernetes_service")
        c = controller
        self.replicas = replicas or (
            StaticReplicas(c.replicas) if c.replicas else
            KubernetesReplicas(c.kubernetes_service, c.kubernetes_namespace, c.admin_port))
        self.prometheus = PrometheusClient(c.prometheus_url, self.http, c.query_timeout_seconds)
        self.queries = controller_queries(controller)
        self.pusher = ReplicaPusher(self.http, token, controller, self.metrics.push_errors.inc, clock)
        self.urls: list[str] = []
        now = clock()
        restored = load_state(controller.state_file, self.params.top_rung, now, wall())
        if restored is not None:
            log.info("resuming rung %d from %s", restored.rung, controller.state_file)
            self.state = restored
        else:
            # No state (first start, or the pod moved and its emptyDir with it): until the replicas
            # say what they run (first interval), assume serving.default_rung, where they start.
            self.state = LawState(rung=serving.default_rung, last_change=None, last_good=now)
        self._adopt = restored is None
        self.metrics.rung.set(self.state.rung)
        self.metrics.p99.set(math.nan)

    async def _adopt_replicas_rung(self) -> None:
        """Without a state file, take the rung the replicas already run (the narrowest, if they
        differ) instead of pushing the default over it: a controller that lost its state must not
        flap a policy a previous controller set."""
        async def current(url: str) -> int | None:
            try:
                response = await self.http.get(url + ADMIN_PATH, timeout=self.config.push_timeout_seconds)
                rung = int(response.json()["rung"]) if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return None
            return rung if rung is not None and 0 <= rung <= self.params.top_rung else None

        rungs = [r for r in await asyncio.gather(*(current(u) for u in self.urls)) if r is not None]
        if not rungs:
            return  # nobody answered: try again next interval
        self._adopt = False
        if min(rungs) != self.state.rung:
            log.info("no state file: adopting rung %d that the replicas run (%s)", min(rungs), sorted(rungs))
            self.state = dataclasses.replace(self.state, rung=min(rungs))

    async def tick(self) -> Tick:
        try:
            urls = await self.replicas.discover()
            if not urls and self.urls:
                log.warning("replica discovery found no ready replica")
            self.urls = urls
        except Exception as exc:  # noqa: BLE001 - any discovery failure: keep pushing to the last list
            log.warning("replica discovery failed (%s): keeping %d known replicas", exc, len(self.urls))
        if self._adopt and self.urls:
            await self._adopt_replicas_rung()
        obs = await observe(self.prometheus, self.queries, max(1, len(self.urls)))
        if obs.error:
            self.metrics.prometheus_errors.inc()
        before = self.state
        self.state, decision = decide(self.state, obs, self.clock(), self.params)
        self.metrics.decisions.labels(action=decision.action).inc()
        self.metrics.rung.set(self.state.rung)
        self.metrics.p99.set(math.nan if obs.p99_seconds is None else obs.p99_seconds)
        if (self.state.rung, self.state.last_change, self.state.fallen_back, dict(self.state.ceilings)) != (
                before.rung, before.last_change, before.fallen_back, dict(before.ceilings)):
            self._save()
        log_fn = log.info if decision.action != "hold" else log.debug
        log_fn("%s -> rung %d (%s): %s", decision.action, decision.rung,
               self.ladder.policy(decision.rung).label(), decision.reason)
        self.pusher.reconcile(self.urls, self.state.rung)
        return Tick(decision, obs, list(self.urls))

    def _save(self) -> None:
        try:
            save_state(self.config.state_file, self.state, self.clock(), self.wall())
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.config.state_file, exc)

    async def run(self, stop: asyncio.Event, on_tick: Callable[[Tick], None] | None = None) -> None:
        interval = self.config.interval_seconds
        try:
            while not stop.is_set():
                started = self.clock()
                try:
                    tick = await self.tick()
                    if on_tick:
                        on_tick(tick)
                except Exception:  # noqa: BLE001 - the loop must survive one bad interval
                    log.exception("controller interval failed")
                remaining = interval - (self.clock() - started)
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=remaining)
        finally:
            self.pusher.cancel()

    async def aclose(self) -> None:
        self.pusher.cancel()
        await self.http.aclose()


def admin_token(serving: ServingConfig) -> str:
    token = os.environ.get(serving.admin_token_env, "")
    if not token:
        raise ConfigError(f"the admin token is not set: export {serving.admin_token_env} (in a cluster, "
                          "the Secret genrec-admin-token)")
    return token
