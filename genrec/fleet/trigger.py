"""The autoscaler's trigger, one definition for the ScaledObject (manifests/base/scaledobject.yaml,
which tests/test_manifests.py holds to it) and the simulation: the demand the fleet would have at
the widest rung, in replicas' worth of the widest rung's capacity."""

from __future__ import annotations

from genrec.config import GenrecConfig
from genrec.contract import REQUESTS


def widest_capacity(config: GenrecConfig) -> float:
    """The widest rung's per-replica capacity (controller.rung_capacity_rps[-1])."""
    if not config.controller.rung_capacity_rps:
        raise ValueError("controller.rung_capacity_rps is empty: the autoscaler's trigger needs the widest "
                         "rung's measured capacity (python -m benchmarks.bench_serving)")
    return float(config.controller.rung_capacity_rps[-1])


def trigger_query(config: GenrecConfig) -> str:
    """PromQL: every request the fleet receives (all outcomes: a rejected request is demand too),
    over the autoscaling window, divided by the widest rung's capacity. KEDA's AverageValue target
    (autoscaling.target_utilisation) then asks for ceil(value / target) replicas."""
    capacity = widest_capacity(config)
    shown = f"{capacity:g}"
    return (f"sum(rate({REQUESTS}{{{config.controller.selector}}}[{config.autoscaling.window}])) / {shown}")
