"""The v2 protocol over gRPC, when `serving.grpc` is on, with the same bounds and metrics as HTTP.

KServe's own gRPC server listens on every interface (`[::]:port`) whatever host HTTP binds, reads
messages of any size its defaults allow, and bypasses the HTTP middleware, so its inferences were
neither counted in genrec_requests_total nor seen by the in-flight guard. Here:

- the server binds the HTTP host, on `serving.grpc_port`;
- a message may be at most `serving.max_body_bytes` and its metadata `serving.max_header_bytes`;
- `ModelInfer` decodes its tensors through `genrec.serving.v2` (the same checks as HTTP), counts in
  the in-flight guard, genrec_requests_total and the latency histogram, and answers within
  `serving.request_timeout_ms`;
- the model repository RPCs (load, unload) are refused, as the HTTP routes are absent.

Client mistakes are INVALID_ARGUMENT (or NOT_FOUND for another model's name), logged as one
rate-limited line; overload is RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from genrec.serving import instruments as m
from genrec.serving import v2
from genrec.serving.batching import Overloaded
from genrec.serving.logs import client_error
from genrec.serving.model import GenerativeRecommender, NotReady
from genrec.serving.requests import RequestError

# Where each datatype's values live in InferTensorContents (FP16 only travels raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
INFER_METHOD = "ModelInfer"
# The HTTP status a refused call would have had, for the one-line client-error log.
HTTP_EQUIVALENT = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
                   grpc.StatusCode.PERMISSION_DENIED: 403}


def request_from_grpc(request: pb.ModelInferRequest) -> v2.InferRequest:
    """The same `v2.InferRequest` an HTTP body decodes to, with the same checks."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
                           "send one per input, or none")
    if not request.inputs:
        raise RequestError("the request has no inputs")
    tensors = []
    for index, spec in enumerate(request.inputs):
        where = f"inputs[{index}] ({spec.name[:40]})"
        datatype = v2.check_datatype(spec.datatype, where)
        shape = v2.check_shape(list(spec.shape), where)
        if raw:
            if spec.HasField("contents"):
                raise RequestError(f"{where} has contents and raw_input_contents: send one")
            data = v2.decode_binary(datatype, shape, raw[index], where)
        else:
            field = CONTENTS_FIELD.get(datatype)
            if field is None:
                raise RequestError(f"{where}: {datatype} travels only in raw_input_contents")
            data = list(getattr(spec.contents, field))
            v2.check_count(shape, len(data), where)
        tensors.append(v2.Tensor(spec.name, datatype, shape, data))
    outputs = [v2.RequestedOutput(o.name, None) for o in request.outputs] or None
    return v2.InferRequest(request.id, tensors, outputs, False)


def response_to_grpc(model_name: str, request: v2.InferRequest, outputs: list[v2.OutputTensor]
                     ) -> pb.ModelInferResponse:
    by_name = {o.name: o for o in outputs}
    tensors = []
    for name, _ in request.selected(tuple(by_name)):
        tensor = by_name[name]
        values = tensor.array.ravel().tolist()
        if tensor.datatype == "BYTES":
            values = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]
        contents = pb.InferTensorContents(**{CONTENTS_FIELD[tensor.datatype]: values})
        tensors.append(pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype=tensor.datatype, shape=list(tensor.array.shape), contents=contents))
    return pb.ModelInferResponse(model_name=model_name, id=request.id, outputs=tensors)


class GenrecInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, model: GenerativeRecommender, version: str) -> None:
        self.model = model
        self.version = version

    async def _refuse(self, context: Any, code: grpc.StatusCode, method: str, message: str) -> None:
        client_error(HTTP_EQUIVALENT.get(code, 400), "gRPC", method, message)
        await context.abort(code, message)

    def _not_served(self, name: str) -> str:
        return f"model {name[:60]!r} is not served here; this server serves {self.model.name!r}"

    async def _check_name(self, name: str, context: Any, method: str) -> None:
        if name != self.model.name:
            await self._refuse(context, grpc.StatusCode.NOT_FOUND, method, self._not_served(name))

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.model.liveness()[0])

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.model.readiness()[0])

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        await self._check_name(request.name, context, "ModelReady")
        return pb.ModelReadyResponse(ready=self.model.readiness()[0])

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="genrec", version=self.version, extensions=[])

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        await self._check_name(request.name, context, "ModelMetadata")
        meta = self.model.v2_metadata()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        state = self.model.state
        state.enter()
        started = time.perf_counter()
        outcome = "server_error"
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
            if request.model_name != self.model.name:
                outcome = "client_error"
                failure = (grpc.StatusCode.NOT_FOUND, self._not_served(request.model_name))
            else:
                parsing = time.perf_counter()
                decoded = request_from_grpc(request)
                instances = self.model.v2_instances(decoded)
                answering = time.perf_counter()
                m.STAGE["parse"].observe(answering - parsing)
                answers = await self.model.recommend(instances)
                answered = time.perf_counter()
                response = response_to_grpc(self.model.name, decoded, self.model.v2_outputs(answers))
                m.STAGE["serialise"].observe(time.perf_counter() - answered)
                outcome = "ok"
                return response
        except RequestError as exc:
            outcome, failure = "client_error", (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (Overloaded, NotReady) as exc:
            outcome, failure = "overloaded", (grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        finally:
            state.leave()
            m.REQUEST_SECONDS.observe(time.perf_counter() - started)
            m.REQUESTS.labels(code=outcome).inc()
        assert failure is not None
        code, message = failure
        if outcome == "client_error":
            client_error(HTTP_EQUIVALENT.get(code, 400), "gRPC", INFER_METHOD, message)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._repository_off(context, "RepositoryModelLoad")

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._repository_off(context, "RepositoryModelUnload")

    async def _repository_off(self, context: Any, method: str) -> None:
        await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, method,
                           "model repository calls are off: this server serves the one model it loaded "
                           "at start")


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GenrecGRPCServer:
    """The gRPC server's lifecycle, as KServe's ModelServer drives its own (`start`, `stop(sig)`)."""

    def __init__(self, host: str, port: int, servicer: GenrecInferenceServicer, grace_period: float) -> None:
        serving = servicer.model.serving
        self.address = listen_address(host, port)
        self.servicer = servicer
        self.grace_period = grace_period
        self.options = [
            ("grpc.max_receive_message_length", serving.max_body_bytes),
            ("grpc.max_metadata_size", serving.max_header_bytes),
            ("grpc.max_concurrent_streams", serving.max_connections),
            # Idle connections close as HTTP's keep-alive ones do.
            ("grpc.max_connection_idle_ms", serving.keep_alive_seconds * 1000),
        ]
        self._server: aio.Server | None = None

    async def start(self, max_workers: int = 0) -> None:
        self._server = aio.server(options=self.options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self._server)
        self._server.add_insecure_port(self.address)
        await self._server.start()
        await self._server.wait_for_termination()

    async def stop(self, sig: int | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace=self.grace_period)
