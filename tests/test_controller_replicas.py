"""Replica discovery (a static list, Kubernetes Endpoints through the real client) and pushing the
rung: concurrency, retries, back-off, reconciliation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml

from genrec.config import ControllerConfig
from genrec.controller.replicas import KubernetesReplicas, ReplicaPusher, StaticReplicas, parse_endpoints
from testbed.http_json import send_json

K8S = Path(__file__).parent / "data" / "k8s"

# endpoints_cert_manager.json: `kubectl get endpoints -o json` of cert-manager on a kubeadm cluster
# (managedFields and all); endpoints_xecho_minikube.yaml and endpoints_metrics_server_not_ready.yaml:
# `kubectl get endpoints -o yaml` on minikube, the latter with its only pod not ready. All three were
# published in public repositories as captured from live clusters.


def _doc(name: str) -> dict:
    text = (K8S / name).read_text()
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def test_parse_real_endpoints_documents() -> None:
    assert parse_endpoints(_doc("endpoints_cert_manager.json"), 9402) == ["http://100.10.100.1:9402"]
    assert parse_endpoints(_doc("endpoints_xecho_minikube.yaml"), 8888) == [
        "http://172.17.0.2:8888", "http://172.17.0.3:8888", "http://172.17.0.8:8888"]
    # Only a not-ready address: nothing to push to yet.
    assert parse_endpoints(_doc("endpoints_metrics_server_not_ready.yaml"), 10250) == []
    # A port the subset does not serve: not an admin endpoint.
    assert parse_endpoints(_doc("endpoints_xecho_minikube.yaml"), 8080) == []


def test_parse_endpoints_multi_subset_ipv6_and_no_subsets() -> None:
    doc = {"subsets": [
        {"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.9"}],
         "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 8081}]},
        {"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 8080}]},
    ]}
    assert parse_endpoints(doc, 8080) == ["http://10.0.0.1:8080", "http://[fd00::5]:8080"]
    assert parse_endpoints({"kind": "Endpoints", "metadata": {"name": "x"}}, 8080) == []


class _ApiServer(BaseHTTPRequestHandler):
    document = b""
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path != "/api/v1/namespaces/genrec/endpoints/genrec-predictor":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).document)

    def log_message(self, *args: object) -> None:
        pass


def test_kubernetes_replicas_through_the_real_client() -> None:
    from kubernetes import client

    doc = _doc("endpoints_xecho_minikube.yaml")
    doc["metadata"].update(name="genrec-predictor", namespace="genrec")
    doc["subsets"][0]["ports"] = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    _ApiServer.document = json.dumps(doc).encode()
    _ApiServer.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = client.Configuration(host=f"http://127.0.0.1:{server.server_port}",
                                    api_key={"authorization": "sa-token"}, api_key_prefix={"authorization": "Bearer"})
        replicas = KubernetesReplicas("genrec-predictor", "genrec", 8080, api_client=client.ApiClient(conf))
        urls = asyncio.run(replicas.discover())
    finally:
        server.shutdown()
    assert urls == ["http://172.17.0.2:8080", "http://172.17.0.3:8080", "http://172.17.0.8:8080"]
    assert _ApiServer.seen == [("/api/v1/namespaces/genrec/endpoints/genrec-predictor", "Bearer sa-token")]


class _Replica(BaseHTTPRequestHandler):
    """A replica's admin endpoint whose behaviour depends on the server it belongs to."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        server = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.calls.append(time.monotonic())  # type: ignore[attr-defined]
        assert self.headers["Authorization"] == "Bearer secret"
        rung = json.loads(body)["rung"]
        status, payload = server.behave(len(server.calls), rung)  # type: ignore[attr-defined]
        send_json(self, status, payload)

    def log_message(self, *args: object) -> None:
        pass


def _replica(behave) -> ThreadingHTTPServer:  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    server.daemon_threads = True
    server.calls = []  # type: ignore[attr-defined]
    server.behave = behave  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_pushes_retry_with_backoff_without_blocking_other_replicas() -> None:
    def good(n: int, rung: int) -> tuple[int, dict]:
        return 200, {"rung": rung, "widths": [8], "source": "admin"}

    def flaky(n: int, rung: int) -> tuple[int, dict]:
        return (503, {"detail": "starting"}) if n < 3 else good(n, rung)

    def slow(n: int, rung: int) -> tuple[int, dict]:
        time.sleep(3.0)  # past push_timeout_seconds on every attempt
        return good(n, rung)

    def wrong(n: int, rung: int) -> tuple[int, dict]:
        return 422, {"detail": "rung outside the ladder"}

    servers = {name: _replica(fn) for name, fn in
               [("good", good), ("flaky", flaky), ("slow", slow), ("wrong", wrong)]}
    urls = {name: f"http://127.0.0.1:{s.server_port}" for name, s in servers.items()}
    errors = []
    c = ControllerConfig(push_timeout_seconds=0.5, push_retries=3, push_backoff_seconds=0.05)

    async def scenario() -> tuple[bool, ReplicaPusher]:
        http = httpx.AsyncClient()
        pusher = ReplicaPusher(http, "secret", c, on_error=lambda: errors.append(1))
        pusher.reconcile(list(urls.values()), 1)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # the healthy replica is acknowledged long before the others
            await asyncio.sleep(0.01)
            if urls["good"] in pusher.acked:
                break
        good_first = urls["good"] in pusher.acked and not all(t.done() for _, t in pusher.tasks.values())
        await pusher.wait()
        await http.aclose()
        return good_first, pusher

    try:
        good_first, pusher = asyncio.run(scenario())
    finally:
        for s in servers.values():
            s.shutdown()
    assert good_first, "the healthy replica waited for the others"
    assert pusher.acked[urls["good"]][0] == 1 and pusher.acked[urls["flaky"]][0] == 1
    assert urls["slow"] not in pusher.acked and urls["wrong"] not in pusher.acked
    # flaky: 503, 503, then 200, with back-off 0.05 s then 0.10 s between attempts.
    calls = servers["flaky"].calls  # type: ignore[attr-defined]
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) == 3 and gaps[0] >= 0.045 and gaps[1] >= 0.095
    assert len(servers["slow"].calls) == 4  # type: ignore[attr-defined]  # timed out, retried 3 times
    assert len(servers["wrong"].calls) == 1  # type: ignore[attr-defined]  # 422: retrying cannot help
    assert len(errors) == 2 + 4 + 1


def test_reconcile_pushes_new_rungs_new_replicas_and_resyncs() -> None:
    pushed: list[tuple[str, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        rung = json.loads(request.content)["rung"]
        pushed.append((request.url.host, rung))
        return httpx.Response(200, json={"rung": rung, "widths": [4], "source": "admin"})

    now = [0.0]
    c = ControllerConfig(resync_seconds=60.0)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        pusher = ReplicaPusher(http, "t", c, on_error=lambda: None, clock=lambda: now[0])
        pusher.reconcile(["http://a"], 2)
        await pusher.wait()
        pusher.reconcile(["http://a"], 2)  # acknowledged: nothing to do
        await pusher.wait()
        pusher.reconcile(["http://a", "http://b"], 2)  # a new replica
        await pusher.wait()
        pusher.reconcile(["http://a", "http://b"], 1)  # a new rung
        await pusher.wait()
        now[0] = 61.0
        pusher.reconcile(["http://b"], 1)  # resync; a is gone
        await pusher.wait()
        await http.aclose()

    asyncio.run(scenario())
    assert pushed[:2] == [("a", 2), ("b", 2)]
    assert sorted(pushed[2:4]) == [("a", 1), ("b", 1)]  # concurrent: either order
    assert pushed[4:] == [("b", 1)]


def test_static_replicas_strip_trailing_slashes() -> None:
    assert asyncio.run(StaticReplicas(["http://a:1/", "http://b:2"]).discover()) == ["http://a:1", "http://b:2"]
