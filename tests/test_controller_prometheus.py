"""The beam controller end to end: a real `genrec serve` predictor, a real Prometheus scraping it on
loopback every second, and the controller reading Prometheus and pushing rungs to the predictor's
admin endpoint.

What it shows: the controller steps down under load and back up when the load drops; with
Prometheus stopped mid-test it holds the last rung for `hold_seconds`, then falls back to
`safe_rung`; a restarted controller resumes its rung from the state file without a flap.

The SLO is calibrated from what the controller itself sees, the predictor's latency histogram read
through Prometheus, at light load and under a load sized until that p99 is at least 3x higher (the
machine is shared and its speed varies), so the test checks the control loop rather than the
machine. Intervals and windows are short so the whole test runs in about 90 s.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import pytest

from genrec.config import GenrecConfig
from genrec.controller.loop import BeamController, Tick
from genrec.controller.metrics import ControllerMetrics
from testbed.binaries import require_binary
from testbed.prometheus import LocalPrometheus, free_port

# `alone`: it calibrates the load it needs against this machine's speed, so `make test` runs it after
# the parallel part, with the machine to itself.
pytestmark = [pytest.mark.integration, pytest.mark.alone]

TOKEN = "controller-test-token"
JOB = "genrec-predictor"


class Load:
    """Closed-loop load from a background event loop: `concurrency` clients, each sending its next
    request when the last one returns, pausing `pause` seconds between requests."""

    def __init__(self, url: str, body: dict) -> None:
        self.url, self.body = url, body
        self.concurrency, self.pause = 0, 0.0
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def set(self, concurrency: int, pause: float) -> None:
        self.concurrency, self.pause = concurrency, pause

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def take(self) -> list[float]:
        out, self.latencies = self.latencies, []
        return out

    async def _main(self) -> None:
        # aiohttp: on a 2-core machine an httpx client saturates before the predictor does.
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(256)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        data = json.dumps(self.body).encode()
        while not self._stop.is_set():
            if index >= self.concurrency:
                await asyncio.sleep(0.05)
                continue
            started = time.perf_counter()
            try:
                async with session.post(self.url, data=data, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        self.errors += 1
            except (aiohttp.ClientError, TimeoutError):
                self.errors += 1
            self.latencies.append(time.perf_counter() - started)
            if self.pause:
                await asyncio.sleep(self.pause)


@dataclass
class ControllerThread:
    controller: BeamController
    ticks: list[tuple[float, Tick]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            await self.controller.run(self._stop, on_tick=lambda t: self.ticks.append((time.monotonic(), t)))
            await self.controller.aclose()

        self._loop.run_until_complete(main())

    def start(self) -> ControllerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    @property
    def rung(self) -> int:
        return self.controller.state.rung

    def wait_for(self, predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ticks and predicate(self.ticks[-1][1]):
                return time.monotonic()
            time.sleep(0.1)
        history = [(round(t - self.ticks[0][0], 1), k.decision.action, k.decision.rung, k.observation.p99_seconds,
                    k.observation.request_rate, k.decision.reason) for t, k in self.ticks[-15:]]
        raise AssertionError(f"{what} not seen within {timeout}s; last ticks: {history}")


def replica_rung(url: str) -> int:
    return int(httpx.get(f"{url}/admin/beam-policy", timeout=5).json()["rung"])


def wait_replica(url: str, rung: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica_rung(url) == rung:
            return
        time.sleep(0.1)
    raise AssertionError(f"replica {url} did not take rung {rung} (it has {replica_rung(url)})")


def test_controller_with_real_prometheus_and_predictor(tmp_path: Path) -> None:
    prometheus_bin = require_binary("prometheus")
    from testbed.serving import build_tiny_model, start_server, tiny_request

    model_dir = build_tiny_model(tmp_path / "model")
    server = start_server(model_dir, env={"GENREC_ADMIN_TOKEN": TOKEN})
    load: Load | None = None
    prometheus: LocalPrometheus | None = None
    threads: list[ControllerThread] = []
    try:
        host = server.url.removeprefix("http://")
        prometheus = LocalPrometheus(prometheus_bin, tmp_path / "prometheus", {JOB: [host]}, scrape_interval="1s")
        prometheus.start()
        load = Load(server.predict_url, tiny_request(model_dir, k=10)).start()
        prometheus.wait_for_scrapes(JOB, scrapes=2)

        # Calibration on what the controller sees (the predictor's own histogram through
        # Prometheus): light-load p99 of this machine now, then a load that pushes it well past.
        def observed_p99() -> float:
            result = prometheus.query(f'histogram_quantile(0.99, sum by (le) (rate('
                                      f'genrec_request_duration_seconds_bucket{{job="{JOB}"}}[3s])))')
            value = float(result[0]["value"][1]) if result else math.nan
            return value if math.isfinite(value) else math.nan

        load.set(concurrency=1, pause=0.05)
        time.sleep(5.0)
        light = observed_p99()
        concurrency = 32
        while True:
            load.set(concurrency=concurrency, pause=0.0)
            time.sleep(6.0)
            heavy = observed_p99()
            if heavy > 3.0 * light or concurrency >= 256:
                break
            concurrency *= 2
        assert heavy > 3.0 * light, (f"cannot load the predictor: observed p99 {heavy:.4f}s at {concurrency} "
                                     f"clients against {light:.4f}s light")
        # Light load sits under the step-up threshold (0.6 x SLO), the heavy load over the step-down
        # threshold (0.9 x SLO).
        slo = heavy / 1.5
        load.set(concurrency=1, pause=0.05)

        cfg = GenrecConfig()
        c = cfg.controller
        c.prometheus_url, c.selector, c.replicas = prometheus.url, f'job="{JOB}"', [server.url]
        c.slo_p99_seconds = slo
        c.interval_seconds, c.window = 1.0, "3s"
        c.up_after, c.cooldown_seconds = 2, 3.0
        c.hold_seconds, c.safe_rung = 5.0, 1
        c.push_timeout_seconds, c.push_retries, c.push_backoff_seconds = 2.0, 2, 0.2
        c.state_file = str(tmp_path / "controller-state.json")
        c.metrics_port = free_port()
        metrics = ControllerMetrics()
        metrics.serve(c.metrics_port, addr="127.0.0.1")
        top = len(cfg.serving.beam_ladder) - 1
        ctl = ControllerThread(BeamController(c, cfg.serving, TOKEN, metrics=metrics)).start()
        threads.append(ctl)

        # Light load: the controller climbs from the default rung to the widest.
        ctl.wait_for(lambda t: t.decision.rung == top, 30.0, "climb to the widest rung under light load")
        wait_replica(server.url, top)

        # Overload: it steps down (the replica follows), as far as the narrowest rung.
        load.set(concurrency=concurrency, pause=0.0)
        ctl.wait_for(lambda t: t.decision.action == "down", 20.0, "a step down under overload")
        ctl.wait_for(lambda t: t.decision.rung == 0, 30.0, "the narrowest rung under overload")
        wait_replica(server.url, 0)
        scraped = httpx.get(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).text
        assert 'genrec_controller_decisions_total{action="down"}' in scraped
        assert "genrec_controller_rung 0.0" in scraped

        # Load drops: back up to the widest rung.
        load.set(concurrency=1, pause=0.05)
        ctl.wait_for(lambda t: t.decision.rung == top, 45.0, "climb back once the load drops")
        wait_replica(server.url, top)
        assert not [t for _, t in ctl.ticks if t.decision.action == "fallback"]

        # Prometheus stops: hold the last rung for hold_seconds, then fall back to the safe rung.
        last_good = max(at for at, t in ctl.ticks if t.observation.usable)
        prometheus.stop()
        fell = ctl.wait_for(lambda t: t.decision.action == "fallback", c.hold_seconds + 10.0, "fallback")
        during = [t for at, t in ctl.ticks if last_good < at < fell - 0.5]
        assert during and all(t.decision.action == "hold" and t.decision.rung == top for t in during)
        assert c.hold_seconds - 0.5 <= fell - last_good <= c.hold_seconds + 3 * c.interval_seconds
        assert ctl.rung == c.safe_rung
        wait_replica(server.url, c.safe_rung)
        errors_before = metrics.prometheus_errors._value.get()
        assert errors_before >= 3

        # Restart the controller with Prometheus still down: it resumes the safe rung from its state
        # file, pushes nothing new, and stays there.
        ctl.stop()
        second = ControllerThread(BeamController(c, cfg.serving, TOKEN, metrics=ControllerMetrics())).start()
        threads.append(second)
        assert second.controller.state.rung == c.safe_rung
        time.sleep(3.0)
        assert {t.decision.rung for _, t in second.ticks} == {c.safe_rung}
        assert replica_rung(server.url) == c.safe_rung

        # Prometheus back (same port and data): usable readings again, and the light load lets the
        # controller climb once more.
        prometheus.start()
        second.wait_for(lambda t: t.observation.usable, 20.0, "a usable reading after Prometheus returns")
        second.wait_for(lambda t: t.decision.rung == top, 45.0, "climb after Prometheus returns")
        assert load.errors == 0
    finally:
        for thread in threads:
            thread.stop()
        if load is not None:
            load.stop()
        if prometheus is not None:
            prometheus.stop()
        server.stop()
