"""Regression tests for the defects an outside attack run found in `genrec serve`, each against a
real server process on loopback: unauthenticated model unload, a request that stalled the server,
unbounded headers, slow clients, client mistakes answered 5xx, amplified logs, unclear start-up
failures, a guard that never recovered, and an invisible Feast outage. (gRPC has its own file.)"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from testbed.serving import (
    REPO,
    ServerHandle,
    build_tiny_feature_repo,
    cached_tiny_model,
    corrupt_feature_store,
    damaged_model_copies,
    predict,
    start_server,
    tiny_request,
)

pytestmark = pytest.mark.integration

TOKEN = "hardening-token"
# Short connection timeouts so the slow-client cases take about a second each.
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model()


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(model_dir, env={"GENREC_ADMIN_TOKEN": TOKEN},
                          overrides=[f"serving.header_timeout_seconds={HEAD_TIMEOUT}",
                                     f"serving.body_timeout_seconds={BODY_TIMEOUT}"],
                          log_path=tmp_path_factory.mktemp("hardening") / "server.log")
    yield handle
    handle.stop()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = r"(?m)^" + re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text)
    assert found, f"{name}{{{labels}}} missing from /metrics"
    return float(found.group(1))


def port_of(server: ServerHandle) -> int:
    return int(server.url.rsplit(":", 1)[1])


def raw_exchange(server: ServerHandle, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Sends `data` on a fresh connection and reads until the server closes it (or `wait` passes);
    returns what came back and how long the server took to close."""
    with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
        sock.settimeout(wait)
        started = time.monotonic()
        if data:
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received, time.monotonic() - started


def assert_still_serves(server: ServerHandle, model_dir: Path) -> None:
    started = time.monotonic()
    response = predict(server, tiny_request(model_dir), timeout=5)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 1.0


# -- 1. repository routes --------------------------------------------------------------------------


def test_nobody_can_unload_the_model_and_readiness_stays_true(server: ServerHandle, model_dir: Path) -> None:
    for path in ("/v2/repository/models/genrec/unload", "/v2/repository/models/genrec/load",
                 "/v2/repository/index"):
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            response = httpx.post(server.url + path, headers=headers, timeout=5)
            assert response.status_code == 404, (path, response.text)
            assert "repository routes are off" in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).json()["ready"] is True
    assert_still_serves(server, model_dir)


def test_readiness_tells_the_truth_when_the_model_stops(model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    model = GenerativeRecommender("genrec", model_dir)
    with TestClient(in_process_app(model), raise_server_exceptions=False) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        model.stop()
        for path in ("/v2/health/ready", "/v2/models/genrec/ready", "/v1/models/genrec"):
            answer = client.get(path)
            assert answer.status_code == 503 and answer.json()["ready"] is False, path
        refused = client.post("/v1/models/genrec:predict", json=tiny_request(model_dir))
        assert refused.status_code == 503 and "not loaded" in refused.json()["error"]


# -- 2. requests that stall ------------------------------------------------------------------------


def test_a_long_beam_policy_is_a_fast_400_and_never_delays_others(server: ServerHandle, model_dir: Path) -> None:
    attack = json.dumps({"instances": [{"user_id": "u1", "k": 3, "beam_policy": [1] * 16000}]}).encode()
    v2_attack = json.dumps({"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
        {"name": "k", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "beam_policy", "datatype": "INT64", "shape": [1, 16000], "data": [1] * 16000}]}).encode()

    async def scenario() -> tuple[list[httpx.Response], list[float]]:
        async with httpx.AsyncClient(timeout=10) as client:
            async def timed(url: str, body: bytes) -> tuple[httpx.Response, float]:
                started = time.monotonic()
                response = await client.post(url, content=body)
                return response, time.monotonic() - started

            results = await asyncio.gather(
                *[timed(server.predict_url, attack) for _ in range(3)],
                *[timed(server.infer_url, v2_attack) for _ in range(3)],
                timed(server.predict_url, json.dumps(tiny_request(model_dir)).encode()),
                timed(f"{server.url}/v2/health/live", b""))
        return [r for r, _ in results], [t for _, t in results]

    responses, seconds = asyncio.run(scenario())
    for response in responses[:6]:
        assert response.status_code == 400 and "16000 widths but the model has 3" in response.json()["error"]
    assert responses[6].status_code == 200  # the valid request, sent alongside
    assert max(seconds) < 2.0, seconds


def test_no_request_outlives_the_request_timeout(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decode slower than serving.request_timeout_ms: the client gets a 503 with Retry-After at
    the deadline (counted as overloaded), not an answer a minute later."""
    from fastapi.testclient import TestClient

    from genrec.config import GenrecConfig
    from genrec.serving.engine import ServingEngine
    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    real_decode = ServingEngine.decode

    def slow_decode(self: ServingEngine, instances: list) -> list:
        time.sleep(1.0)
        return real_decode(self, instances)

    monkeypatch.setattr(ServingEngine, "decode", slow_decode)
    config = GenrecConfig()
    config.serving.request_timeout_ms = 200
    model = GenerativeRecommender("genrec", model_dir, config)
    with TestClient(in_process_app(model), raise_server_exceptions=False) as client:
        started = time.monotonic()
        response = client.post("/v1/models/genrec:predict", json=tiny_request(model_dir))
        assert time.monotonic() - started < 0.9
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "serving.request_timeout_ms=200" in response.json()["error"]


# -- 4. headers ------------------------------------------------------------------------------------


def test_oversized_and_too_many_headers_are_431_at_once(server: ServerHandle, model_dir: Path) -> None:
    before = server.metrics()
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    cases = {
        "one huge header": head + b"X-Big: " + b"a" * 2_000_000 + b"\r\n\r\n",
        "a huge header still arriving": head + b"X-Big: " + b"a" * 200_000,
        "many headers": head + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n",
        "a huge request line": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
    }
    for case, data in cases.items():
        received, seconds = raw_exchange(server, data)
        assert received.startswith(b"HTTP/1.1 431"), (case, received[:200])
        assert b"serving.max_head" in received or b"serving.max_header" in received, case
        assert seconds < 1.0, case
    after = server.metrics()
    assert metric(after, "genrec_connection_rejections_total", 'reason="header_too_large"') >= \
        metric(before, "genrec_connection_rejections_total", 'reason="header_too_large"') + len(cases)
    # Headers within the bounds are fine.
    ok = httpx.get(f"{server.url}/v2/health/live", headers={f"x-h{i}": "v" * 100 for i in range(50)}, timeout=5)
    assert ok.status_code == 200
    assert_still_serves(server, model_dir)


# -- 5. slow clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("case,data,reason", [
    ("nothing sent", b"", "header_timeout"),
    ("partial headers", b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", "header_timeout"),
    ("stalled body", b"POST /v1/models/genrec:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in",
     "body_timeout"),
])
def test_slow_clients_are_timed_out_with_408(server: ServerHandle, case: str, data: bytes, reason: str) -> None:
    before = metric(server.metrics(), "genrec_connection_rejections_total", f'reason="{reason}"')
    received, seconds = raw_exchange(server, data, wait=10)
    assert received.startswith(b"HTTP/1.1 408"), (case, received[:200])
    assert HEAD_TIMEOUT - 0.1 < seconds < HEAD_TIMEOUT + 2.0, (case, seconds)
    assert metric(server.metrics(), "genrec_connection_rejections_total", f'reason="{reason}"') == before + 1


def test_connections_past_the_bound_get_a_json_503(model_dir: Path, tmp_path: Path) -> None:
    bound = 3
    handle = start_server(model_dir, overrides=[f"serving.max_connections={bound}"], log_path=tmp_path / "server.log")
    held = []
    try:
        for _ in range(bound):
            held.append(socket.create_connection(("127.0.0.1", port_of(handle))))
        time.sleep(0.2)
        received, _ = raw_exchange(handle, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 503")
        assert b"serving.max_connections" in received and b'{"error":' in received
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(0.2)
        assert httpx.get(f"{handle.url}/v2/health/live", timeout=5).status_code == 200
        assert metric(handle.metrics(), "genrec_connection_rejections_total", 'reason="too_many_connections"') == 1
    finally:
        for sock in held:
            sock.close()
        handle.stop()


def test_sigterm_does_not_wait_for_a_stalled_client(model_dir: Path, tmp_path: Path) -> None:
    handle = start_server(model_dir, overrides=[f"serving.body_timeout_seconds={BODY_TIMEOUT}"],
                          log_path=tmp_path / "server.log")
    try:
        stalled = socket.create_connection(("127.0.0.1", port_of(handle)))
        stalled.sendall(b"POST /v1/models/genrec:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        time.sleep(0.3)
        started = time.monotonic()
        handle.process.send_signal(signal.SIGTERM)
        handle.process.wait(timeout=20)
        # The stalled body times out (1 s) and the server exits, well inside the 20 s grace period.
        assert time.monotonic() - started < BODY_TIMEOUT + 4.0
        assert handle.process.returncode == 0
        stalled.close()
    finally:
        handle.stop()


# -- 6. client mistakes that answered 5xx ----------------------------------------------------------


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def binary_infer(header: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + raw, {"Inference-Header-Content-Length": str(len(text))}


V2_USER = {"name": "user_id", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}
CE_HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "attack", "ce-type": "predict",
              "Content-Type": "application/json"}
MISTAKES: dict[str, tuple[str, str, bytes, dict[str, str], int, str]] = {
    # case: (method, path, body, headers, status, message fragment)
    "deep v1 field": ("POST", "/v1/models/genrec:predict",
                      b'{"instances": [{"user_id": ' + deep(990) + b', "k": 3}]}', {}, 400, "levels deep"),
    "deep v2 data": ("POST", "/v2/models/genrec/infer",
                     b'{"inputs": [{"name": "k", "datatype": "INT64", "shape": [1], "data": ' + deep(990) + b"}]}",
                     {}, 400, "levels deep"),
    "deep admin body": ("PUT", "/admin/beam-policy", b'{"rung": ' + deep(990) + b"}",
                        {"Authorization": f"Bearer {TOKEN}"}, 400, "levels deep"),
    "binary header length abc": ("POST", "/v2/models/genrec/infer", b"{}",
                                 {"Inference-Header-Content-Length": "abc"}, 400, "Inference-Header-Content-Length"),
    "v2 without inputs": ("POST", "/v2/models/genrec/infer", b'{"id": "x"}', {}, 400, '"inputs"'),
    "huge BYTES length prefix": ("POST", "/v2/models/genrec/infer",
                                 *binary_infer({"inputs": [V2_USER]}, b"\xff\xff\xff\x7f" + b"abc"), 400,
                                 "claims 2147483647 bytes"),
    "CloudEvents headers, bad JSON body": ("POST", "/v1/models/genrec:predict", b'{"instances": 5}', CE_HEADERS,
                                           400, "instances"),
    ":explain": ("POST", "/v1/models/genrec:explain", b"{}", {}, 404, "no 'explain' verb"),
    "versioned metadata": ("GET", "/v2/models/genrec/versions/1", b"", {}, 404, "unversioned"),
    "versioned infer": ("POST", "/v2/models/genrec/versions/1/infer", b"{}", {}, 404, "unversioned"),
    "another model": ("POST", "/v2/models/other/infer", b"{}", {}, 404, "not served here"),
    "unknown route": ("GET", "/nope", b"", {}, 404, "no route"),
    "wrong method": ("DELETE", "/v2/health/ready", b"", {}, 405, "not allowed"),
    "malformed v2 JSON": ("POST", "/v2/models/genrec/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_client_mistakes_are_4xx_with_an_error_body(server: ServerHandle, case: str) -> None:
    method, path, body, headers, status, fragment = MISTAKES[case]
    before = server.metrics()
    response = httpx.request(method, server.url + path, content=body or None, headers=headers, timeout=10)
    assert response.status_code == status, (case, response.text[:300])
    assert fragment in response.json()["error"], (case, response.json())
    after = server.metrics()
    assert metric(after, "genrec_requests_total", 'code="server_error"') == 0
    assert 'status="5xx"' not in after, "no route has answered 5xx"
    if method == "POST" and path.startswith(("/v1/models/", "/v2/models/")):
        assert metric(after, "genrec_requests_total", 'code="client_error"') == \
            metric(before, "genrec_requests_total", 'code="client_error"') + 1


def test_cloudevents_headers_with_a_valid_json_body_are_served(server: ServerHandle, model_dir: Path) -> None:
    response = httpx.post(server.predict_url, content=json.dumps(tiny_request(model_dir)), headers=CE_HEADERS,
                          timeout=10)
    assert response.status_code == 200 and response.json()["predictions"][0]["items"]


def test_v2_json_without_content_type_is_served(server: ServerHandle) -> None:
    body = json.dumps({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                                  {"name": "k", "datatype": "INT64", "shape": [1], "data": [3]}]}).encode()
    response = httpx.post(server.infer_url, content=body, headers={"Content-Type": ""}, timeout=10)
    assert response.status_code == 200, response.text
    assert {o["name"] for o in response.json()["outputs"]} == {"item_ids", "scores", "sids"}


FOREIGN_SERIES = re.compile(r"^(# (HELP|TYPE) )?feast_", re.MULTILINE)


def test_metrics_export_leaves_out_the_feast_feature_server_series() -> None:
    import feast.feature_store  # noqa: F401 - registers Feast's feature-server series in this process
    from prometheus_client import REGISTRY, generate_latest

    from genrec.serving.instruments import exported

    assert FOREIGN_SERIES.search(generate_latest(REGISTRY).decode()), "Feast registers its series on import"
    text = generate_latest(exported).decode()  # type: ignore[arg-type]
    assert not FOREIGN_SERIES.search(text)
    assert "genrec_requests_total" in text and "genrec_feast_misses_total" in text


# -- 7. logs ---------------------------------------------------------------------------------------


def test_a_client_error_is_one_warning_line_rate_limited(model_dir: Path, tmp_path: Path) -> None:
    per_minute = 5
    handle = start_server(model_dir, overrides=[f"serving.client_error_logs_per_minute={per_minute}"],
                          log_path=tmp_path / "server.log")
    try:
        bad = {"instances": [{"user_id": "u1", "k": 0}]}
        for _ in range(40):
            assert predict(handle, bad).status_code == 400
        predict(handle, b'{"instances": [')
        # The 36 lines past the limit are counted even though no later line reports them.
        assert metric(handle.metrics(), "genrec_log_lines_dropped_total") == 41 - per_minute
    finally:
        handle.stop()
    log = handle.log()
    lines = [line for line in log.splitlines() if "genrec.serving.client_errors" in line]
    assert len(lines) == per_minute, lines
    assert all("WARNING" in line and "400 POST /v1/models/genrec:predict" in line for line in lines)
    assert "Traceback" not in log and "ERROR" not in log


# -- 8. start-up failures --------------------------------------------------------------------------


def test_a_damaged_model_folder_fails_with_one_clear_line(model_dir: Path, tmp_path: Path) -> None:
    cases = damaged_model_copies(model_dir, tmp_path)

    def serve(folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "genrec.cli", "serve", "--model-dir", str(folder),
                               "--host", "127.0.0.1", "--http-port", "1"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    # Each case is a fresh process that fails at start-up: they run side by side.
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(cases, pool.map(serve, [folder for folder, _ in cases.values()]), strict=True))
    for case, (folder, named) in cases.items():
        result = results[case]
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert result.returncode == 1, (case, output[-2000:])
        assert len(errors) == 1 and str(folder / named) in errors[0], (case, output[-2000:])
        assert "copy" in errors[0] or "retrain" in errors[0] or "pass" in errors[0], (case, errors)
        assert "Traceback" not in output and "Aborted" not in output, (case, output[-2000:])


# -- 9. the guard recovers -------------------------------------------------------------------------


def test_the_guard_climbs_back_without_a_controller(model_dir: Path, tmp_path: Path) -> None:
    guard, recover = 3, 1.5
    handle = start_server(model_dir, overrides=[f"serving.inflight_guard={guard}",
                                                f"serving.guard_recover_seconds={recover}",
                                                "serving.max_batch_wait_ms=20"],
                          log_path=tmp_path / "server.log")
    url = f"{handle.url}/admin/beam-policy"
    try:
        default = httpx.get(url, timeout=5).json()

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                body = json.dumps(tiny_request(model_dir)).encode()
                await asyncio.gather(*[client.post(handle.predict_url, content=body) for _ in range(6 * guard)])

        asyncio.run(burst())
        stepped = httpx.get(url, timeout=5).json()
        assert stepped["source"] == "guard" and stepped["rung"] < default["rung"]
        deadline = time.monotonic() + 10 * recover
        while httpx.get(url, timeout=5).json() != default and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(url, timeout=5).json() == default  # back where it was, with no controller
        assert metric(handle.metrics(), "genrec_beam_rung") == default["rung"]
    finally:
        handle.stop()


# -- 10. a Feast outage is visible -----------------------------------------------------------------


def test_a_corrupt_feature_store_shows_in_metrics_and_readiness(tmp_path: Path) -> None:
    """The store is corrupt from the start: the server still starts and answers (history-only), and
    the gauge, the error counter and the readiness detail all say the store is down."""
    summaries_model = cached_tiny_model(summary_dim=8)
    repo = build_tiny_feature_repo(tmp_path / "repo", summaries_model)
    corrupt_feature_store(repo)
    handle = start_server(summaries_model, feature_repo=repo, log_path=tmp_path / "server.log")
    try:
        text = handle.metrics()
        assert metric(text, "genrec_feature_store_up") == 0 and metric(text, "genrec_feast_errors_total") >= 1
        ready = httpx.get(f"{handle.url}/v2/health/ready", timeout=5)
        assert ready.status_code == 200  # history-only answers still work: the pod stays in service
        store = ready.json()["feature_store"]
        assert store["status"] == "down" and "warm-up failed" in store["error"]
        answer = predict(handle, tiny_request(summaries_model))
        assert answer.status_code == 200 and answer.json()["predictions"][0]["context"] == "history_only"
        # Feast is loaded in this process, but its feature server is not: none of its series.
        assert not FOREIGN_SERIES.search(handle.metrics())
    finally:
        handle.stop()


def test_a_redis_outage_and_recovery_show_without_any_request(model_dir: Path, tmp_path: Path) -> None:
    """A model that reads no summaries never reads the store per request: the probe alone finds the
    store down, then back."""
    from testbed.redis import running_redis

    with running_redis(tmp_path) as redis:
        repo = build_tiny_feature_repo(tmp_path / "repo", cached_tiny_model(summary_dim=8), redis_port=redis.port,
                                       materialize=True)
        handle = start_server(model_dir, feature_repo=repo, overrides=["serving.feature_probe_seconds=0.5"],
                              log_path=tmp_path / "server.log")
        try:
            assert metric(handle.metrics(), "genrec_feature_store_up") == 1
            redis.stop()
            assert wait_for_metric(handle, "genrec_feature_store_up", 0)
            store = httpx.get(f"{handle.url}/v2/health/ready", timeout=5).json()["feature_store"]
            assert store["status"] == "down" and "probe failed" in store["error"]
            assert predict(handle, tiny_request(model_dir)).status_code == 200
            redis.start()
            assert wait_for_metric(handle, "genrec_feature_store_up", 1)
            assert httpx.get(f"{handle.url}/v2/health/ready", timeout=5).json()["feature_store"]["status"] == "up"
        finally:
            handle.stop()


def wait_for_metric(handle: ServerHandle, name: str, value: float, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if metric(handle.metrics(), name) == value:
            return True
        time.sleep(0.2)
    return False
