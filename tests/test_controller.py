"""The beam controller's control law, fail-safes, state file, replica discovery and pushes.

The law is pure (time comes in as an argument), so hysteresis, cool-down, flapping and the
fallback timing are tested with an injected clock. The plant in the flapping tests is an M/M/1-like
latency model, p99 = service / (1 - load / capacity), with capacities chosen so that one rung is
comfortably under the step-up threshold while the next wider one breaks the step-down threshold:
the case in which plain two-threshold hysteresis flaps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from genrec.config import ConfigError, ControllerConfig, GenrecConfig, ServingConfig
from genrec.serving.controller import (
    BeamController,
    ControllerMetrics,
    KubernetesReplicas,
    LawParams,
    LawState,
    Observation,
    ReplicaPusher,
    StaticReplicas,
    capacity_ceiling,
    check_controller_config,
    controller_queries,
    decide,
    load_state,
    parse_endpoints,
    save_state,
)

K8S = Path(__file__).parent / "data" / "k8s"


def params(**overrides: object) -> LawParams:
    c = ControllerConfig(slo_p99_seconds=0.1, step_down_ratio=0.9, step_up_ratio=0.6, up_after=3,
                         cooldown_seconds=10.0, hold_seconds=30.0, safe_rung=0)
    for key, value in overrides.items():
        setattr(c, key, value)
    return LawParams.from_config(c, ServingConfig())


def run(state: LawState, observations: list[Observation], p: LawParams, start: float = 0.0,
        step: float = 5.0) -> tuple[LawState, list[str]]:
    actions = []
    for i, obs in enumerate(observations):
        state, decision = decide(state, obs, start + i * step, p)
        actions.append(decision.action)
    return state, actions


def ok(p99: float, rate: float = 100.0) -> Observation:
    return Observation(p99_seconds=p99, request_rate=rate, inflight=1.0)


# ------------------------------------------------------------------------------------------------
# Hysteresis and cool-down
# ------------------------------------------------------------------------------------------------


def test_steps_down_above_the_down_threshold_and_holds_in_the_band() -> None:
    p = params()
    s = LawState(rung=2, last_change=None, last_good=0.0)
    s, d = decide(s, ok(0.08), 0.0, p)  # 0.08 < 0.09: inside the band
    assert (d.action, s.rung) == ("hold", 2)
    s, d = decide(s, ok(0.095), 5.0, p)
    assert (d.action, s.rung) == ("down", 1)


def test_steps_up_only_after_up_after_consecutive_calm_intervals() -> None:
    p = params(cooldown_seconds=0.0)
    s = LawState(rung=1, last_change=None, last_good=0.0)
    # Two calm readings, one in the band (resets the count), then three calm ones.
    s, actions = run(s, [ok(0.03), ok(0.03), ok(0.07), ok(0.03), ok(0.03)], p)
    assert actions == ["hold"] * 5 and s.rung == 1
    s, d = decide(s, ok(0.03), 100.0, p)
    assert (d.action, s.rung) == ("up", 2)
    assert s.calm == 0


def test_cooldown_separates_changes() -> None:
    p = params(cooldown_seconds=10.0)
    s = LawState(rung=3, last_change=None, last_good=0.0)
    # Overloaded every 2 s: changes at t=0, 10, 20 only.
    s, actions = run(s, [ok(0.5)] * 12, p, step=2.0)
    downs = [i * 2.0 for i, a in enumerate(actions) if a == "down"]
    assert downs == [0.0, 10.0, 20.0]
    assert s.rung == 0
    s, d = decide(s, ok(0.5), 30.0, p)
    assert (d.action, s.rung) == ("hold", 0)  # nothing narrower than rung 0


def test_cooldown_also_delays_a_step_up_after_a_step_down() -> None:
    p = params(cooldown_seconds=30.0, up_after=1)
    s = LawState(rung=2, last_change=None, last_good=0.0)
    s, d = decide(s, ok(0.5, rate=300), 0.0, p)
    assert d.action == "down"
    s, d = decide(s, ok(0.01, rate=10), 10.0, p)
    assert d.action == "hold" and "cool-down" in d.reason
    s, d = decide(s, ok(0.01, rate=10), 31.0, p)
    assert (d.action, s.rung) == ("up", 2)


def test_gpu_utilisation_and_inflight_block_steps_up_and_absence_is_ignored() -> None:
    p = params(cooldown_seconds=0.0, up_after=1, gpu_util_ceiling=90.0, up_inflight_ratio=0.5)
    s = LawState(rung=1, last_change=None, last_good=0.0)
    busy_gpu = Observation(p99_seconds=0.01, request_rate=10, inflight=1, gpu_util=95.0)
    _, d = decide(s, busy_gpu, 0.0, p)
    assert d.action == "hold" and "GPU" in d.reason
    guard = ServingConfig().inflight_guard
    crowded = Observation(p99_seconds=0.01, request_rate=10, inflight=guard * 0.5, gpu_util=None)
    _, d = decide(s, crowded, 0.0, p)
    assert d.action == "hold" and "in flight" in d.reason
    no_gpu = Observation(p99_seconds=0.01, request_rate=10, inflight=1, gpu_util=None)
    _, d = decide(s, no_gpu, 0.0, p)
    assert d.action == "up"


def test_no_traffic_is_light_load_not_an_error() -> None:
    p = params(cooldown_seconds=0.0, up_after=2)
    s = LawState(rung=0, last_change=None, last_good=0.0)
    idle = Observation(p99_seconds=math.nan, request_rate=0.0, inflight=0.0)
    assert idle.usable and idle.idle
    s, actions = run(s, [idle] * 6, p)
    assert s.rung == 3 and actions.count("up") == 3 and "fallback" not in actions


def test_nan_p99_while_requests_flow_is_unusable() -> None:
    assert not Observation(p99_seconds=math.nan, request_rate=5.0).usable
    assert not Observation(p99_seconds=None, request_rate=None).usable  # no series at all
    assert not Observation(p99_seconds=0.01, request_rate=5.0, error="connection refused").usable
    # +Inf is a reading (requests past the last bucket): it must push the rung down.
    p = params()
    _, d = decide(LawState(rung=2, last_change=None, last_good=0.0), ok(math.inf), 0.0, p)
    assert d.action == "down"


# ------------------------------------------------------------------------------------------------
# No oscillation at constant load
# ------------------------------------------------------------------------------------------------

CAPACITY = [400.0, 250.0, 160.0, 100.0]  # requests/s per rung, narrowest first
SERVICE = [0.010, 0.016, 0.025, 0.040]  # seconds


def plant(rung: int, load: float) -> Observation:
    """p99 and throughput of one replica at `load` requests/s on `rung` (M/M/1-like)."""
    utilisation = min(load / CAPACITY[rung], 0.99)
    return Observation(p99_seconds=SERVICE[rung] / (1 - utilisation), request_rate=min(load, CAPACITY[rung]),
                       inflight=1.0)


def simulate(p: LawParams, load: float, seconds: float, interval: float = 2.0) -> list[tuple[float, int]]:
    """Times of rung changes over `seconds` at constant `load`, starting on the widest rung."""
    s = LawState(rung=3, last_change=None, last_good=0.0)
    changes = []
    t = 0.0
    while t < seconds:
        s, d = decide(s, plant(s.rung, load), t, p)
        if d.action in ("up", "down"):
            changes.append((t, s.rung))
        t += interval
    return changes


def test_plant_is_the_flapping_case() -> None:
    # At 140/s rung 1 is calm (p99 < 0.6 x SLO) and rung 2 breaks 0.9 x SLO.
    assert plant(1, 140).p99_seconds < 0.06 < 0.09 < plant(2, 140).p99_seconds


def test_plain_hysteresis_would_flap_here() -> None:
    # Capacity memory off (forgotten at once): the law alone climbs and falls again and again.
    p = params(cooldown_seconds=6.0, up_after=3, capacity_memory_seconds=1e-9)
    changes = simulate(p, load=140.0, seconds=600.0)
    settled = [t for t, _ in changes if t >= 60.0]
    assert len(settled) / 9.0 > 1.0  # more than one change per minute after the first minute


def test_constant_load_at_most_one_change_per_minute_after_settling() -> None:
    p = params(cooldown_seconds=6.0, up_after=3)
    for load in (50.0, 90.0, 140.0, 200.0, 300.0, 350.0):
        changes = simulate(p, load=load, seconds=600.0)
        settled = [t for t, _ in changes if t >= 60.0]
        assert len(settled) <= 1, (load, changes)
        # And it settles where the SLO holds if any rung can hold it.
        final = changes[-1][1] if changes else 3
        assert plant(final, load).p99_seconds <= 0.1, (load, final)


def test_learned_capacity_lets_the_controller_climb_when_load_really_drops() -> None:
    p = params(cooldown_seconds=6.0, up_after=3)
    s = LawState(rung=3, last_change=None, last_good=0.0)
    t = 0.0
    rungs = []
    for load in [140.0] * 100 + [40.0] * 60:
        s, _ = decide(s, plant(s.rung, load), t, p)
        rungs.append(s.rung)
        t += 2.0
    assert rungs[99] == 1  # held below the rung that broke at 140/s
    assert s.rung == 3  # at 40/s even the widest rung meets the SLO
    # Throughput where each rung broke: rung 3 at its capacity (100/s), rung 2 at the offered 140/s.
    assert capacity_ceiling(s.ceilings, 2) == pytest.approx(140.0)
    assert capacity_ceiling(s.ceilings, 3) == pytest.approx(100.0)


def test_a_break_that_load_does_not_explain_teaches_no_ceiling() -> None:
    # Calm on the widest rung at 16/s, then a disturbance (not load) breaks three rungs in a row at
    # the same 16/s: nothing is learned, and the controller climbs back as soon as it is calm.
    p = params(cooldown_seconds=5.0, up_after=3)
    s = LawState(rung=3, last_change=None, last_good=0.0)
    t = 0.0
    for obs in [ok(0.03, rate=16)] * 5 + [ok(0.5, rate=16)] * 20 + [ok(0.03, rate=16)] * 40:
        s, _ = decide(s, obs, t, p)
        t += 1.0
    assert s.ceilings == {} and s.rung == 3
    # The same break at a rate well above anything calm so far is load, and is remembered.
    s2 = LawState(rung=3, last_change=None, last_good=0.0)
    s2, _ = decide(s2, ok(0.03, rate=16), 0.0, p)
    s2, d = decide(s2, ok(0.5, rate=60), 1.0, p)
    assert d.action == "down" and s2.ceilings[3][0] == 60


def test_learned_capacity_is_forgotten_after_its_memory() -> None:
    p = params(capacity_memory_seconds=100.0)
    s = LawState(rung=1, last_change=None, last_good=0.0, ceilings={2: (140.0, 0.0)})
    s, _ = decide(s, ok(0.01, rate=139.0), 50.0, p)
    assert 2 in s.ceilings
    s, _ = decide(s, ok(0.01, rate=139.0), 101.0, p)
    assert 2 not in s.ceilings


# ------------------------------------------------------------------------------------------------
# Feed-forward from measured rung capacities, and the replicas' local guard
# ------------------------------------------------------------------------------------------------


def ff_params(**overrides: object) -> LawParams:
    # Down above 0.6 x capacity: rung 3 at 60/s, rung 2 at 96/s, rung 1 at 150/s, rung 0 at 240/s.
    return params(rung_capacity_rps=list(CAPACITY), capacity_down_utilisation=0.6,
                  capacity_up_utilisation=0.45, cooldown_seconds=10.0, up_after=3, **overrides)


def ff(rate: float, fast: float | None = None, p99: float = 0.02, **extra: object) -> Observation:
    return Observation(p99_seconds=p99, request_rate=rate, inflight=1.0,
                       fast_rate=rate if fast is None else fast, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("load,rung", [(50.0, 3), (61.0, 2), (96.0, 2), (140.0, 1), (151.0, 0), (300.0, 0)])
def test_feed_forward_jumps_to_the_widest_rung_that_carries_the_load(load: float, rung: int) -> None:
    # Latency is still calm and the controller is in its cool-down: a rate-based decision needs neither.
    s = LawState(rung=3, last_change=0.0, last_good=0.0)
    s, d = decide(s, ff(load), 1.0, ff_params())
    assert s.rung == rung
    assert d.action == ("hold" if rung == 3 else "down")
    if rung < 3:
        assert "capacity of rung 3" in d.reason and s.last_change == 1.0


def test_feed_forward_acts_on_the_larger_of_the_fast_and_slow_rates() -> None:
    p = ff_params()
    start = LawState(rung=3, last_change=None, last_good=0.0)
    assert decide(start, ff(50.0, fast=140.0), 1.0, p)[0].rung == 1  # a rise the slow window hides
    assert decide(start, ff(140.0, fast=50.0), 1.0, p)[0].rung == 1  # a lull in the fast window
    # No rate reading at all: the feed-forward stays out, the p99 law decides.
    s, d = decide(start, Observation(p99_seconds=0.02, request_rate=None, inflight=1.0), 1.0, p)
    assert s.rung == 3 and d.action == "hold"


def test_feed_forward_is_per_replica() -> None:
    # 280/s over four replicas is 70/s each: rung 2 (96/s), not rung 0.
    s, _ = decide(LawState(rung=3, last_change=None, last_good=0.0), ff(280.0, replicas=4), 1.0, ff_params())
    assert s.rung == 2


def test_feed_forward_climbs_only_below_the_up_utilisation_of_the_wider_rung() -> None:
    p = ff_params()
    s = LawState(rung=1, last_change=None, last_good=0.0)
    # 100/s: rung 2 would be at 100/160 = 0.62 > 0.45, so no climb however calm the latency.
    s, actions = run(s, [ff(100.0)] * 10, p, step=5.0)
    assert s.rung == 1 and set(actions) == {"hold"}
    # 70/s <= 0.45 x 160: climbs to rung 2 after up_after calm intervals, not to rung 3 (0.45 x 100).
    s, actions = run(s, [ff(70.0)] * 20, p, start=100.0, step=5.0)
    assert s.rung == 2 and actions.count("up") == 1
    s, _ = run(s, [ff(40.0)] * 10, p, start=300.0, step=5.0)
    assert s.rung == 3


def test_feed_forward_has_no_flap_between_its_two_utilisations() -> None:
    # Rates wandering between the thresholds around rung 2 (0.45 x 100 = 45 up, 0.6 x 160 = 96 down).
    p = ff_params()
    s = LawState(rung=2, last_change=None, last_good=0.0)
    rates = [50.0, 90.0, 60.0, 80.0, 55.0, 95.0] * 20
    s, actions = run(s, [ff(r) for r in rates], p, step=1.0)
    assert s.rung == 2 and set(actions) == {"hold"}


def test_p99_still_steps_down_when_the_capacity_table_is_optimistic() -> None:
    # The table says rung 3 carries 30/s easily; the node is slower than when it was measured.
    s = LawState(rung=3, last_change=None, last_good=0.0)
    s, d = decide(s, ff(30.0, p99=0.2), 1.0, ff_params())
    assert d.action == "down" and s.rung == 2


def test_a_replica_guard_step_down_is_adopted_not_overwritten() -> None:
    p = params()
    s = LawState(rung=3, last_change=None, last_good=0.0)
    s, d = decide(s, Observation(p99_seconds=0.02, request_rate=50.0, inflight=1.0, guard_stepdowns=1.0,
                                 min_rung=2.0), 1.0, p)
    assert d.action == "down" and s.rung == 2 and "guard" in d.reason
    # The rung the guard left has a ceiling at this rate: no climb back while the load stays.
    assert s.ceilings[3][0] == 50.0
    s, actions = run(s, [ok(0.01, rate=50.0)] * 20, p, start=2.0, step=5.0)
    assert s.rung == 2 and "up" not in actions
    s, actions = run(s, [ok(0.01, rate=20.0)] * 20, p, start=200.0, step=5.0)
    assert s.rung == 3
    # A replica at a lower rung without a guard firing (an update still on its way) is not adopted.
    s2 = LawState(rung=3, last_change=None, last_good=0.0)
    s2, d2 = decide(s2, Observation(p99_seconds=0.02, request_rate=50.0, inflight=1.0, guard_stepdowns=0.0,
                                    min_rung=1.0), 1.0, p)
    assert s2.rung == 3 and d2.action == "hold"


def test_no_climb_while_a_guard_fired_within_the_fast_window() -> None:
    p = params(cooldown_seconds=0.0, up_after=1)
    calm = Observation(p99_seconds=0.01, request_rate=10.0, inflight=1.0, guard_stepdowns=1.0, min_rung=1.0)
    s, d = decide(LawState(rung=1, last_change=None, last_good=0.0), calm, 1.0, p)
    assert s.rung == 1 and "guard" in d.reason
    s, d = decide(s, dataclasses.replace(calm, guard_stepdowns=0.0), 2.0, p)
    assert d.action == "up" and s.rung == 2


# ------------------------------------------------------------------------------------------------
# Fail-safes
# ------------------------------------------------------------------------------------------------


def test_prometheus_down_holds_then_falls_back_on_time() -> None:
    p = params(hold_seconds=30.0, safe_rung=1)
    s = LawState(rung=3, last_change=None, last_good=0.0)
    s, d = decide(s, ok(0.03), 0.0, p)  # last usable reading at t=0
    down = Observation(error="ConnectError: connection refused")
    for t in (5.0, 15.0, 29.9):
        s, d = decide(s, down, t, p)
        assert (d.action, s.rung) == ("hold", 3), t
    s, d = decide(s, down, 30.0, p)
    assert (d.action, s.rung, s.fallen_back) == ("fallback", 1, True)
    s, d = decide(s, down, 35.0, p)  # no second fallback while it stays down
    assert (d.action, s.rung) == ("hold", 1)
    # Prometheus back: normal law again, from the safe rung (and the fallback started a cool-down).
    s, d = decide(s, ok(0.5), 36.0, p)
    assert d.action == "hold" and "cool-down" in d.reason and not s.fallen_back
    s, d = decide(s, ok(0.5), 41.0, p)
    assert (d.action, s.rung) == ("down", 0)


def test_nan_p99_also_holds_then_falls_back() -> None:
    p = params(hold_seconds=20.0, safe_rung=0)
    s = LawState(rung=2, last_change=None, last_good=0.0)
    nan = Observation(p99_seconds=math.nan, request_rate=50.0, inflight=3.0)
    s, actions = run(s, [nan] * 6, p, start=5.0)  # t = 5 .. 30
    assert actions == ["hold", "hold", "hold", "fallback", "hold", "hold"]
    assert s.rung == 0


def test_a_good_reading_resets_the_hold_timer() -> None:
    p = params(hold_seconds=20.0)
    s = LawState(rung=2, last_change=None, last_good=0.0)
    down = Observation(error="timeout")
    s, _ = decide(s, down, 15.0, p)
    s, _ = decide(s, ok(0.07), 18.0, p)
    s, d = decide(s, down, 35.0, p)
    assert (d.action, s.rung) == ("hold", 2)


# ------------------------------------------------------------------------------------------------
# State file and restart
# ------------------------------------------------------------------------------------------------


def test_state_round_trip_across_clocks(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    s = LawState(rung=1, last_change=100.0, last_good=100.0, ceilings={2: (140.0, 90.0)})
    save_state(path, s, clock_now=105.0, wall_now=1_000_105.0)
    # A new process: its monotonic clock starts elsewhere; 3 s of wall time have passed.
    back = load_state(path, top_rung=3, clock_now=7.0, wall_now=1_000_108.0)
    assert back is not None and back.rung == 1
    assert back.last_change == pytest.approx(7.0 - 8.0)
    assert back.ceilings[2][0] == 140.0 and back.ceilings[2][1] == pytest.approx(7.0 - 18.0)
    assert not list(tmp_path.glob(".state.json.*"))  # atomic write left no temporary behind


def test_bad_state_files_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load_state(path, 3, 0.0, 0.0) is None
    path.write_text("{not json")
    assert load_state(path, 3, 0.0, 0.0) is None
    path.write_text(json.dumps({"rung": 7}))
    assert load_state(path, 3, 0.0, 0.0) is None


def test_restart_resumes_the_rung_without_a_flap(tmp_path: Path) -> None:
    cfg = GenrecConfig()
    cfg.controller.state_file = str(tmp_path / "state.json")
    cfg.controller.replicas = ["http://127.0.0.1:9"]
    cfg.controller.cooldown_seconds = 30.0
    clock = [1000.0]
    wall = [5_000_000.0]
    first = BeamController(cfg.controller, cfg.serving, "t", metrics=ControllerMetrics(),
                           clock=lambda: clock[0], wall=lambda: wall[0])
    assert first.state.rung == cfg.serving.default_rung  # no state yet: where replicas start
    first.state, _ = decide(first.state, ok(0.5), clock[0], first.params)
    first._save()
    assert first.state.rung == cfg.serving.default_rung - 1

    # Restart 5 s later with a fresh monotonic clock: same rung, and the cool-down still runs.
    wall[0] += 5.0
    clock2 = [3.0]
    second = BeamController(cfg.controller, cfg.serving, "t", metrics=ControllerMetrics(),
                            clock=lambda: clock2[0], wall=lambda: wall[0])
    assert second.state.rung == first.state.rung
    _, d = decide(second.state, ok(0.5), clock2[0], second.params)
    assert d.action == "hold" and "cool-down" in d.reason


# ------------------------------------------------------------------------------------------------
# Config and queries
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("step_up_ratio", 0.95), ("up_after", 0), ("window", "30 seconds"), ("capacity_margin", 1.5),
    ("interval_seconds", 0.0), ("slo_p99_seconds", -1.0), ("fast_window", "3"),
    ("rung_capacity_rps", [400.0, 300.0]), ("rung_capacity_rps", [100.0, 200.0, 300.0, 400.0]),
    ("rung_capacity_rps", [400.0, 300.0, 0.0, -1.0]), ("rung_capacity_rps", [400.0, "fast", 200.0, 100.0]),
    ("capacity_up_utilisation", 0.7), ("capacity_down_utilisation", 1.2),
])
def test_bad_controller_settings_are_rejected(field: str, value: object) -> None:
    c = ControllerConfig()
    setattr(c, field, value)
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        check_controller_config(c, ServingConfig())


def test_queries_use_selector_window_and_metric_names() -> None:
    c = ControllerConfig(selector='job="p"', window="7s", gpu_selector='pod=~"genrec.*"')
    q = controller_queries(c)
    assert q["p99"] == ('histogram_quantile(0.99, sum by (le) '
                        '(rate(genrec_request_duration_seconds_bucket{job="p"}[7s])))')
    assert q["rate"] == 'sum(rate(genrec_requests_total{job="p"}[7s]))'
    assert q["inflight"] == 'max(genrec_inflight_requests{job="p"})'
    assert q["gpu"] == 'avg(DCGM_FI_DEV_GPU_UTIL{pod=~"genrec.*"})'
    assert q["fast_rate"] == 'sum(rate(genrec_requests_total{job="p"}[15s]))'
    assert q["min_rung"] == 'min(genrec_beam_rung{job="p"})'
    assert q["guard"] == 'sum(increase(genrec_inflight_guard_stepdowns_total{job="p"}[15s]))'


# ------------------------------------------------------------------------------------------------
# Replicas from Kubernetes Endpoints (documents as the API server returns them)
# ------------------------------------------------------------------------------------------------
# endpoints_cert_manager.json: `kubectl get endpoints -o json` of cert-manager on a kubeadm cluster
# (managedFields and all); endpoints_xecho_minikube.yaml and endpoints_metrics_server_not_ready.yaml:
# `kubectl get endpoints -o yaml` on minikube, the latter with its only pod not ready. All three were
# published in public repositories as captured from live clusters.


def _doc(name: str) -> dict:
    text = (K8S / name).read_text()
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def test_parse_real_endpoints_documents() -> None:
    assert parse_endpoints(_doc("endpoints_cert_manager.json"), 9402) == ["http://100.10.100.1:9402"]
    assert parse_endpoints(_doc("endpoints_xecho_minikube.yaml"), 8888) == [
        "http://172.17.0.2:8888", "http://172.17.0.3:8888", "http://172.17.0.8:8888"]
    # Only a not-ready address: nothing to push to yet.
    assert parse_endpoints(_doc("endpoints_metrics_server_not_ready.yaml"), 10250) == []
    # A port the subset does not serve: not an admin endpoint.
    assert parse_endpoints(_doc("endpoints_xecho_minikube.yaml"), 8080) == []


def test_parse_endpoints_multi_subset_ipv6_and_no_subsets() -> None:
    doc = {"subsets": [
        {"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.9"}],
         "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 8081}]},
        {"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 8080}]},
    ]}
    assert parse_endpoints(doc, 8080) == ["http://10.0.0.1:8080", "http://[fd00::5]:8080"]
    assert parse_endpoints({"kind": "Endpoints", "metadata": {"name": "x"}}, 8080) == []


class _ApiServer(BaseHTTPRequestHandler):
    document = b""
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path != "/api/v1/namespaces/genrec/endpoints/genrec-predictor":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).document)

    def log_message(self, *args: object) -> None:
        pass


def test_kubernetes_replicas_through_the_real_client() -> None:
    from kubernetes import client

    doc = _doc("endpoints_xecho_minikube.yaml")
    doc["metadata"].update(name="genrec-predictor", namespace="genrec")
    doc["subsets"][0]["ports"] = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    _ApiServer.document = json.dumps(doc).encode()
    _ApiServer.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = client.Configuration(host=f"http://127.0.0.1:{server.server_port}",
                                    api_key={"authorization": "sa-token"}, api_key_prefix={"authorization": "Bearer"})
        replicas = KubernetesReplicas("genrec-predictor", "genrec", 8080, api_client=client.ApiClient(conf))
        urls = asyncio.run(replicas.discover())
    finally:
        server.shutdown()
    assert urls == ["http://172.17.0.2:8080", "http://172.17.0.3:8080", "http://172.17.0.8:8080"]
    assert _ApiServer.seen == [("/api/v1/namespaces/genrec/endpoints/genrec-predictor", "Bearer sa-token")]


# ------------------------------------------------------------------------------------------------
# Pushing: concurrency, retries, back-off
# ------------------------------------------------------------------------------------------------


class _Replica(BaseHTTPRequestHandler):
    """A replica's admin endpoint whose behaviour depends on the server it belongs to."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        server = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.calls.append(time.monotonic())  # type: ignore[attr-defined]
        assert self.headers["Authorization"] == "Bearer secret"
        rung = json.loads(body)["rung"]
        status, payload = server.behave(len(server.calls), rung)  # type: ignore[attr-defined]
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _replica(behave) -> ThreadingHTTPServer:  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    server.daemon_threads = True
    server.calls = []  # type: ignore[attr-defined]
    server.behave = behave  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_pushes_retry_with_backoff_without_blocking_other_replicas() -> None:
    def good(n: int, rung: int) -> tuple[int, dict]:
        return 200, {"rung": rung, "widths": [8], "source": "admin"}

    def flaky(n: int, rung: int) -> tuple[int, dict]:
        return (503, {"detail": "starting"}) if n < 3 else good(n, rung)

    def slow(n: int, rung: int) -> tuple[int, dict]:
        time.sleep(3.0)  # past push_timeout_seconds on every attempt
        return good(n, rung)

    def wrong(n: int, rung: int) -> tuple[int, dict]:
        return 422, {"detail": "rung outside the ladder"}

    servers = {name: _replica(fn) for name, fn in
               [("good", good), ("flaky", flaky), ("slow", slow), ("wrong", wrong)]}
    urls = {name: f"http://127.0.0.1:{s.server_port}" for name, s in servers.items()}
    errors = []
    c = ControllerConfig(push_timeout_seconds=0.5, push_retries=3, push_backoff_seconds=0.05)

    async def scenario() -> tuple[bool, ReplicaPusher]:
        http = httpx.AsyncClient()
        pusher = ReplicaPusher(http, "secret", c, on_error=lambda: errors.append(1))
        pusher.reconcile(list(urls.values()), 1)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # the healthy replica is acknowledged long before the others
            await asyncio.sleep(0.01)
            if urls["good"] in pusher.acked:
                break
        good_first = urls["good"] in pusher.acked and not all(t.done() for _, t in pusher.tasks.values())
        await pusher.wait()
        await http.aclose()
        return good_first, pusher

    try:
        good_first, pusher = asyncio.run(scenario())
    finally:
        for s in servers.values():
            s.shutdown()
    assert good_first, "the healthy replica waited for the others"
    assert pusher.acked[urls["good"]][0] == 1 and pusher.acked[urls["flaky"]][0] == 1
    assert urls["slow"] not in pusher.acked and urls["wrong"] not in pusher.acked
    # flaky: 503, 503, then 200, with back-off 0.05 s then 0.10 s between attempts.
    calls = servers["flaky"].calls  # type: ignore[attr-defined]
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) == 3 and gaps[0] >= 0.045 and gaps[1] >= 0.095
    assert len(servers["slow"].calls) == 4  # type: ignore[attr-defined]  # timed out, retried 3 times
    assert len(servers["wrong"].calls) == 1  # type: ignore[attr-defined]  # 422: retrying cannot help
    assert len(errors) == 2 + 4 + 1


def test_reconcile_pushes_new_rungs_new_replicas_and_resyncs() -> None:
    pushed: list[tuple[str, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        rung = json.loads(request.content)["rung"]
        pushed.append((request.url.host, rung))
        return httpx.Response(200, json={"rung": rung, "widths": [4], "source": "admin"})

    now = [0.0]
    c = ControllerConfig(resync_seconds=60.0)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        pusher = ReplicaPusher(http, "t", c, on_error=lambda: None, clock=lambda: now[0])
        pusher.reconcile(["http://a"], 2)
        await pusher.wait()
        pusher.reconcile(["http://a"], 2)  # acknowledged: nothing to do
        await pusher.wait()
        pusher.reconcile(["http://a", "http://b"], 2)  # a new replica
        await pusher.wait()
        pusher.reconcile(["http://a", "http://b"], 1)  # a new rung
        await pusher.wait()
        now[0] = 61.0
        pusher.reconcile(["http://b"], 1)  # resync; a is gone
        await pusher.wait()
        await http.aclose()

    asyncio.run(scenario())
    assert pushed[:2] == [("a", 2), ("b", 2)]
    assert sorted(pushed[2:4]) == [("a", 1), ("b", 1)]  # concurrent: either order
    assert pushed[4:] == [("b", 1)]


def test_controller_requires_a_replica_source() -> None:
    with pytest.raises(ConfigError, match="replicas"):
        BeamController(ControllerConfig(), ServingConfig(), "t", metrics=ControllerMetrics())


def test_static_replicas_strip_trailing_slashes() -> None:
    assert asyncio.run(StaticReplicas(["http://a:1/", "http://b:2"]).discover()) == ["http://a:1", "http://b:2"]


def test_cli_fails_cleanly_without_token_or_replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from genrec.cli import app

    runner = CliRunner()
    monkeypatch.delenv("GENREC_ADMIN_TOKEN", raising=False)
    result = runner.invoke(app, ["controller", "--set", "controller.replicas=[http://127.0.0.1:9]"])
    assert result.exit_code == 1 and "GENREC_ADMIN_TOKEN" in result.output
    monkeypatch.setenv("GENREC_ADMIN_TOKEN", "t")
    result = runner.invoke(app, ["controller"])
    assert result.exit_code == 1 and "controller.replicas" in result.output
    result = runner.invoke(app, ["controller", "--set", "controller.replicas=[http://127.0.0.1:9]",
                                 "--set", "controller.window=30 seconds"])
    assert result.exit_code == 1 and "Prometheus duration" in result.output


class _PolicyReplica(BaseHTTPRequestHandler):
    """GET/PUT /admin/beam-policy of a replica that runs rung `server.rung`."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        data = json.dumps({"rung": self.server.rung, "widths": [8], "source": "admin"}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._answer()

    def do_PUT(self) -> None:  # noqa: N802
        rung = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["rung"]
        self.server.puts.append(rung)  # type: ignore[attr-defined]
        self.server.rung = rung  # type: ignore[attr-defined]
        self._answer()

    def log_message(self, *args: object) -> None:
        pass


def test_without_state_the_controller_adopts_the_replicas_rung(tmp_path: Path) -> None:
    from tests.prometheus_support import free_port

    servers = []
    for rung in (1, 3):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _PolicyReplica)
        server.rung, server.puts = rung, []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    cfg = GenrecConfig()
    c = cfg.controller
    c.replicas = [f"http://127.0.0.1:{s.server_port}" for s in servers]
    c.prometheus_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the law holds
    c.state_file = str(tmp_path / "state.json")
    assert cfg.serving.default_rung == 2

    async def scenario() -> int:
        ctl = BeamController(c, cfg.serving, "t", metrics=ControllerMetrics())
        tick = await ctl.tick()
        await ctl.pusher.wait()
        await ctl.aclose()
        assert tick.decision.action == "hold"
        return ctl.state.rung

    try:
        rung = asyncio.run(scenario())
    finally:
        for s in servers:
            s.shutdown()
    # The narrowest rung any replica runs, not the default: the other replica is brought down to it.
    assert rung == 1
    assert servers[0].puts == [1] and servers[1].puts == [1]  # type: ignore[attr-defined]
