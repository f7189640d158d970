"""uvicorn's httptools protocol with the bounds a server facing the internet needs.

uvicorn (as KServe runs it) bounds neither the request head nor the time a client takes to send it:
one 200 MB header was read in full (RSS 1 GB), 200,000 headers were accepted, and a client that
stopped half-way through its headers or body held its connection for minutes (and a SIGTERM waited
for it). This protocol adds, per connection:

- the request line and headers together at most `max_header_bytes`, and at most `max_headers`
  headers: 431, and the connection closes;
- the head complete within `header_timeout` of its first byte (or of connecting, for a client that
  sends nothing): 408, close;
- the body complete within `body_timeout` of the head: 408 if no response has started, close;
- at most `max_connections` open connections: the next one gets a 503 (JSON, like every other
  error, where uvicorn's own limit answers plain text) and is closed.

Each rejection counts in genrec_connection_rejections_total{reason} and logs one rate-limited line.
A rejected connection closes the way nginx's lingering close does: the answer, then a half-close
(FIN), then whatever the client still sends is read and dropped for up to `LINGER_SECONDS`. Closing
at once with unread bytes in the socket would send a reset that can destroy the answer on its way.
httptools stays the parser (h11 would bound the head too, at about half the speed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from genrec.config import ServingConfig
from genrec.serving import instruments as m
from genrec.serving.logs import client_error


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_config(cls, serving: ServingConfig) -> ConnectionLimits:
        return cls(serving.max_header_bytes, serving.max_headers, serving.header_timeout_seconds,
                   serving.body_timeout_seconds, serving.max_connections)


# How long a rejected connection drains what its client still sends before it closes.
LINGER_SECONDS = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past its bounds."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Between requests and until a head is complete, received bytes count against the head.
        self._in_head = True
        self._head_bytes = 0
        self._head_fields = 0
        self._field_bytes = 0
        self._head_problem = ""
        self._timer: asyncio.TimerHandle | None = None
        # Set once the connection is rejected: what arrives later is drained, not parsed.
        self._lingering = False
        # Set when the server shuts down (SIGTERM): a rejected connection then closes at once.
        self._shutting_down = False

    # -- connection events -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._reject(503, "too_many_connections", f"the server holds {self.limits.max_connections} "
                                                      "connections (serving.max_connections): retry")
            return
        self._arm(self.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self._shutting_down = True
        if self._lingering:
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
            if self._timer is None:
                self._arm(self.limits.header_timeout, "header_timeout")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrade (websocket) is served here; uvicorn's own answer logs and carries on.
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._head_problem:
                self._reject(431, "header_too_large", self._head_problem)
            else:
                self._reject(400, "bad_http", "the request is not valid HTTP/1.1")
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._reject(431, "header_too_large", self._too_large_message())

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_fields = 0
        self._field_bytes = 0
        self._head_problem = ""

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            self._head_problem = self._too_large_message()
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > self.limits.max_headers:
            self._head_problem = (f"the request has more than {self.limits.max_headers} headers "
                                  "(serving.max_headers)")
            raise _HeadTooLarge
        super().on_header(name, value)
        self._field_bytes += len(name) + len(value)
        if len(self.url) + self._field_bytes > self.limits.max_header_bytes:
            self._head_problem = self._too_large_message()
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        self._arm(self.limits.body_timeout, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        super().on_message_complete()

    # -- bounds ------------------------------------------------------------------------------------

    def _too_large_message(self) -> str:
        return (f"the request line and headers are larger than {self.limits.max_header_bytes} bytes "
                "(serving.max_header_bytes)")

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, reason: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if reason == "header_timeout" and cycle is not None and not cycle.response_complete:
            # The previous request is still being answered: its response comes first.
            self._arm(self.limits.header_timeout, reason)
            return
        seconds = self.limits.header_timeout if reason == "header_timeout" else self.limits.body_timeout
        what = "headers" if reason == "header_timeout" else "body"
        self._reject(408, reason, f"the request {what} did not arrive within {seconds:g} s "
                                  f"(serving.{'header' if what == 'headers' else 'body'}_timeout_seconds)")

    def _reject(self, status: int, reason: str, message: str) -> None:
        """Answers `status` (unless a response already started) and closes the connection."""
        m.CONNECTION_REJECTIONS.labels(reason=reason).inc()
        client_error(status, self.scope.get("method", "-") if self.scope else "-",
                     self.scope.get("path", "-") if self.scope and "path" in self.scope else "-", message)
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The route (if one runs) sees a disconnect and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        if not answered:
            body = orjson.dumps({"error": message})
            self.transport.write(b"".join([
                STATUS_LINE[status], b"content-type: application/json\r\n",
                b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]))
        self._disarm()
        self._lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(0 if self._shutting_down else LINGER_SECONDS, self.transport.close)


def bounded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """A protocol class with `limits` (uvicorn instantiates the class it is given per connection)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
