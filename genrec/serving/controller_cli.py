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
from rich.console import Console
from rich.markup import escape

from genrec.config import ConfigError, load_config

controller_app = typer.Typer(help="Run the beam-width controller (reads Prometheus, sets replicas' beams).")

err_console = Console(stderr=True)


@controller_app.callback(invoke_without_command=True)
def controller(
    config_path: Path | None = typer.Option(None, "--config", "-c", help="YAML config file (see configs/)."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Override a config field: section.key=value (repeatable)."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG logs every interval's decision."),
) -> None:
    """Every controller.interval_seconds: query Prometheus, choose a rung, push it to every replica.

    Replicas: controller.replicas (base URLs) or the Endpoints of controller.kubernetes_service. The
    admin token is read from the environment variable named by serving.admin_token_env. Metrics on
    controller.metrics_port.
    """
    from genrec.serving.controller import BeamController, admin_token

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path, overrides)
        token = admin_token(cfg.serving)
        ctl = BeamController(cfg.controller, cfg.serving, token)
    except ConfigError as exc:
        err_console.print("[bold red]error:[/] " + escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    try:
        ctl.metrics.serve(cfg.controller.metrics_port)
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] cannot serve metrics on port {cfg.controller.metrics_port}: "
                          + escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    asyncio.run(_run(ctl))


async def _run(ctl: object) -> None:
    from genrec.serving.controller import BeamController

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
