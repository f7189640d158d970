"""The controller's own Prometheus metrics, in their own registry, served on `controller.metrics_port`."""

from __future__ import annotations

from typing import Any

from genrec import contract as names


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
