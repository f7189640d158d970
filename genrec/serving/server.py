"""Runs `GenerativeRecommender` in a KServe `ModelServer` with genrec's routes and connection bounds.

KServe's ModelServer keeps its lifecycle here (model registration, the event loop, signal handling,
stopping the servers and unloading the model on SIGTERM). What it serves is genrec's:

- the HTTP app is `genrec.serving.routes.build_app`, not KServe's route table (which let anyone
  unload the model and answered 5xx to malformed v2 bodies);
- uvicorn runs `genrec.serving.http_protocol`'s bounded protocol: head size, header count, and
  head and body timeouts;
- uvicorn binds the given host (KServe's binds 0.0.0.0), and gRPC, when `serving.grpc` is on, binds
  the same host (`genrec.serving.grpc_service`).
"""

from __future__ import annotations

import gc
import logging
import sys
from importlib import metadata as package_metadata
from typing import Any

from genrec.config import ServingConfig
from genrec.serving._kserve import import_kserve
from genrec.serving.http_protocol import ConnectionLimits, bounded_protocol
from genrec.serving.instruments import LOG_LINES_DROPPED, time_gc_pauses
from genrec.serving.logs import install_rate_limits
from genrec.serving.model import GenerativeRecommender

kserve = import_kserve()
import uvicorn  # noqa: E402
from kserve.model_server import ModelServer  # noqa: E402
from kserve.protocol.rest.server import RESTServer, _RefreshingServer  # noqa: E402

log = logging.getLogger("genrec.serving")

GIL_SWITCH_SECONDS = 0.0005
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class GenrecRESTServer(RESTServer):  # type: ignore[misc]
    """KServe's REST server around genrec's app, on genrec's host and bounded protocol."""

    def __init__(self, app: Any, host: str, port: int, serving: ServingConfig, server: ModelServer) -> None:
        super().__init__(app, server.dataplane, server.model_repository_extension, port,
                         grace_period=serving.shutdown_grace_seconds,
                         timeout_keep_alive=serving.keep_alive_seconds)
        self.config = uvicorn.Config(
            app, host=host, port=port, log_config=None, loop="auto",
            http=bounded_protocol(ConnectionLimits.from_config(serving)),
            timeout_keep_alive=serving.keep_alive_seconds,
            timeout_graceful_shutdown=serving.shutdown_grace_seconds,
            # No Server header: it tells an attacker the framework and nothing to a client.
            server_header=False)
        self._server = _RefreshingServer(self.config)

    def create_application(self) -> None:
        """genrec's app is complete before the server starts (`routes.build_app`)."""


class GenrecModelServer(ModelServer):  # type: ignore[misc]
    def __init__(self, app: Any, model: GenerativeRecommender, host: str, http_port: int,
                 grpc_port: int | None) -> None:
        serving = model.serving
        super().__init__(http_port=http_port, grpc_port=grpc_port or serving.grpc_port,
                         enable_grpc=grpc_port is not None, workers=1, enable_latency_logging=False,
                         timeout_keep_alive=serving.keep_alive_seconds,
                         grace_period=serving.shutdown_grace_seconds)
        self.app = app
        self.model = model
        self.host = host

    def start(self, models: list[Any]) -> None:
        """KServe's single-process start, with genrec's REST and gRPC servers."""
        import asyncio

        from genrec.serving.grpc_service import GenrecGRPCServer, GenrecInferenceServicer

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = GenrecRESTServer(self.app, self.host, self.http_port, self.model.serving, self)
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            servicer = GenrecInferenceServicer(self.model, genrec_version())
            self._grpc_server = GenrecGRPCServer(self.host, self.grpc_port, servicer, self.grace_period)
            self.servers.append(self._grpc_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def genrec_version() -> str:
    try:
        return package_metadata.version("genrec")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def configure_logging(serving: ServingConfig, access_log: bool) -> None:
    """One line per record on stderr for genrec's loggers; client errors and uvicorn's per-request
    warnings rate-limited; per-request trace and access lines off unless asked for."""
    genrec_log = logging.getLogger("genrec")
    if not genrec_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        genrec_log.addHandler(handler)
        genrec_log.propagate = False
    genrec_log.setLevel(logging.INFO)
    if not access_log:
        # KServe logs a trace line per request and per handler, uvicorn an access line: at a few
        # hundred requests a second on two cores that logging costs more than the decoding.
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    install_rate_limits(serving.client_error_logs_per_minute, on_drop=LOG_LINES_DROPPED.inc)


def serve(model: GenerativeRecommender, host: str, http_port: int, grpc_port: int | None,
          access_log: bool = False) -> None:
    """Loads the model and serves it until SIGTERM/SIGINT (blocking)."""
    from genrec.serving.routes import build_app

    model.load()
    app = build_app(model)
    # The decode thread runs beam search's Python between torch ops while holding the GIL; with
    # CPython's default 5 ms switch interval the event loop could wait that long to parse or answer
    # a request. A shorter interval keeps HTTP latency low while a batch decodes.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    # Everything loaded so far (torch, KServe, the model) lives for the whole process: moved out of
    # the collector's generations, a full collection no longer walks it in the middle of requests.
    gc.collect()
    gc.freeze()
    time_gc_pauses()
    server = GenrecModelServer(app, model, host, http_port, grpc_port)
    # After the ModelServer exists: its constructor installs KServe's logging configuration.
    configure_logging(model.serving, access_log)
    grpc_note = f", gRPC on {host}:{grpc_port}" if grpc_port is not None else ""
    log.info("serving %s on http://%s:%d%s", model.name, host, http_port, grpc_note)
    server.start([model])


def in_process_app(model: GenerativeRecommender) -> Any:
    """The predictor's HTTP app for an HTTP test client (no sockets): the same routes, middleware
    and admin endpoint `serve` runs, called in-process. The app's shutdown (the end of a
    `with TestClient(...)` block) stops the model, as SIGTERM does a server's."""
    from genrec.serving.routes import build_app

    if not model.ready:
        model.load()
    return build_app(model, stop_model_on_shutdown=True)
