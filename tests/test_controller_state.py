"""What the controller saves across restarts, and a restart that resumes from it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from genrec.config import GenrecConfig
from genrec.controller.law import LawState, decide
from genrec.controller.loop import BeamController
from genrec.controller.metrics import ControllerMetrics
from genrec.controller.state import load_state, save_state
from tests.controller_support import ok


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


class _PrometheusAPI(BaseHTTPRequestHandler):
    """The instant-query endpoint of a Prometheus whose predictor is calm: every query answers a
    one-sample vector with `server.answers[<signal>]` (p99 for histogram_quantile, else the rate)."""

    def do_GET(self) -> None:  # noqa: N802
        query = parse_qs(urlparse(self.path).query)["query"][0]
        value = self.server.answers["p99" if "histogram_quantile" in query else  # type: ignore[attr-defined]
                                    "rate" if "rate(" in query else "other"]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time.time(), str(value)]}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_every_tick_saves_what_a_restart_needs(tmp_path: Path) -> None:
    """Calm intervals change no rung but do teach the controller (the calm rates, the calm count):
    each is saved at once, so a restart resumes them, not only the rung."""
    prometheus = ThreadingHTTPServer(("127.0.0.1", 0), _PrometheusAPI)
    prometheus.answers = {"p99": 0.01, "rate": 40.0, "other": 0.0}  # type: ignore[attr-defined]
    threading.Thread(target=prometheus.serve_forever, daemon=True).start()
    cfg = GenrecConfig()
    cfg.controller.state_file = str(tmp_path / "state.json")
    cfg.controller.replicas = ["http://127.0.0.1:9"]
    cfg.controller.prometheus_url = f"http://127.0.0.1:{prometheus.server_address[1]}"
    cfg.controller.push_retries = 0
    clock = [100.0]
    try:
        controller = BeamController(cfg.controller, cfg.serving, "t", metrics=ControllerMetrics(),
                                    clock=lambda: clock[0], wall=lambda: 1_000_000.0 + clock[0])

        async def one_tick() -> None:
            await controller.tick()
            await controller.pusher.wait()

        asyncio.run(one_tick())
        saved = json.loads(Path(cfg.controller.state_file).read_text())
        assert saved["rung"] == cfg.serving.default_rung, "a calm tick changes no rung"
        assert saved["calm"] == 1 and saved["calm_rates"][str(saved["rung"])][0] == 40.0
        prometheus.answers["rate"] = 55.0  # type: ignore[attr-defined]
        clock[0] += 5.0
        asyncio.run(one_tick())
        saved = json.loads(Path(cfg.controller.state_file).read_text())
        assert saved["calm"] == 2 and saved["calm_rates"][str(saved["rung"])][0] == 55.0
        back = load_state(cfg.controller.state_file, 3, clock_now=7.0, wall_now=1_000_000.0 + clock[0])
        assert back is not None and back.calm == 2 and back.calm_rates[saved["rung"]][0] == 55.0
    finally:
        prometheus.shutdown()
