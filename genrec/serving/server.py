"""Runs `GenerativeRecommender` in a `kserve.ModelServer`, plus genrec's own HTTP routes.

KServe's REST server serves one module-level FastAPI app (`kserve.model_server.app`) with the v1/v2
inference routes, health routes and `GET /metrics` (the default Prometheus registry, where
`genrec.serving.instruments` lives). genrec adds to that same app, so everything is on one HTTP port:

- `ServingMiddleware`: the body-size limit (413), the in-flight count, the local guard and the
  request metrics;
- `GET/PUT /admin/beam-policy` (`genrec.serving.admin`).

KServe binds 0.0.0.0; `LocalModelServer` binds the host it is given (loopback in tests and on a
developer machine).
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

from genrec.serving._kserve import import_kserve
from genrec.serving.admin import ServingMiddleware, install_admin_routes
from genrec.serving.batching import Overloaded
from genrec.serving.model import GenerativeRecommender

kserve = import_kserve()
from kserve.model_server import ModelServer  # noqa: E402

log = logging.getLogger("genrec.serving")

GIL_SWITCH_SECONDS = 0.0005


def install(app: Any, model: GenerativeRecommender) -> None:
    """genrec's middleware, admin routes and validation-error handler on a FastAPI app (before it
    starts serving)."""
    from fastapi.exceptions import RequestValidationError

    app.add_middleware(ServingMiddleware, config=model.serving, state=model.state)
    install_admin_routes(app, model.state, model.serving.admin_token_env)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Overloaded, overloaded)


async def overloaded(_: Any, exc: Exception) -> Any:
    """503 with Retry-After for a shed request: the client (or the load balancer) may retry it on
    a replica with room, and the controller sees the load in the request rate."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def validation_error(_: Any, exc: Exception) -> Any:
    """422 for a v2 body that does not fit the Open Inference Protocol schema. FastAPI's own handler
    echoes the offending input back, and fails with a 500 when that input is Infinity or NaN (valid
    to Python's JSON parser, not to its encoder); this one names the fields only."""
    from fastapi.responses import JSONResponse

    errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                         for e in errors[:5])
    return JSONResponse({"error": f"the request does not fit the inference protocol: {problems}"},
                        status_code=422)


class LocalModelServer(ModelServer):  # type: ignore[misc]
    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host

    async def _serve(self) -> None:
        # The REST server exists once start() ran; uvicorn reads the host only when it binds.
        if self._rest_server is not None:
            self._rest_server.config.host = self.host
        await super()._serve()


def serve(model: GenerativeRecommender, host: str, http_port: int, grpc_port: int | None,
          access_log: bool = False) -> None:
    """Loads the model and serves it until SIGTERM/SIGINT (blocking)."""
    import kserve.model_server as kserve_server


    model.load()
    install(kserve_server.app, model)
    # The decode thread runs beam search's Python between torch ops while holding the GIL; with
    # CPython's default 5 ms switch interval the event loop could wait that long to parse or answer
    # a request. A shorter interval keeps HTTP latency low while a batch decodes.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    # Everything loaded so far (torch, KServe, the model) lives for the whole process: moved out of
    # the collector's generations, a full collection no longer walks it in the middle of requests.
    gc.collect()
    gc.freeze()
    if not access_log:
        from kserve.protocol.rest.server import RESTServer

        # KServe's REST server wraps every request in timing_asgi's TimingMiddleware, which calls
        # getrusage twice per request and formats a trace line: 1-1.5 ms of event-loop time per
        # request on a loaded 2-core machine, for logs that are off. genrec's own middleware keeps
        # the latency histograms. (serve() owns its process, so patching the class is contained.)
        RESTServer._add_middlewares = lambda self, app: None
    server = LocalModelServer(host=host, http_port=http_port, grpc_port=grpc_port or 0,
                              enable_grpc=grpc_port is not None, workers=1,
                              enable_latency_logging=False)
    if not access_log:
        # KServe logs a trace line per request and per handler, uvicorn an access line: at a few
        # hundred requests a second on two cores that logging costs more than the decoding. (Set
        # after the ModelServer exists: its constructor installs KServe's logging configuration.)
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    log.info("serving %s on http://%s:%d", model.name, host, http_port)
    server.start([model])


def in_process_app(model: GenerativeRecommender) -> Any:
    """A fresh FastAPI app with KServe's routes, genrec's middleware and admin routes, for an HTTP
    test client (no sockets): the same handlers `serve` runs, called in-process."""
    from fastapi import FastAPI
    from fastapi.responses import ORJSONResponse
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    if not model.ready:
        model.load()
    repository = ModelRepository()
    repository.update(model)
    dataplane = DataPlane(model_registry=repository)
    rest = RESTServer("kserve.model_server:app", dataplane, ModelRepositoryExtension(repository), http_port=0)
    app = FastAPI(default_response_class=ORJSONResponse)
    install(app, model)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    return app
