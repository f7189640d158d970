"""The beam controller's control law: hysteresis, cool-down, flapping, learned capacity, the
feed-forward, the replicas' guard and the fail-safes.

The law is pure (time comes in as an argument), so all of it is tested with an injected clock. The
plant in the flapping tests is an M/M/1-like latency model, p99 = service / (1 - load / capacity),
with capacities chosen so that one rung is comfortably under the step-up threshold while the next
wider one breaks the step-down threshold: the case in which plain two-threshold hysteresis flaps.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from genrec.config import ControllerConfig, ServingConfig
from genrec.controller.law import LawParams, LawState, Observation, capacity_ceiling, decide
from genrec.controller.prometheus import controller_queries
from tests.controller_support import ok, params, run


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


def test_feed_forward_beyond_every_capacity_stops_at_the_widest_of_the_fastest_rungs() -> None:
    # The CPU table: the three narrowest rungs carried the load test's highest rate alike.
    p = params(rung_capacity_rps=[1590.0, 1590.0, 1590.0, 1190.0], capacity_down_utilisation=0.6,
               capacity_up_utilisation=0.45)
    s, d = decide(LawState(rung=3, last_change=None, last_good=0.0), ff(1500.0), 1.0, p)
    assert s.rung == 2 and d.action == "down"
    # A steep table: nothing carries 300/s, and rung 0 is the fastest, so rung 0.
    s, _ = decide(LawState(rung=3, last_change=None, last_good=0.0), ff(300.0), 1.0, ff_params())
    assert s.rung == 0
    # Rung 2 over its p99 threshold at that load: the reactive law still steps below it.
    s, d = decide(dataclasses.replace(s, rung=2, last_change=None), ff(1500.0, p99=0.5), 50.0, p)
    assert d.action == "down" and s.rung == 1


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


# The observation the law reads: the queries behind it.

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
