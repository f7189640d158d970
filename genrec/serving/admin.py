"""The beam policy in force, the admin endpoint that sets it, and the HTTP middleware in front of the
predictor (body limit, in-flight count, the local guard, request metrics).

The admin contract (the beam-width controller depends on it):

- `GET /admin/beam-policy` -> 200 `{"rung": int, "widths": [int, ...], "source": "default"|"admin"|"guard"}`
- `PUT /admin/beam-policy` with `Authorization: Bearer <token>` and body `{"rung": int}` -> 200 with the
  same JSON as GET; 401 for a missing or wrong token; 422 for a rung outside the ladder or a bad body;
  403 "admin disabled" when the token variable (`serving.admin_token_env`) is unset.

The token is read from the environment at each call, so rotating the Kubernetes Secret behind it
needs no restart.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from genrec.config import ServingConfig
from genrec.serving import instruments as m
from genrec.serving.policy import BeamLadder, BeamPolicy

ADMIN_PATH = "/admin/beam-policy"
SOURCES = ("default", "admin", "guard")

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

    def __init__(self, ladder: BeamLadder, inflight_guard: int) -> None:
        self.ladder = ladder
        self.inflight_guard = inflight_guard
        self._lock = threading.Lock()
        self._snapshot = PolicySnapshot(ladder.default_rung, ladder.policy(ladder.default_rung), "default")
        self.inflight = 0
        # The guard fires once per excursion above the bound and re-arms when in-flight requests are
        # back at or below it, so one burst costs one rung, not the whole ladder.
        self._guard_armed = True
        self._export()

    @property
    def current(self) -> PolicySnapshot:
        return self._snapshot

    def set_rung(self, rung: int, source: str) -> PolicySnapshot:
        policy = self.ladder.policy(rung)  # PolicyError outside the ladder
        with self._lock:
            self._snapshot = PolicySnapshot(rung, policy, source)
        self._export()
        return self._snapshot

    def enter(self) -> None:
        """A predict request starts; steps one rung down when in-flight requests pass the guard."""
        with self._lock:
            self.inflight += 1
            fire = self.inflight > self.inflight_guard and self._guard_armed
            if fire:
                self._guard_armed = False
                rung = self._snapshot.rung
                if rung > 0:
                    self._snapshot = PolicySnapshot(rung - 1, self.ladder.policy(rung - 1), "guard")
        m.INFLIGHT.inc()
        if fire:
            m.GUARD_STEPDOWNS.inc()
            self._export()

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1
            if self.inflight <= self.inflight_guard:
                self._guard_armed = True
        m.INFLIGHT.dec()

    def _export(self) -> None:
        snapshot = self._snapshot
        m.BEAM_RUNG.set(snapshot.rung)
        for level, width in enumerate(snapshot.policy.widths):
            m.BEAM_WIDTH.labels(level=str(level)).set(width)


def is_inference_path(path: str) -> bool:
    return (path.startswith("/v1/models/") and path.endswith(":predict")) or \
        (path.startswith("/v2/models/") and path.endswith("/infer"))


class ServingMiddleware:
    """Pure ASGI middleware: rejects bodies over `max_body_bytes` with 413 before anything parses
    them, and around every predict/infer call keeps the in-flight count (and the guard), the
    end-to-end latency histogram and the outcome counter."""

    def __init__(self, app: ASGIApp, config: ServingConfig, state: PolicyState) -> None:
        self.app = app
        self.max_body = config.max_body_bytes
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._bounded_body(scope, receive)
            if body is None:
                await _json_response(send, 413, {"error": f"request body is larger than "
                                                          f"{self.max_body} bytes (serving.max_body_bytes)"})
                if is_inference_path(scope["path"]):
                    m.REQUESTS.labels(code="client_error").inc()
                return
            receive = _replay(body)
        if not is_inference_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.state.enter()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.state.leave()
            m.REQUEST_SECONDS.observe(time.perf_counter() - started)
            code = status["code"]
            m.REQUESTS.labels(code="ok" if code < 400 else "client_error" if code < 500 else
                              "overloaded" if code == 503 else "server_error").inc()

    async def _bounded_body(self, scope: Scope, receive: Receive) -> bytes | None:
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
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


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


def install_admin_routes(app: Any, state: PolicyState, token_env: str) -> None:
    """Adds GET/PUT /admin/beam-policy to a FastAPI app."""
    async def get_policy() -> JSONResponse:
        return JSONResponse(state.current.to_json())

    async def put_policy(request: Request) -> JSONResponse:
        token = os.environ.get(token_env, "")
        if not token:
            return JSONResponse({"error": f"admin disabled: {token_env} is not set on this replica"},
                                status_code=403)
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return JSONResponse({"error": "a valid 'Authorization: Bearer <token>' header is required"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": 'the body must be JSON {"rung": <int>}'}, status_code=422)
        rung = body.get("rung") if isinstance(body, dict) else None
        if not isinstance(rung, int) or isinstance(rung, bool):
            return JSONResponse({"error": 'the body must be JSON {"rung": <int>}'}, status_code=422)
        if not 0 <= rung <= state.ladder.top:
            return JSONResponse({"error": f"rung {rung} is outside the ladder 0..{state.ladder.top}"},
                                status_code=422)
        return JSONResponse(state.set_rung(rung, "admin").to_json())

    app.add_api_route(ADMIN_PATH, get_policy, methods=["GET"])
    app.add_api_route(ADMIN_PATH, put_policy, methods=["PUT"])
