"""Attack campaign against a real `genrec serve` (HTTP and gRPC on loopback): every defect group of
the outside attack run, with this file's own cases, several thousand requests in all. Not in CI.

    python -m benchmarks.bench_attack [--seed 7] [--scale 1.0]

Groups (each ends with a valid request that must answer within 1 s, and an RSS reading):

| group | what it sends |
| --- | --- |
| control | unauthenticated repository load/unload/index (HTTP, gRPC); admin PUTs with no or a wrong token |
| long_policies | beam policies of 4 to 16,000 widths over v1, v2 and gRPC, with valid requests alongside |
| grpc | oversized messages, unknown datatypes and models, valid calls; checks the listener is loopback only |
| headers | one huge header, thousands of headers, a huge request line |
| slow_clients | connections that send nothing, half a head, or half a body, all at once |
| mistakes | deep nesting, broken binary headers, huge BYTES prefixes, CloudEvents, `:explain`, versions, |
| | and a thousand mutated valid bodies |
| v2_clients | tritonclient: metadata, JSON and binary inference, output selection, errors |
| guard | bursts past the in-flight guard, then the wait for the guard to climb back |
| feast_outage | a second server on a corrupt feature store |
| startup | damaged model folders: exit 1 and one error line each |

Pass criteria (`verdict` in the result): zero 5xx, every post-group probe within 1 s, RSS below 1.5x
its start, the rung back at its default after the guard group, SIGTERM with stalled clients open
ends the server within the body timeout plus 3 s, and no ERROR or traceback in the server log.
Writes benchmarks/results/attack.json and attack.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import matplotlib.pyplot as plt
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from benchmarks.harness import save_result
from genrec.config import ServingConfig, load_config
from testbed.serving import (
    REPO,
    ServerHandle,
    build_tiny_feature_repo,
    cached_tiny_model,
    corrupt_feature_store,
    damaged_model_copies,
    free_port,
    start_server,
    tiny_request,
)

TOKEN = "attack-admin-token"
# The server's config (configs/recipes/attack.yaml): short slow-client timeouts and a guard that
# recovers fast, so those groups take seconds; every other bound as shipped.
RECIPE = "configs/recipes/attack.yaml"
PROBE_LIMIT_SECONDS = 1.0
RSS_LIMIT_RATIO = 1.5
SIGTERM_MARGIN_SECONDS = 3.0


@dataclass
class GroupResult:
    name: str
    statuses: Counter[str] = field(default_factory=Counter)
    max_seconds: float = 0.0
    probe_seconds: float = 0.0
    rss_mb: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def record(self, status: int | str, seconds: float = 0.0) -> None:
        self.statuses[str(status)] += 1
        self.max_seconds = max(self.max_seconds, seconds)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "statuses": dict(sorted(self.statuses.items())),
                "server_errors": self.server_errors, "max_seconds": round(self.max_seconds, 3),
                "probe_seconds": round(self.probe_seconds, 3), "rss_mb": round(self.rss_mb, 1),
                "checks": self.checks, **self.notes}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = r"(?m)^" + re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def raw_exchange(port: int, data: bytes, wait: float) -> tuple[str, float]:
    """Status (or "closed") of what the server answers `data` on a fresh connection, and the time it
    took the server to close the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        started = time.monotonic()
        received = b""
        try:
            if data:
                sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        seconds = time.monotonic() - started
    found = re.match(rb"HTTP/1\.1 (\d{3})", received)
    return (found.group(1).decode() if found else "closed"), seconds


class Campaign:
    def __init__(self, server: ServerHandle, grpc_port: int, model_dir: Path, seed: int,
                 scale: float, serving: ServingConfig) -> None:
        self.server = server
        self.serving = serving
        self.port = int(server.url.rsplit(":", 1)[1])
        self.grpc_port = grpc_port
        self.model_dir = model_dir
        self.rng = random.Random(seed)
        self.scale = scale
        self.http = httpx.Client(timeout=30)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.valid = json.dumps(tiny_request(model_dir)).encode()

    def n(self, count: int) -> int:
        return max(1, round(count * self.scale))

    # -- helpers ---------------------------------------------------------------------------------------

    def send(self, group: GroupResult, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        started = time.monotonic()
        response = self.http.request(method, self.server.url + path, content=body, headers=headers)
        group.record(response.status_code, time.monotonic() - started)
        return response

    def grpc_call(self, group: GroupResult, call: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            call()
            status = "grpc:OK"
        except grpc.RpcError as exc:
            status = f"grpc:{exc.code().name}"
        group.record(status, time.monotonic() - started)

    def probe(self) -> float:
        started = time.monotonic()
        response = self.http.post(self.server.predict_url, content=self.valid, timeout=10)
        seconds = time.monotonic() - started
        if response.status_code != 200:
            raise RuntimeError(f"the probe got {response.status_code}: {response.text[:300]}")
        return seconds

    def infer_request(self, users: list[bytes], policy: list[int] | None = None, model: str = "genrec"
                      ) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor
        inputs = [tensor(name="user_id", datatype="BYTES", shape=[len(users)],
                         contents=pb.InferTensorContents(bytes_contents=users)),
                  tensor(name="k", datatype="INT64", shape=[1],
                         contents=pb.InferTensorContents(int64_contents=[5]))]
        if policy is not None:
            inputs.append(tensor(name="beam_policy", datatype="INT64", shape=[1, len(policy)],
                                 contents=pb.InferTensorContents(int64_contents=policy)))
        return pb.ModelInferRequest(model_name=model, inputs=inputs)

    # -- groups ----------------------------------------------------------------------------------------

    def control(self, group: GroupResult) -> None:
        bodies = [None, b"{}", b'{"parameters": {"force": true}}', b"garbage"]
        for _ in range(self.n(60)):
            for verb in ("unload", "load"):
                self.send(group, "POST", f"/v2/repository/models/genrec/{verb}", self.rng.choice(bodies))
        for _ in range(self.n(20)):
            self.send(group, "POST", "/v2/repository/index", b"{}")
        for _ in range(self.n(40)):
            self.send(group, "PUT", "/admin/beam-policy", b'{"rung": 0}')
            self.send(group, "PUT", "/admin/beam-policy", b'{"rung": 0}',
                      {"Authorization": "Bearer " + self.rng.choice(["x", TOKEN[:-1], TOKEN + "x", "null"])})
        for _ in range(self.n(30)):
            self.grpc_call(group, lambda: self.stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="genrec"), timeout=10))
        policy = self.http.get(self.server.url + "/admin/beam-policy").json()
        ready = self.http.get(self.server.url + "/v2/health/ready").json()
        group.checks["model still ready"] = ready["ready"] is True
        group.checks["rung untouched"] = policy["source"] == "default"
        group.checks["all refused"] = all(s.startswith(("4", "grpc:PERMISSION")) for s in group.statuses)

    def long_policies(self, group: GroupResult) -> None:
        lengths = [4, 64, 1024, 4096, 16000]

        def v1(length: int) -> bytes:
            instance = {"user_id": "u1", "k": 3, "beam_policy": [1] * length}
            return json.dumps({"instances": [instance]}).encode()

        def v2(length: int) -> bytes:
            return json.dumps({"inputs": [
                {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                {"name": "k", "datatype": "INT64", "shape": [1], "data": [3]},
                {"name": "beam_policy", "datatype": "INT64", "shape": [1, length], "data": [1] * length},
            ]}).encode()

        async def wave(length: int) -> list[tuple[str, int, float]]:
            async with httpx.AsyncClient(timeout=30) as client:
                async def timed(kind: str, url: str, body: bytes) -> tuple[str, int, float]:
                    started = time.monotonic()
                    response = await client.post(url, content=body)
                    return kind, response.status_code, time.monotonic() - started

                calls = [timed("attack", self.server.predict_url, v1(length)) for _ in range(10)]
                calls += [timed("attack", self.server.infer_url, v2(length)) for _ in range(10)]
                calls += [timed("valid", self.server.predict_url, self.valid) for _ in range(2)]
                return await asyncio.gather(*calls)

        valid_seconds = []
        for _ in range(self.n(2)):
            for length in lengths:
                for kind, status, seconds in asyncio.run(wave(length)):
                    group.record(status, seconds)
                    if kind == "valid":
                        valid_seconds.append(seconds)
                for _ in range(3):
                    self.grpc_call(group, lambda length=length: self.stub.ModelInfer(
                        self.infer_request([b"u1"], [1] * length), timeout=10))
        group.notes["valid_alongside_max_seconds"] = round(max(valid_seconds), 3)
        group.checks["valid requests alongside within 1 s"] = max(valid_seconds) < PROBE_LIMIT_SECONDS

    def grpc_group(self, group: GroupResult) -> None:
        before = self.server.metrics()
        reached = 0
        oversized = self.infer_request([b"u" * 1_000_000])
        for _ in range(self.n(20)):
            self.grpc_call(group, lambda: self.stub.ModelInfer(oversized, timeout=10))
        for _ in range(self.n(40)):
            kind = self.rng.choice(["datatype", "model", "valid", "empty"])
            if kind == "datatype":
                datatype = self.rng.choice(["INT128", "", "x"])
                request = pb.ModelInferRequest(model_name="genrec", inputs=[
                    pb.ModelInferRequest.InferInputTensor(name="k", datatype=datatype, shape=[1])])
            elif kind == "model":
                request = self.infer_request([b"u1"], model="other")
            elif kind == "empty":
                request = pb.ModelInferRequest(model_name="genrec")
            else:
                request = self.infer_request([b"u1", b"u2"])
            reached += 1
            self.grpc_call(group, lambda request=request: self.stub.ModelInfer(request, timeout=10))
        after = self.server.metrics()
        counted = sum(metric(after, "genrec_requests_total", f'code="{c}"') -
                      metric(before, "genrec_requests_total", f'code="{c}"') for c in ("ok", "client_error"))
        addresses = listeners(self.grpc_port)
        group.notes["grpc_listeners"] = addresses
        group.checks["gRPC listens on loopback only"] = bool(addresses) and set(addresses) <= LOOPBACK
        group.checks["every gRPC call that reached genrec is counted"] = counted == reached
        group.checks["oversized messages refused"] = group.statuses["grpc:RESOURCE_EXHAUSTED"] == self.n(20)

    def headers(self, group: GroupResult) -> None:
        head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        cases = [(head + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n", 20),
                 (head + b"X-Big: " + b"a" * 2_000_000 + b"\r\n\r\n", 10),
                 (head + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 20),
                 (head + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n", 10),
                 (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 20)]
        for data, count in cases:
            for _ in range(self.n(count)):
                status, seconds = raw_exchange(self.port, data, wait=10)
                group.record(status, seconds)
        group.checks["all 431"] = set(group.statuses) == {"431"}

    def slow_clients(self, group: GroupResult) -> None:
        kinds = {"silent": b"", "half head": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow",
                 "half body": b"POST /v1/models/genrec:predict HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 400\r\n\r\n{"}
        outcomes: list[tuple[str, str, float]] = []
        lock = threading.Lock()

        def one(kind: str) -> None:
            wait = self.serving.header_timeout_seconds + 10
            status, seconds = raw_exchange(self.port, kinds[kind], wait=wait)
            with lock:
                outcomes.append((kind, status, seconds))

        threads = [threading.Thread(target=one, args=(kind,)) for kind in kinds for _ in range(self.n(40))]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        group.notes["probe_while_stalled_seconds"] = round(self.probe(), 3)
        for thread in threads:
            thread.join()
        for _, status, seconds in outcomes:
            group.record(status, seconds)
        slowest = max(seconds for _, _, seconds in outcomes)
        group.checks["all 408"] = set(group.statuses) == {"408"}
        timeout = max(self.serving.header_timeout_seconds, self.serving.body_timeout_seconds)
        group.checks["closed within the timeout + 1.5 s"] = slowest < timeout + 1.5
        stalled_probe = group.notes["probe_while_stalled_seconds"]
        group.checks["served while stalled"] = stalled_probe < PROBE_LIMIT_SECONDS

    def mistakes(self, group: GroupResult) -> None:
        def deep(depth: int) -> bytes:
            return b"[" * depth + b"]" * depth

        admin = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(self.n(15)):
            depth = self.rng.choice([50, 990, 5000, 100_000 // 4])
            self.send(group, "POST", "/v1/models/genrec:predict",
                      b'{"instances": [{"user_id": ' + deep(depth) + b', "k": 3}]}')
            self.send(group, "POST", "/v2/models/genrec/infer",
                      b'{"inputs": [{"name": "k", "datatype": "INT64", "shape": [1], "data": ' + deep(depth)
                      + b"}]}")
            self.send(group, "PUT", "/admin/beam-policy", b'{"rung": ' + deep(depth) + b"}", admin)
        for _ in range(self.n(100)):
            length = self.rng.choice(["abc", "-1", "99999", "0", "1e3", "2 2"])
            self.send(group, "POST", "/v2/models/genrec/infer", b'{"inputs": []}',
                      {"Inference-Header-Content-Length": length})
        for _ in range(self.n(50)):
            header = json.dumps({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1],
                                             "parameters": {"binary_data_size": 7}}]}).encode()
            prefix = struct.pack("<I", self.rng.choice([2**31, 2**32 - 1, 1000, 4]))
            self.send(group, "POST", "/v2/models/genrec/infer", header + prefix + b"abc",
                      {"Inference-Header-Content-Length": str(len(header))})
        ce = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "attack", "ce-type": "predict",
              "Content-Type": "application/json"}
        for _ in range(self.n(50)):
            body = self.valid if self.rng.random() < 0.5 else b'{"instances": 5}'
            self.send(group, "POST", "/v1/models/genrec:predict", body, ce)
        for _ in range(self.n(50)):
            self.send(group, "POST", "/v2/models/genrec/infer", b'{"id": "no inputs"}')
        for _ in range(self.n(25)):
            self.send(group, "POST", "/v1/models/genrec:explain", self.valid)
            self.send(group, "GET", "/v2/models/genrec/versions/1")
            self.send(group, "POST", "/v2/models/genrec/versions/1/infer", b"{}")
        for _ in range(self.n(1400)):
            path = self.rng.choice(["/v1/models/genrec:predict", "/v2/models/genrec/infer"])
            self.send(group, "POST", path, self.mutate(self.valid))

    def mutate(self, body: bytes) -> bytes:
        """A valid body, damaged: cut, bytes flipped, a value swapped for another type, or repeated."""
        kind = self.rng.randrange(4)
        if kind == 0:
            return body[:self.rng.randrange(len(body))]
        if kind == 1:
            data = bytearray(body)
            for _ in range(self.rng.randint(1, 5)):
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
            return bytes(data)
        if kind == 2:
            value = self.rng.choice(['null', '-1', '1e308', '"x"', '[]', '{}', 'true', '"' + "a" * 300 + '"'])
            return re.sub(rb'"k": \d+', b'"k": ' + value.encode(), body)
        return body.replace(b'"i1"', b'"i1", ' * self.rng.randint(50, 400) + b'"i1"')

    def v2_clients(self, group: GroupResult) -> None:
        import tritonclient.http as triton
        from tritonclient.utils import InferenceServerException

        client = triton.InferenceServerClient(f"127.0.0.1:{self.port}")

        def inputs(binary: bool, k_type: str = "INT32") -> list[Any]:
            users = triton.InferInput("user_id", [2], "BYTES")
            users.set_data_from_numpy(np.array([b"u1", b"u2"], dtype=object), binary_data=binary)
            k = triton.InferInput("k", [1], k_type)
            k.set_data_from_numpy(np.array([5], dtype=np.int32 if k_type == "INT32" else np.float32),
                                  binary_data=binary)
            return [users, k]

        calls: list[Callable[[], Any]] = []
        calls += [lambda: client.get_model_metadata("genrec")] * self.n(20)
        calls += [lambda: client.infer("genrec", inputs(False))] * self.n(60)
        calls += [lambda: client.infer("genrec", inputs(True))] * self.n(60)
        calls += [lambda: client.infer("genrec", inputs(True), outputs=[
            triton.InferRequestedOutput("scores", binary_data=False)])] * self.n(40)
        calls += [lambda: client.infer("genrec", inputs(True), outputs=[triton.InferRequestedOutput("x")]),
                  lambda: client.infer("genrec", inputs(True, "FP32")),
                  lambda: client.infer("other", inputs(True))] * self.n(20)
        try:
            for call in calls:
                started = time.monotonic()
                try:
                    call()
                    status = "200"
                except InferenceServerException as exc:
                    status = str(exc.status() or "client")
                group.record(status, time.monotonic() - started)
        finally:
            client.close()
        group.checks["every call answered 200 or 4xx"] = all(s == "200" or s.startswith("4")
                                                             for s in group.statuses)

    def guard(self, group: GroupResult) -> None:
        url = self.server.url + "/admin/beam-policy"
        default = self.http.get(url).json()
        guard = self.serving.inflight_guard

        async def burst() -> list[int]:
            limits = httpx.Limits(max_connections=8 * guard)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                responses = await asyncio.gather(*[client.post(self.server.predict_url, content=self.valid)
                                                   for _ in range(6 * guard)])
            return [r.status_code for r in responses]

        lowest = default["rung"]
        for _ in range(3):
            for status in asyncio.run(burst()):
                group.record(status)
            lowest = min(lowest, self.http.get(url).json()["rung"])
        started = time.monotonic()
        deadline = started + 10 * self.serving.guard_recover_seconds
        while self.http.get(url).json() != default and time.monotonic() < deadline:
            time.sleep(0.2)
        group.notes["lowest_rung"] = lowest
        group.notes["recovered_after_seconds"] = round(time.monotonic() - started, 1)
        group.checks["the guard stepped down"] = lowest < default["rung"]
        group.checks["the guard climbed back to the default"] = self.http.get(url).json() == default

    def close(self) -> None:
        self.http.close()
        self.channel.close()


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def listeners(port: int) -> list[str]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            address, hex_port = parts[1].rsplit(":", 1)
            if parts[3] == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def feast_outage(folder: Path, group: GroupResult) -> None:
    """A second server whose feature store is corrupt: it starts, answers (history-only), and says
    the store is down in its gauge and readiness detail."""
    summaries_model = cached_tiny_model(summary_dim=8)
    repo = build_tiny_feature_repo(folder / "repo", summaries_model)
    corrupt_feature_store(repo)
    handle = start_server(summaries_model, feature_repo=repo, log_path=folder / "feast-server.log")
    try:
        body = json.dumps(tiny_request(summaries_model)).encode()
        with httpx.Client(timeout=30) as client:
            contexts = Counter()
            for _ in range(20):
                started = time.monotonic()
                response = client.post(handle.predict_url, content=body)
                group.record(response.status_code, time.monotonic() - started)
                if response.status_code == 200:
                    contexts[response.json()["predictions"][0]["context"]] += 1
            store = client.get(f"{handle.url}/v2/health/ready").json()["feature_store"]
        text = handle.metrics()
        group.notes.update(contexts=dict(contexts), feature_store=store)
        group.checks["gauge says down"] = metric(text, "genrec_feature_store_up") == 0
        group.checks["errors counted"] = metric(text, "genrec_feast_errors_total") >= 1
        group.checks["readiness detail says down"] = store["status"] == "down"
        group.checks["answers carry on history-only"] = contexts == {"history_only": 20}
    finally:
        handle.stop()


def startup_failures(model_dir: Path, folder: Path, group: GroupResult) -> None:
    cases = {}
    for case, (copy, named) in damaged_model_copies(model_dir, folder).items():
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "genrec.cli", "serve", "--model-dir", str(copy),
                                 "--host", "127.0.0.1", "--http-port", str(free_port())], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        group.record(f"exit {result.returncode}", time.monotonic() - started)
        cases[case] = {"exit": result.returncode, "error": errors[0] if errors else None,
                       "one_clear_line": len(errors) == 1 and str(copy / named) in errors[0]
                       and "Traceback" not in output}
    group.notes["cases"] = cases
    group.checks["every damaged folder: exit 1, one line naming the file"] = all(
        c["exit"] == 1 and c["one_clear_line"] for c in cases.values())


def sigterm_with_stalled_clients(server: ServerHandle, port: int) -> float:
    """Seconds from SIGTERM to exit with 20 stalled bodies open."""
    stalled = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/models/genrec:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{")
        stalled.append(sock)
    time.sleep(0.3)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)
    seconds = time.monotonic() - started
    for sock in stalled:
        sock.close()
    return seconds


def log_figures(log: str) -> dict[str, Any]:
    lines = log.splitlines()
    client_lines = [line for line in lines if "genrec.serving.client_errors" in line]
    dropped = sum(int(m.group(1)) for line in client_lines
                  for m in [re.search(r"\((\d+) similar lines dropped", line)] if m)
    return {"lines": len(lines), "client_error_lines": len(client_lines),
            "dropped_lines_reported_in_the_log": dropped,
            "error_lines": sum(1 for line in lines if " ERROR " in line),
            "tracebacks": log.count("Traceback")}


@dataclass
class Outcome:
    """What the campaign measured, for the verdict and the figures."""

    groups: list[GroupResult]
    rss_start: float
    final_metrics: str
    sigterm_seconds: float
    log: dict[str, Any]

    @property
    def total(self) -> int:
        return sum(g.requests for g in self.groups)

    @property
    def five_xx(self) -> int:
        return sum(g.server_errors for g in self.groups)

    @property
    def rss_peak(self) -> float:
        return max(g.rss_mb for g in self.groups if g.rss_mb)


def run_group(campaign: Campaign, name: str, run: Callable[[GroupResult], None], pid: int) -> GroupResult:
    """One group, then a valid request that must answer within 1 s, and an RSS reading."""
    group = GroupResult(name)
    started = time.monotonic()
    run(group)
    group.notes["seconds"] = round(time.monotonic() - started, 1)
    group.probe_seconds = campaign.probe()
    group.rss_mb = rss_mb(pid)
    group.checks["probe within 1 s"] = group.probe_seconds < PROBE_LIMIT_SECONDS
    print(f"{name}: {group.requests} requests {dict(group.statuses)} probe {group.probe_seconds:.3f} s "
          f"rss {group.rss_mb:.0f} MB checks {group.checks}", flush=True)
    return group


def attack_server(args: argparse.Namespace, model_dir: Path, folder: Path) -> Outcome:
    """Phase 1: every group against one server (HTTP and gRPC), then SIGTERM with stalled clients."""
    grpc_port = free_port()
    serving = load_config(REPO / args.config).serving
    server = start_server(model_dir, env={"GENREC_ADMIN_TOKEN": TOKEN}, config=REPO / args.config,
                          extra_args=["--grpc", "--grpc-port", str(grpc_port)],
                          log_path=folder / "server.log")
    campaign = Campaign(server, grpc_port, model_dir, args.seed, args.scale, serving)
    try:
        for _ in range(20):
            campaign.probe()
        rss_start = rss_mb(server.process.pid)
        plan: list[tuple[str, Callable[[GroupResult], None]]] = [
            ("control", campaign.control), ("long_policies", campaign.long_policies),
            ("grpc", campaign.grpc_group), ("headers", campaign.headers),
            ("slow_clients", campaign.slow_clients), ("mistakes", campaign.mistakes),
            ("v2_clients", campaign.v2_clients), ("guard", campaign.guard)]
        groups = [run_group(campaign, name, run, server.process.pid) for name, run in plan]
        final = server.metrics()
        log_dropped = metric(final, "genrec_log_lines_dropped_total")
        campaign.close()
        sigterm_seconds = sigterm_with_stalled_clients(server, campaign.port)
    finally:
        server.stop()
    log = {**log_figures(server.log()), "lines_dropped_by_the_rate_limit": log_dropped}
    return Outcome(groups, rss_start, final, sigterm_seconds, log)


def other_processes(model_dir: Path, folder: Path) -> list[GroupResult]:
    """Phase 2: the groups that need a server of their own (a corrupt store) or none (start-up)."""
    groups = []
    for name, run in (("feast_outage", lambda g: feast_outage(folder, g)),
                      ("startup", lambda g: startup_failures(model_dir, folder, g))):
        group = GroupResult(name)
        run(group)
        groups.append(group)
        print(f"{name}: {dict(group.statuses)} checks {group.checks}", flush=True)
    return groups


def verdict_of(outcome: Outcome, scale: float, body_timeout: float) -> dict[str, bool]:
    groups, final = outcome.groups, outcome.final_metrics
    counted_server_errors = metric(final, "genrec_requests_total", 'code="server_error"')
    return {
        "at least 3,000 requests": outcome.total >= 3000 * min(1.0, scale),
        "zero 5xx": outcome.five_xx == 0 and counted_server_errors == 0 and 'status="5xx"' not in final,
        "every probe within 1 s": all(g.probe_seconds < PROBE_LIMIT_SECONDS
                                      for g in groups if g.probe_seconds),
        "RSS below 1.5x its start": outcome.rss_peak < RSS_LIMIT_RATIO * outcome.rss_start,
        "SIGTERM with stalled clients ends within the body timeout + 3 s":
            outcome.sigterm_seconds < body_timeout + SIGTERM_MARGIN_SECONDS,
        "no ERROR or traceback in the log":
            outcome.log["error_lines"] == 0 and outcome.log["tracebacks"] == 0,
        "every group's own checks": all(all(g.checks.values()) for g in groups),
    }


def plot_of(outcome: Outcome) -> plt.Figure:
    groups = outcome.groups
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [g.name for g in groups]
    ok = [sum(n for s, n in g.statuses.items() if s.startswith(("2", "grpc:OK"))) for g in groups]
    refused = [g.requests - o - g.server_errors for g, o in zip(groups, ok)]
    axes[0].bar(names, ok, label="answered (2xx, gRPC OK)")
    axes[0].bar(names, refused, bottom=ok, label="refused (4xx, 408/431, gRPC errors, exit 1)")
    axes[0].bar(names, [g.server_errors for g in groups], bottom=[a + b for a, b in zip(ok, refused)],
                label="5xx", color="red")
    axes[0].set_yscale("log")
    axes[0].set_ylim(bottom=0.8)
    axes[0].set_ylabel("requests")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].legend(fontsize=7)
    measured = [g for g in groups if g.rss_mb]
    axes[1].plot([g.name for g in measured], [g.rss_mb for g in measured], marker="o",
                 label="server RSS (MB)")
    axes[1].axhline(outcome.rss_start * RSS_LIMIT_RATIO, ls="--", color="grey", label="1.5x start")
    axes[1].set_ylabel("RSS after the group (MB)")
    twin = axes[1].twinx()
    twin.plot([g.name for g in measured], [1000 * g.probe_seconds for g in measured], marker="s",
              color="C2", label="valid request after the group (ms)")
    twin.set_ylabel("probe latency (ms)")
    axes[1].tick_params(axis="x", rotation=45)
    axes[1].legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"attack campaign on genrec serve: {outcome.total} requests, {outcome.five_xx} 5xx")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=RECIPE, help="the server's config file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every group's request count")
    args = parser.parse_args()
    model_dir = cached_tiny_model()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = attack_server(args, model_dir, Path(tmp))
        outcome.groups += other_processes(model_dir, Path(tmp))
    verdict = verdict_of(outcome, args.scale, load_config(REPO / args.config).serving.body_timeout_seconds)
    figures = {
        "requests": outcome.total, "server_errors_5xx": outcome.five_xx,
        "rss_start_mb": round(outcome.rss_start, 1), "rss_peak_mb": round(outcome.rss_peak, 1),
        "rss_peak_ratio": round(outcome.rss_peak / outcome.rss_start, 3),
        "sigterm_seconds_with_20_stalled_clients": round(outcome.sigterm_seconds, 2), "log": outcome.log,
        "server": {"model": "tiny LazyAR (testbed/serving.py)", "config": args.config, "grpc": True},
        "groups": {g.name: g.to_json() for g in outcome.groups}, "verdict": verdict,
        "passed": all(verdict.values()),
    }
    save_result("attack", figures, lambda: plot_of(outcome))
    if not figures["passed"]:
        raise SystemExit(f"attack campaign failed: {[k for k, v in verdict.items() if not v]}")


if __name__ == "__main__":
    main()
