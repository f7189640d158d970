"""`genrec controller`: run the Prometheus-driven beam-width controller until SIGTERM/SIGINT.

Mounted by the main CLI. Bad configuration (a missing token, a bad window, no replicas) ends with
one clear line and exit code 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from genrec.cli_support import ConfigOption, SetOption, fail
from genrec.config import ConfigError, load_config

controller_app = typer.Typer(help="Run the beam-width controller (reads Prometheus, sets replicas' beams).")


@controller_app.callback(invoke_without_command=True)
def controller(
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG logs every interval's decision."),
) -> None:
    """Every controller.interval_seconds: query Prometheus, choose a rung, push it to every replica.

    Replicas: controller.replicas (base URLs) or the Endpoints of controller.kubernetes_service. The
    admin token is read from the environment variable named by serving.admin_token_env. Metrics on
    controller.metrics_port.
    """
    from genrec.controller.loop import BeamController, admin_token

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path, overrides)
        token = admin_token(cfg.serving)
        ctl = BeamController(cfg.controller, cfg.serving, token)
    except ConfigError as exc:
        fail(str(exc))
    try:
        ctl.metrics.serve(cfg.controller.metrics_port)
    except OSError as exc:
        fail(f"cannot serve metrics on port {cfg.controller.metrics_port}: {exc}")
    asyncio.run(_run(ctl))


async def _run(ctl: object) -> None:
    from genrec.controller.loop import BeamController

    assert isinstance(ctl, BeamController)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Kubernetes stops a pod with SIGTERM: finish the interval, keep the state file, exit 0.
        loop.add_signal_handler(sig, stop.set)
    try:
        await ctl.run(stop)
    finally:
        await ctl.aclose()
