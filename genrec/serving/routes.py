"""genrec's HTTP routes, served by KServe's ModelServer in place of KServe's own route table.

| route | answer |
| --- | --- |
| `GET /`, `GET /v2/health/live` | 200 `{"live": true}`; 503 when a decode batch is stuck |
| `GET /v2/health/ready` | 200 `{"ready": true, "model", "feature_store": {...}}`; 503 with `error` when not |
| `GET /v1/models`, `GET /v2/models` | `{"models": [name]}` |
| `GET /v1/models/{name}`, `GET /v2/models/{name}/ready` | `{"name", "ready"}` (503 when not ready) |
| `GET /v2` | server metadata |
| `GET /v2/models/{name}` | model metadata: the real inputs and outputs |
| `POST /v1/models/{name}:predict` | v1 |
| `POST /v2/models/{name}/infer` | v2, JSON or binary, with `outputs` honoured |
| `GET /metrics` | Prometheus, this process's series only |
| `GET/PUT /admin/beam-policy` | `genrec.serving.admin` |

KServe's model repository routes (`/v2/repository/...`, load and unload) are not served: a replica
serves the one model it loaded at start, and a new version is rolled out by the deploy step. With
them went the way for anyone to unload the model. Versioned paths (`/versions/{v}`) and `:explain`
are not served either; each such path gets a 404 that says so.

Every error is `{"error": "..."}`: a client mistake is a 4xx, logged as one rate-limited WARNING
line; only a bug in genrec is a 500 (logged with its traceback).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata as package_metadata
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from genrec.serving import instruments as m
from genrec.serving import v2
from genrec.serving.admin import ServingMiddleware, install_admin_routes
from genrec.serving.batching import Overloaded
from genrec.serving.instruments import exported
from genrec.serving.logs import client_error
from genrec.serving.model import GenerativeRecommender, NotReady, predictions
from genrec.serving.requests import RequestError, parse_json, parse_v1

log = logging.getLogger("genrec.serving")

Endpoint = Callable[[Request], Awaitable[Response]]


class NotServed(LookupError):
    """The path names a model this server does not serve."""


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, headers=headers, media_type="application/json")


def guarded(endpoint: Endpoint) -> Endpoint:
    """Maps every failure of a route to its status and an `{"error"}` body: nothing escapes to the
    framework's 500 handler, whose logs amplify a client's mistake."""

    async def route(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RequestError as exc:
            return refuse(request, 400, str(exc))
        except NotServed as exc:
            return refuse(request, 404, str(exc))
        except Overloaded as exc:
            return json_response({"error": str(exc)}, 503, {"Retry-After": "1"})
        except NotReady as exc:
            return json_response({"error": str(exc)}, 503, {"Retry-After": "1"})
        except Exception:  # noqa: BLE001 - a genrec bug: logged once with its traceback, answered 500
            log.exception("%s %s failed", request.method, request.url.path[:120])
            return json_response({"error": "internal error in genrec (logged on the server)"}, 500)

    route.__name__ = endpoint.__name__
    return route


def refuse(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    client_error(status, request.method, request.url.path, message)
    return json_response({"error": message}, status, headers)


class Routes:
    def __init__(self, model: GenerativeRecommender) -> None:
        self.model = model
        self.name = model.name
        self.max_depth = model.serving.max_json_depth
        try:
            self.version = package_metadata.version("genrec")
        except package_metadata.PackageNotFoundError:
            self.version = "unknown"

    def _check_name(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.name:
            raise NotServed(f"model {name[:60]!r} is not served here; this server serves {self.name!r}")

    async def live(self, _: Request) -> Response:
        live, detail = self.model.liveness()
        return json_response({"live": live, **detail}, 200 if live else 503)

    async def ready(self, _: Request) -> Response:
        ready, detail = self.model.readiness()
        return json_response({"ready": ready, **detail}, 200 if ready else 503)

    async def models(self, _: Request) -> Response:
        return json_response({"models": [self.name]})

    async def model_ready(self, request: Request) -> Response:
        self._check_name(request)
        ready, detail = self.model.readiness()
        body = {"name": self.name, "ready": ready}
        if not ready:
            body["error"] = detail.get("error", "not ready")
        return json_response(body, 200 if ready else 503)

    async def server_metadata(self, _: Request) -> Response:
        return json_response({"name": "genrec", "version": self.version,
                              "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        self._check_name(request)
        return json_response(self.model.v2_metadata())

    async def predict(self, request: Request) -> Response:
        self._check_name(request)
        body = await request.body()
        started = time.perf_counter()
        instances = parse_v1(parse_json(body, self.max_depth, "the v1 request"), self.model.request_rules())
        parsed = time.perf_counter()
        m.STAGE["parse"].observe(parsed - started)
        answers = await self.model.recommend(instances)
        answered = time.perf_counter()
        response = json_response(predictions(answers, instances))
        m.STAGE["serialise"].observe(time.perf_counter() - answered)
        return response

    async def infer(self, request: Request) -> Response:
        self._check_name(request)
        raw = await request.body()
        started = time.perf_counter()
        decoded = v2.decode_request(raw, request.headers.get(v2.HEADER_LENGTH), self.max_depth)
        instances = self.model.v2_instances(decoded)
        parsed = time.perf_counter()
        m.STAGE["parse"].observe(parsed - started)
        answers = await self.model.recommend(instances)
        answered = time.perf_counter()
        body, headers = v2.encode_response(self.name, decoded, self.model.v2_outputs(answers))
        m.STAGE["serialise"].observe(time.perf_counter() - answered)
        return Response(body, headers=headers)

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import exposition

        encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(exported), headers={"content-type": content_type})  # type: ignore[arg-type]

    def install(self, app: FastAPI) -> None:
        table: list[tuple[str, Endpoint, str]] = [
            ("/", self.live, "GET"),
            ("/v2/health/live", self.live, "GET"),
            ("/v2/health/ready", self.ready, "GET"),
            ("/v1/models", self.models, "GET"),
            ("/v2/models", self.models, "GET"),
            ("/v1/models/{name}", self.model_ready, "GET"),
            ("/v2/models/{name}/ready", self.model_ready, "GET"),
            ("/v2", self.server_metadata, "GET"),
            ("/v2/models/{name}", self.model_metadata, "GET"),
            ("/v1/models/{name}:predict", self.predict, "POST"),
            ("/v2/models/{name}/infer", self.infer, "POST"),
            ("/metrics", self.metrics, "GET"),
        ]
        for path, endpoint, method in table:
            app.add_route(path, guarded(endpoint), methods=[method])

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """404 and 405 from the router, with a hint where the path says what the client wanted."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        path = request.url.path
        hint = self._hint(path)
        if hint:
            return refuse(request, 404, hint)
        if status == 405:
            allowed = getattr(exc, "headers", None)
            return refuse(request, 405, f"{request.method} is not allowed on {path[:120]}", allowed)
        return refuse(request, 404, f"no route {request.method} {path[:120]}")

    def _hint(self, path: str) -> str:
        if path.startswith("/v2/repository"):
            return ("model repository routes are off: this server serves the one model it loaded at start; "
                    "roll out a new version with the deploy step")
        if "/versions/" in path:
            return (f"this server serves one unversioned model, {self.name!r}: drop /versions/<v> from "
                    "the path")
        last = path.rsplit("/", 1)[-1]
        if path.startswith("/v1/models/") and ":" in last and not last.endswith(":predict"):
            verb = last.rsplit(":", 1)[-1][:20]
            return f"genrec serves no {verb!r} verb: use /v1/models/{self.name}:predict"
        return ""


def build_app(model: GenerativeRecommender, stop_model_on_shutdown: bool = False) -> FastAPI:
    """The predictor's HTTP app for a loaded model: genrec's middleware, routes and admin endpoint.
    With `stop_model_on_shutdown` the app's lifespan stops the model (its decode process, threads)
    when the app shuts down: an in-process app owns its model, where the server's ModelServer stops it."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if stop_model_on_shutdown:
                model.stop()

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    routes = Routes(model)
    app.add_middleware(ServingMiddleware, config=model.serving, state=model.state)
    routes.install(app)
    install_admin_routes(app, model.state, model.serving.admin_token_env, model.serving.max_json_depth)
    app.add_exception_handler(HTTPException, routes.http_error)
    return app
