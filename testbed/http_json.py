"""JSON answers for the tests' small `http.server` stand-ins (the Kubernetes API, the predictors)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


def send_json(request: BaseHTTPRequestHandler, code: int, body: Any) -> None:
    """A JSON response with its length, so that a handler of any HTTP version can keep the connection."""
    data = json.dumps(body).encode()
    request.send_response(code)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
