"""The controller's loop and CLI: it needs a replica source and a token, fails cleanly without them,
and without a state file adopts the rung the replicas already run."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from genrec.config import ConfigError, ControllerConfig, GenrecConfig, ServingConfig
from genrec.controller.loop import BeamController
from genrec.controller.metrics import ControllerMetrics


def test_controller_requires_a_replica_source() -> None:
    with pytest.raises(ConfigError, match="replicas"):
        BeamController(ControllerConfig(), ServingConfig(), "t", metrics=ControllerMetrics())


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
    from testbed.prometheus import free_port

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
