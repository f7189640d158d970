"""The beam policy in force, the admin endpoint that sets it, and the HTTP middleware in front of the
predictor (body limit, in-flight count, the local guard, request metrics).

The admin contract (the beam-width controller depends on it):

- `GET /admin/beam-policy` -> 200 `{"rung": int, "widths": [int, ...], "source": "default"|"admin"|"guard"}`
- `PUT /admin/beam-policy` with `Authorization: Bearer <token>` and body `{"rung": int}` -> 200 with the
  same JSON as GET; 401 for a missing or wrong token; 400 for a body that is not JSON; 422 for a
  rung outside the ladder or a JSON body of the wrong shape; 403 "admin disabled" when the token
  variable (`serving.admin_token_env`) is unset.

The token is read from the environment at each call, so rotating the Kubernetes Secret behind it
needs no restart.

The local guard: when in-flight predict requests pass `serving.inflight_guard`, the rung steps one
down at once (once per excursion above the bound). It climbs back one rung at a time, never above
the rung the admin endpoint or the default set, each time in-flight requests have stayed at or below
`guard_recover_fraction` of the bound for `guard_recover_seconds`: a burst costs a rung for a while,
not for good, and a server without a controller recovers on its own.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from genrec.config import ServingConfig
from genrec.contract import ADMIN_PATH, rung_of
from genrec.serving import instruments as m
from genrec.serving.logs import client_error
from genrec.serving.policy import BeamLadder, BeamPolicy
from genrec.serving.requests import RequestError, parse_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class PolicySnapshot:
    rung: int
    policy: BeamPolicy
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"rung": self.rung, "widths": list(self.policy.widths), "source": self.source}


class PolicyState:
    """The rung in force, changed by the admin endpoint and the local guard (thread-safe: the decode
    thread reads it while the event loop changes it)."""

    def __init__(self, ladder: BeamLadder, inflight_guard: int, recover_fraction: float = 0.5,
                 recover_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ladder = ladder
        self.inflight_guard = inflight_guard
        # Calm: in-flight requests at or below this many.
        self.calm_bound = math.floor(recover_fraction * inflight_guard)
        self.recover_seconds = recover_seconds
        self.clock = clock
        self._lock = threading.Lock()
        # The rung the admin endpoint (or the default) chose; the guard only ever steps below it.
        self._chosen = PolicySnapshot(ladder.default_rung, ladder.policy(ladder.default_rung), "default")
        self._snapshot = self._chosen
        self.inflight = 0
        # The guard fires once per excursion above the bound and re-arms when in-flight requests are
        # back at or below it, so one burst costs one rung, not the whole ladder.
        self._guard_armed = True
        self._calm_since: float | None = clock()
        self._last_step = clock()
        self._export()

    @property
    def current(self) -> PolicySnapshot:
        return self._snapshot

    def set_rung(self, rung: int, source: str) -> PolicySnapshot:
        policy = self.ladder.policy(rung)  # PolicyError outside the ladder
        with self._lock:
            self._chosen = self._snapshot = PolicySnapshot(rung, policy, source)
        self._export()
        return self._snapshot

    def enter(self) -> None:
        """A predict request starts; steps one rung down when in-flight requests pass the guard."""
        with self._lock:
            now = self.clock()
            self.inflight += 1
            if self.inflight > self.calm_bound:
                self._calm_since = None
            fire = self.inflight > self.inflight_guard and self._guard_armed
            if fire:
                self._guard_armed = False
                rung = self._snapshot.rung
                if rung > 0:
                    self._snapshot = PolicySnapshot(rung - 1, self.ladder.policy(rung - 1), "guard")
                    self._last_step = now
        m.INFLIGHT.inc()
        if fire:
            m.GUARD_STEPDOWNS.inc()
            self._export()

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1
            if self.inflight <= self.inflight_guard:
                self._guard_armed = True
            if self.inflight <= self.calm_bound and self._calm_since is None:
                self._calm_since = self.clock()
        m.INFLIGHT.dec()
        self.tick()

    def tick(self) -> None:
        """Climbs one rung back towards the chosen one once calm has lasted `recover_seconds` (since
        it began, and since the last step). Called on every request and by the housekeeping thread,
        so an idle server recovers too."""
        with self._lock:
            snapshot, chosen = self._snapshot, self._chosen
            if snapshot.rung >= chosen.rung or self._calm_since is None:
                return
            now = self.clock()
            if now - max(self._calm_since, self._last_step) < self.recover_seconds:
                return
            rung = snapshot.rung + 1
            self._snapshot = chosen if rung == chosen.rung else PolicySnapshot(
                rung, self.ladder.policy(rung), "guard")
            self._last_step = now
        self._export()

    def _export(self) -> None:
        snapshot = self._snapshot
        m.BEAM_RUNG.set(snapshot.rung)
        for level, width in enumerate(snapshot.policy.widths):
            m.BEAM_WIDTH.labels(level=str(level)).set(width)


def is_inference_path(method: str, path: str) -> bool:
    """A predict call of either protocol, whatever its model, version or verb (`:explain` too): these
    count in genrec_requests_total and in the in-flight guard."""
    return method == "POST" and (path.startswith("/v1/models/") or
                                 (path.startswith("/v2/models/") and path.endswith("/infer")))


def route_class(path: str) -> str:
    if path.startswith("/v2/health") or path == "/":
        return "health"
    if path == ADMIN_PATH:
        return "admin"
    if path == "/metrics":
        return "metrics"
    if path.startswith(("/v1/models", "/v2/models", "/v2")):
        return "metadata"
    return "other"


class ServingMiddleware:
    """Pure ASGI middleware: rejects bodies over `max_body_bytes` with 413 before anything parses
    them, and around every predict/infer call keeps the in-flight count (and the guard), the
    end-to-end latency histogram and the outcome counter. Every response is counted by route and
    status class."""

    def __init__(self, app: ASGIApp, config: ServingConfig, state: PolicyState) -> None:
        self.app = app
        self.max_body = config.max_body_bytes
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        inference = is_inference_path(method, path)
        status = {"code": 0}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if method in ("POST", "PUT", "PATCH"):
            body = await self._bounded_body(scope, receive)
            if body is None:
                message = f"request body is larger than {self.max_body} bytes (serving.max_body_bytes)"
                client_error(413, method, path, message)
                await _json_response(send_status, 413, {"error": message})
                self._count(inference, path, 413)
                return
            if not isinstance(body, bytes):
                # The client went away (or the connection's body timeout closed it) before the body
                # was complete: nothing to answer, and nothing half-read is parsed.
                if inference:
                    m.REQUESTS.labels(code="client_error").inc()
                return
            receive = _replay(body)
        if not inference:
            try:
                await self.app(scope, receive, send_status)
            finally:
                self._count(False, path, status["code"] or 500)
            return
        self.state.enter()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.state.leave()
            m.REQUEST_SECONDS.observe(time.perf_counter() - started)
            self._count(True, path, status["code"] or 500)

    @staticmethod
    def _count(inference: bool, path: str, code: int) -> None:
        if inference:
            m.REQUESTS.labels(code="ok" if code < 400 else "client_error" if code < 500 else
                              "overloaded" if code == 503 else "server_error").inc()
        m.HTTP_RESPONSES.labels(route="inference" if inference else route_class(path),
                                status=f"{code // 100}xx").inc()

    async def _bounded_body(self, scope: Scope, receive: Receive) -> bytes | object | None:
        """The whole body; None when it is over the limit; `_GONE` when the client disconnected first."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return None
                except ValueError:
                    return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


_GONE = object()


def _replay(body: bytes) -> Receive:
    sent = {"done": False}

    async def receive() -> Message:
        if sent["done"]:
            return {"type": "http.disconnect"}
        sent["done"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _json_response(send: Send, status: int, content: dict[str, Any],
                         headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def install_admin_routes(app: Any, state: PolicyState, token_env: str, max_json_depth: int) -> None:
    """Adds GET/PUT /admin/beam-policy to a FastAPI app."""
    async def get_policy(_: Request) -> JSONResponse:
        return JSONResponse(state.current.to_json())

    def refuse(request: Request, status: int, message: str, headers: dict[str, str] | None = None
               ) -> JSONResponse:
        client_error(status, request.method, request.url.path, message)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def put_policy(request: Request) -> JSONResponse:
        token = os.environ.get(token_env, "")
        if not token:
            return refuse(request, 403, f"admin disabled: {token_env} is not set on this replica")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return refuse(request, 401, "a valid 'Authorization: Bearer <token>' header is required",
                          {"WWW-Authenticate": "Bearer"})
        try:
            body = parse_json(await request.body(), max_json_depth, "the admin body")
        except RequestError as exc:
            return refuse(request, 400, f'{exc}; send {{"rung": <int>}}')
        rung = rung_of(body)
        if rung is None or set(body) != {"rung"}:
            return refuse(request, 422, 'the body must be JSON {"rung": <int>} and nothing else')
        if not 0 <= rung <= state.ladder.top:
            return refuse(request, 422, f"rung {rung} is outside the ladder 0..{state.ladder.top}")
        return JSONResponse(state.set_rung(rung, "admin").to_json())

    app.add_route(ADMIN_PATH, get_policy, methods=["GET"])
    app.add_route(ADMIN_PATH, put_policy, methods=["PUT"])
