"""gRPC on a real `genrec serve`: off by default; when on, it binds the HTTP host only, has the HTTP
limits (message size, the policy bound) and counts in the same metrics as HTTP."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from testbed.serving import ServerHandle, cached_tiny_model, free_port, start_server

pytestmark = pytest.mark.integration

Tensor = pb.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(grpc_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(cached_tiny_model(), extra_args=["--grpc", "--grpc-port", str(grpc_port)],
                          log_path=tmp_path_factory.mktemp("grpc") / "server.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def stub(server: ServerHandle, grpc_port: int) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = r"(?m)^" + re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text)
    assert found, f"{name}{{{labels}}} missing"
    return float(found.group(1))


def request(users: list[bytes], k: int = 3, policy: list[int] | None = None, model: str = "genrec"
            ) -> pb.ModelInferRequest:
    inputs = [Tensor(name="user_id", datatype="BYTES", shape=[len(users)],
                     contents=pb.InferTensorContents(bytes_contents=users)),
              Tensor(name="k", datatype="INT64", shape=[1], contents=pb.InferTensorContents(int64_contents=[k]))]
    if policy is not None:
        inputs.append(Tensor(name="beam_policy", datatype="INT64", shape=[1, len(policy)],
                             contents=pb.InferTensorContents(int64_contents=policy)))
    return pb.ModelInferRequest(model_name=model, inputs=inputs)


def listeners(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port` (from /proc, any address family)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def test_grpc_is_off_by_default(tmp_path: Path) -> None:
    port = free_port()
    handle = start_server(cached_tiny_model(), overrides=[f"serving.grpc_port={port}"],
                          log_path=tmp_path / "server.log")
    try:
        assert listeners(port) == []
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))
    finally:
        handle.stop()


def test_grpc_binds_the_http_host_only(server: ServerHandle, grpc_port: int) -> None:
    addresses = listeners(grpc_port)
    assert addresses and set(addresses) <= LOOPBACK, addresses


def test_infer_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub, server: ServerHandle) -> None:
    before = server.metrics()
    response = stub.ModelInfer(request([b"u1", b"u2"], k=4, policy=[8]))
    outputs = {o.name: o for o in response.outputs}
    assert list(outputs["item_ids"].shape) == [2, 4] and list(outputs["sids"].shape) == [2, 4, 3]
    assert all(i.startswith(b"i") for i in outputs["item_ids"].contents.bytes_contents)
    assert len(outputs["scores"].contents.fp32_contents) == 8
    after = server.metrics()
    assert metric(after, "genrec_requests_total", 'code="ok"') == metric(before, "genrec_requests_total",
                                                                          'code="ok"') + 1
    assert metric(after, "genrec_request_duration_seconds_count") == \
        metric(before, "genrec_request_duration_seconds_count") + 1
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="genrec"))
    assert [t.name for t in metadata.inputs] == ["user_id", "recent_items", "k", "beam_policy"]
    assert list(metadata.outputs[2].shape) == [-1, -1, 3]
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


@pytest.mark.parametrize("case", ["no inputs", "long policy", "another model", "oversized message",
                                  "unknown datatype", "raw and contents disagree"])
def test_bad_calls_are_refused_with_the_http_bounds(stub: pb_grpc.GRPCInferenceServiceStub,
                                                    server: ServerHandle, case: str) -> None:
    calls = {
        "no inputs": (pb.ModelInferRequest(model_name="genrec"), grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
        "long policy": (request([b"u1"], policy=[1] * 16000), grpc.StatusCode.INVALID_ARGUMENT,
                        "16000 widths but the model has 3"),
        "another model": (request([b"u1"], model="other"), grpc.StatusCode.NOT_FOUND, "not served here"),
        "oversized message": (request([b"u" * 1_000_000]), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        "unknown datatype": (pb.ModelInferRequest(model_name="genrec", inputs=[
            Tensor(name="k", datatype="INT128", shape=[1])]), grpc.StatusCode.INVALID_ARGUMENT,
            "not an Open Inference Protocol data type"),
        "raw and contents disagree": (pb.ModelInferRequest(
            model_name="genrec", inputs=request([b"u1"]).inputs, raw_input_contents=[b"x"]),
            grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 1 entries for 2 inputs"),
    }
    call, code, fragment = calls[case]
    before = server.metrics()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(call, timeout=10)
    assert time.monotonic() - started < 2.0
    assert caught.value.code() == code and fragment in caught.value.details(), caught.value.details()
    after = server.metrics()
    assert metric(after, "genrec_requests_total", 'code="server_error"') == 0
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:  # refused by gRPC itself, before genrec's handler
        assert metric(after, "genrec_requests_total", 'code="client_error"') == \
            metric(before, "genrec_requests_total", 'code="client_error"') + 1


def test_repository_calls_are_refused(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for call in (lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="genrec")),
                 lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="genrec"))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stub.ModelReady(pb.ModelReadyRequest(name="genrec")).ready
    stub.ModelInfer(request([b"u1"]))


def test_a_grpc_burst_trips_the_in_flight_guard(tmp_path: Path) -> None:
    """gRPC calls count in the same in-flight total as HTTP: a burst past the bound steps the rung
    down, as an HTTP burst does."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    guard, port = 2, free_port()
    handle = start_server(cached_tiny_model(), extra_args=["--grpc", "--grpc-port", str(port)],
                          overrides=[f"serving.inflight_guard={guard}", "serving.max_batch_wait_ms=50"],
                          log_path=tmp_path / "server.log")
    try:
        default = httpx.get(f"{handle.url}/admin/beam-policy", timeout=5).json()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(6 * guard) as pool:
            burst_stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for future in [pool.submit(burst_stub.ModelInfer, request([b"u1"], k=5)) for _ in range(6 * guard)]:
                assert future.result().outputs
        policy = httpx.get(f"{handle.url}/admin/beam-policy", timeout=5).json()
        assert policy["source"] == "guard" and policy["rung"] < default["rung"]
        text = handle.metrics()
        assert metric(text, "genrec_inflight_guard_stepdowns_total") >= 1
        assert metric(text, "genrec_inflight_requests") == 0
    finally:
        handle.stop()
