"""The fleet simulation (genrec.fleet): traffic, replicas, the KEDA/HPA model against the rules it
copies, determinism, and that the controller law it runs is the controller's own function."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

import genrec.controller.law as law
import genrec.controller.loop as controller_loop
import genrec.fleet.simulate as simulate
from genrec.config import AutoscalingConfig, ConfigError, FleetSimConfig, GenrecConfig, SpikeConfig
from genrec.fleet.autoscaler import KedaAutoscaler
from genrec.fleet.replica import ReplicaModel, RungCurve
from genrec.fleet.traffic import SECONDS_PER_HOUR, arrivals, expected_rates
from genrec.fleet.trigger import trigger_query

REPO = Path(__file__).resolve().parents[1]
RECALL = [0.030, 0.050, 0.055, 0.056]


def toy_model() -> ReplicaModel:
    """Four rungs: the narrow three carry 1,000/s, the widest 400/s; p99 20-60 ms below that."""
    narrow = RungCurve((100.0, 500.0, 1000.0), (0.010, 0.020, 0.040), 1000.0)
    return ReplicaModel((narrow, narrow, narrow, RungCurve((100.0, 400.0), (0.015, 0.060), 400.0)))


def toy_config(**fleet: object) -> GenrecConfig:
    config = GenrecConfig.from_dict({
        "controller": {"slo_p99_seconds": 0.1, "rung_capacity_rps": [1000, 1000, 1000, 400]},
        "autoscaling": {"min_replicas": 1, "max_replicas": 12, "target_utilisation": 0.4},
        "fleet": {"peak_rps": 600, "seed": 3, **fleet},
    })
    config.check()
    return config


def short_day(config: GenrecConfig, hours: float = 2.0) -> np.ndarray:
    return arrivals(config.fleet)[: int(hours * SECONDS_PER_HOUR)]


# ---------------------------------------------------------------------------------------------------
# Traffic


def test_the_day_has_its_trough_its_peak_and_spikes_that_triple_within_a_minute() -> None:
    fleet = FleetSimConfig(peak_rps=1000.0, trough_share=0.25, trough_hour=4.0, peak_hour=20.0,
                           spikes=[SpikeConfig(start_hour=12.0, multiplier=3.0, rise_seconds=60.0)])
    rate = expected_rates(fleet)
    assert rate[4 * SECONDS_PER_HOUR] == pytest.approx(250.0)
    assert rate[20 * SECONDS_PER_HOUR] == pytest.approx(1000.0)
    assert rate.min() == pytest.approx(250.0) and rate.max() > 2.9 * rate[12 * SECONDS_PER_HOUR - 1]
    start = 12 * SECONDS_PER_HOUR
    assert rate[start + 60] / rate[start - 1] == pytest.approx(3.0, rel=0.01)
    assert rate[start + 30] / rate[start - 1] == pytest.approx(2.0, rel=0.01)
    # The spike ends: rise, hold and fall later the curve is back.
    after = start + 60 + 600 + 300 + 1
    assert rate[after] == pytest.approx(1000.0 * (0.25 + 0.75 * (0.5 - 0.5 * math.cos(math.pi * (after / 3600 - 4) / 16))))


def test_arrivals_are_seeded() -> None:
    fleet = FleetSimConfig(seed=5)
    assert np.array_equal(arrivals(fleet), arrivals(FleetSimConfig(seed=5)))
    assert not np.array_equal(arrivals(fleet), arrivals(FleetSimConfig(seed=6)))


# ---------------------------------------------------------------------------------------------------
# Replicas


def test_replica_latency_curve_is_monotone_and_overload_queues_then_drains() -> None:
    curve = RungCurve.from_points([
        {"offered_qps": 100, "achieved_qps": 100, "errors": 0, "p99_ms": 10},
        {"offered_qps": 200, "achieved_qps": 200, "errors": 0, "p99_ms": 30},
        {"offered_qps": 300, "achieved_qps": 299, "errors": 0, "p99_ms": 25},  # a noisy dip: not a property
        {"offered_qps": 400, "achieved_qps": 310, "errors": 0, "p99_ms": 2000},  # overload: the queue models it
    ], throughput=310.0)
    assert curve.rates == (100, 200, 299) and curve.p99_seconds == (0.010, 0.030, 0.030)
    model = ReplicaModel((curve,))
    rungs, backlog = np.array([0]), np.array([0.0])
    served, backlog, p99 = model.second(rungs, np.array([400.0]), backlog)
    assert served[0] == 310.0 and backlog[0] == pytest.approx(90.0) and p99[0] == pytest.approx(0.030 + 90 / 310)
    served, backlog, p99 = model.second(rungs, np.array([400.0]), backlog)
    assert backlog[0] == pytest.approx(180.0)  # the overload goes on: the queue grows
    served, backlog, _ = model.second(rungs, np.array([100.0]), backlog)
    assert served[0] == 280.0 and backlog[0] == 0.0  # below throughput it drains


def test_replica_model_reads_the_committed_load_test() -> None:
    figures = json.loads((REPO / "benchmarks" / "results" / "serving_load.json").read_text())["figures"]
    model = ReplicaModel.from_serving_load(figures)
    assert len(model.rungs) == len(figures["rungs"])
    for key, curve in zip(sorted(figures["rungs"], key=int), model.rungs):
        assert curve.throughput >= figures["rungs"][key]["throughput_capacity_qps"] - 1e-9
        assert all(np.diff(curve.p99_seconds) >= 0) and all(np.diff(curve.rates) > 0)
    # The widest rung is the costliest: it carries the least.
    assert model.rungs[-1].throughput < model.rungs[0].throughput


# ---------------------------------------------------------------------------------------------------
# KEDA and the HPA


def test_hpa_recommendation_is_ceil_of_metric_over_target_outside_the_tolerance() -> None:
    hpa = KedaAutoscaler(AutoscalingConfig(min_replicas=1, max_replicas=20, tolerance=0.1), replicas=4)
    assert hpa.recommend(metric=1.7, target=0.4) == 4  # ratio 1.06: within the tolerance, no change
    assert hpa.recommend(metric=1.5, target=0.4) == 4  # ratio 0.94: within the tolerance
    assert hpa.recommend(metric=2.0, target=0.4) == 5
    assert hpa.recommend(metric=0.1, target=0.4) == 1
    assert hpa.recommend(metric=100.0, target=0.4) == 20  # clamped to max_replicas


def test_hpa_scales_up_at_once_within_its_rate_limit() -> None:
    hpa = KedaAutoscaler(AutoscalingConfig(min_replicas=1, max_replicas=40, scale_up_replicas_per_minute=4),
                         replicas=3)
    # Demand for 20 replicas: +4 or +100% a minute, whichever is more: 3 -> 7 (+4 > x2), nothing more
    # within that minute, 7 -> 14 (x2 > +4) the next, then the 20 asked for.
    assert hpa.poll(0.0, 8.0, 0.4) == 7
    assert hpa.poll(15.0, 8.0, 0.4) == 7
    assert hpa.poll(60.0, 8.0, 0.4) == 14
    assert hpa.poll(120.0, 8.0, 0.4) == 20


def test_hpa_scale_in_waits_for_the_window_and_takes_one_replica_per_window() -> None:
    a = AutoscalingConfig(min_replicas=1, max_replicas=20, scale_down_stabilisation_seconds=300)
    hpa = KedaAutoscaler(a, replicas=10)
    hpa.poll(0.0, 4.0, 0.4)  # 10 replicas' worth
    # Demand falls to 3 replicas' worth: nothing for 300 s (the window still holds the 10) ...
    for t in range(15, 300, 15):
        assert hpa.poll(float(t), 1.2, 0.4) == 10
    # ... then one replica, and no second scale-in within the next 300 s.
    assert hpa.poll(315.0, 1.2, 0.4) == 9
    assert all(hpa.poll(float(t), 1.2, 0.4) == 9 for t in range(330, 615, 15))
    assert hpa.poll(630.0, 1.2, 0.4) == 8
    # A dip shorter than the window never scales in.
    steady = KedaAutoscaler(a, replicas=10)
    for t in range(0, 1200, 15):
        assert steady.poll(float(t), 1.2 if 600 <= t < 840 else 4.0, 0.4) == 10


# ---------------------------------------------------------------------------------------------------
# The simulation


def test_the_simulated_controller_is_the_controller_process_s_own_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported, not copied: the simulation and the controller loop call the same function object, and
    the simulation module defines no control law of its own."""
    assert simulate.decide is law.decide and controller_loop.decide is law.decide
    assert simulate.LawParams is law.LawParams and simulate.Observation is law.Observation
    assert "def decide" not in inspect.getsource(simulate)
    calls = []

    def counting(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(args[2])
        return law.decide(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simulate, "decide", counting)
    config = toy_config()
    day = short_day(config, hours=0.25)
    simulate.simulate_day(config, toy_model(), day, simulate.POLICIES["both"], RECALL)
    interval = round(config.controller.interval_seconds)
    assert calls == [float(t) for t in range(0, len(day), interval)]  # on the simulated clock
    calls.clear()
    simulate.simulate_day(config, toy_model(), day, simulate.POLICIES["fixed_widest_autoscaled"], RECALL)
    assert not calls


def test_a_day_with_a_fixed_seed_is_deterministic() -> None:
    config = toy_config(spikes=[{"start_hour": 0.5}])
    day = short_day(config)
    runs = [simulate.simulate_day(config, toy_model(), day, simulate.POLICIES["both"], RECALL) for _ in range(2)]
    for name in ("requested", "ready", "rung", "p99", "recall_lost"):
        assert np.array_equal(getattr(runs[0], name), getattr(runs[1], name)), name
    assert runs[0].changes == runs[1].changes and runs[0].changes
    assert simulate.summarise(runs[0], config, RECALL) == simulate.summarise(runs[1], config, RECALL)
    other = toy_config(spikes=[{"start_hour": 0.5}], seed=4)
    moved = simulate.simulate_day(other, toy_model(), short_day(other), simulate.POLICIES["both"], RECALL)
    assert not np.array_equal(moved.p99, runs[0].p99)


def test_under_a_spike_the_controller_covers_the_start_up_and_utilisation_scaling_fights_it() -> None:
    """A 3x burst at half past midnight: with both loops the narrower rungs carry it while the new
    replicas start; the widest beam alone breaks the SLO until they serve; an autoscaler on utilisation
    keeps fewer replicas and leaves the controller narrow for longer."""
    config = toy_config(peak_rps=1500, spikes=[{"start_hour": 0.5, "hold_seconds": 1200}])
    day = short_day(config)
    summary = {}
    for name in ("both", "fixed_widest_autoscaled", "both_utilisation_trigger"):
        record = simulate.simulate_day(config, toy_model(), day, simulate.POLICIES[name], RECALL)
        summary[name] = simulate.summarise(record, config, RECALL)
    both, widest, fight = summary["both"], summary["fixed_widest_autoscaled"], summary["both_utilisation_trigger"]
    assert both.minutes_outside_slo == 0 < widest.minutes_outside_slo
    assert both.replica_hours == widest.replica_hours  # the trigger does not depend on the rung
    assert widest.recall_given_up == 0 < both.recall_given_up
    assert fight.replica_hours < both.replica_hours and fight.recall_given_up > both.recall_given_up
    assert both.most_scale_ins_per_stabilisation_window <= 1


def test_a_fixed_fleet_never_scales_and_must_have_replicas() -> None:
    config = toy_config()
    day = short_day(config, hours=0.2)
    record = simulate.simulate_day(config, toy_model(), day, simulate.POLICIES["controller_fixed_fleet"], RECALL,
                                   fixed_replicas=3)
    assert set(record.requested.tolist()) == {3} and not record.changes
    with pytest.raises(ValueError, match="fixed fleet"):
        simulate.simulate_day(config, toy_model(), day, simulate.POLICIES["controller_fixed_fleet"], RECALL)
    with pytest.raises(ValueError, match="same ladder"):
        simulate.simulate_day(config, toy_model(), day, simulate.POLICIES["both"], RECALL[:3])


def test_trigger_needs_the_widest_capacity() -> None:
    assert trigger_query(toy_config()) == 'sum(rate(genrec_requests_total{job="genrec-predictor"}[1m])) / 400'
    with pytest.raises(ValueError, match="rung_capacity_rps"):
        trigger_query(GenrecConfig())


@pytest.mark.parametrize(("section", "bad", "field"), [
    ("autoscaling", {"min_replicas": 0}, "min_replicas"),
    ("autoscaling", {"min_replicas": 5, "max_replicas": 4}, "max_replicas"),
    ("autoscaling", {"target_utilisation": 1.5}, "target_utilisation"),
    ("autoscaling", {"window": "a minute"}, "autoscaling.window"),
    ("autoscaling", {"fallback_replicas": 40}, "fallback_replicas"),
    ("autoscaling", {"scale_down_stabilisation_seconds": 7200}, "stabilisation"),
    ("fleet", {"trough_share": 0}, "trough_share"),
    ("fleet", {"peak_hour": 25}, "peak_hour"),
    ("fleet", {"startup_seconds_min": 200, "startup_seconds_max": 100}, "startup_seconds"),
    ("fleet", {"spikes": [{"start_hour": 3, "multiplier": 0.5}]}, "spikes[0]"),
])
def test_bad_autoscaling_and_fleet_settings_name_the_field(section: str, bad: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        GenrecConfig.from_dict({section: bad}).check()
