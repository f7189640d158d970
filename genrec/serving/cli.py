"""`genrec serve`: the KServe predictor on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from genrec.cli_support import ConfigOption, SetOption
from genrec.config import ConfigError, load_config


def serve(
    model_dir: str = typer.Option(..., "--model-dir", help="Model folder (or file:// URI) from training."),
    feature_repo: Path = typer.Option(None, "--feature-repo",
                                      help="Feast feature repo with the users' summaries (online store)."),
    config: Path = ConfigOption,
    overrides: list[str] = SetOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 in a container)."),
    http_port: int = typer.Option(None, "--http-port", help="HTTP port (default serving.http_port)."),
    grpc_port: int = typer.Option(None, "--grpc-port", help="gRPC port (default serving.grpc_port)."),
    grpc: bool = typer.Option(None, "--grpc/--no-grpc",
                              help="Also serve the v2 gRPC protocol, on the same host "
                                   "(default serving.grpc: off)."),
    history: Path = typer.Option(None, "--history",
                                 help="Interactions file (parquet/csv) to build the DARE pool from."),
    threads: int = typer.Option(None, "--threads",
                                help="Torch threads for decoding (default: OMP_NUM_THREADS if set, else 1)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda[:N]."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log",
                                    help="Log a line per request (KServe trace and uvicorn access logs)."),
) -> None:
    """Serve a trained model with KServe: v1/v2 predict, /admin/beam-policy, /metrics."""
    import os

    import torch

    from genrec.features.repo import FeatureRepoError
    from genrec.model.artefact import ModelArtefactError
    from genrec.serving.speculative import PoolError

    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if threads is None and not os.environ.get("OMP_NUM_THREADS"):
        # One decode thread unless told: the event loop needs a core too, and a torch thread that
        # waits on a busy core spins (batch-1 decode went from 4 ms to 160 ms on a loaded 2-core box).
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from genrec.serving.model import GenerativeRecommender, ModelSourceError
    from genrec.serving.server import serve as run_server

    model = GenerativeRecommender(cfg.serving.model_name, model_dir, cfg, feature_repo, history, device)
    use_grpc = cfg.serving.grpc if grpc is None else grpc
    try:
        run_server(model, host, http_port or cfg.serving.http_port,
                   (grpc_port or cfg.serving.grpc_port) if use_grpc else None, access_log)
    except (ModelSourceError, ModelArtefactError, PoolError, FeatureRepoError, ValueError, OSError) as exc:
        # One line: which file or setting, what is wrong, what to do (the exception says all three).
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
