"""The Open Inference Protocol (KServe v2) on the wire: request bodies in, response bodies out.

genrec decodes v2 requests itself, with every bound checked before anything is allocated, rather
than through KServe's data plane: that path answered 500 to a malformed binary header, a missing
`inputs` or a huge BYTES length prefix, and 400 to JSON sent without a Content-Type (which is how
`tritonclient[http]` sends it).

Supported, as the protocol and its binary-data extension define them:

- a JSON body, whatever the Content-Type;
- the binary extension: `Inference-Header-Content-Length: N` says the first N bytes are the JSON
  header, and each input with `parameters.binary_data_size` takes that many bytes of the rest, in
  input order (BYTES elements as a 4-byte little-endian length, then the bytes);
- `outputs` (which outputs to return, each optionally `parameters.binary_data`) and the request
  parameter `binary_data_output`.

Every problem is a `RequestError` naming the field; the server answers it with HTTP 400 (or gRPC
INVALID_ARGUMENT).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from genrec.serving.requests import (
    Instance,
    RequestError,
    RequestRules,
    check_fields,
    check_items,
    check_k,
    check_policy,
    check_user,
    parse_json,
)

# The protocol's tensor data types, with their little-endian numpy types (BYTES has none: each
# element is length-prefixed).
NUMPY_TYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
DATATYPES = (*NUMPY_TYPES, "BYTES")
INTEGER_TYPES = frozenset(t for t in NUMPY_TYPES if t.startswith(("INT", "UINT")))
FLOAT_TYPES = frozenset(t for t in NUMPY_TYPES if t.startswith("FP"))
HEADER_LENGTH = "inference-header-content-length"
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
TENSOR_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})
# genrec's inputs (`genrec.serving.requests` documents them).
V2_INPUTS = frozenset({"user_id", "recent_items", "k", "beam_policy"})
# A tensor's rank: genrec's inputs have rank 1 or 2 and its outputs 3; a rank this high is an attack
# on shape arithmetic, not a request.
MAX_RANK = 8
BYTES_PREFIX = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """One input tensor, its data flat in row-major order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    # None: the request's `binary_data_output` decides.
    binary: bool | None


@dataclass(frozen=True)
class InferRequest:
    id: str
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None
    binary_output: bool

    def selected(self, available: tuple[str, ...]) -> list[tuple[str, bool]]:
        """(output name, binary?) to return, in the order asked for (all outputs if none named);
        an unknown or repeated name is a RequestError."""
        if self.outputs is None:
            return [(name, self.binary_output) for name in available]
        seen: set[str] = set()
        out = []
        for index, output in enumerate(self.outputs):
            if output.name not in available:
                raise RequestError(f"outputs[{index}].name={output.name!r} is not an output of this model; "
                                   f"outputs: {', '.join(available)}")
            if output.name in seen:
                raise RequestError(f"outputs[{index}]: output {output.name!r} is asked for twice")
            seen.add(output.name)
            out.append((output.name, self.binary_output if output.binary is None else output.binary))
        return out


def decode_request(body: bytes, header_length: str | None, max_depth: int) -> InferRequest:
    """A v2 request from its HTTP body and `Inference-Header-Content-Length` header (None when the
    body is all JSON)."""
    if header_length is None:
        header, tail = body, b""
    else:
        text = header_length.strip()
        if not text.isdigit():
            raise RequestError(f"header Inference-Header-Content-Length must be the byte length of the JSON "
                               f"part of the body, a non-negative integer; got {header_length[:40]!r}")
        length = int(text)
        if length > len(body):
            raise RequestError(f"header Inference-Header-Content-Length={length} is longer than the body "
                               f"({len(body)} bytes)")
        header, tail = body[:length], body[length:]
    raw = parse_json(header, max_depth, "the v2 request")
    return request_from_json(raw, tail)


def request_from_json(raw: Any, tail: bytes = b"") -> InferRequest:
    check_fields(raw, REQUEST_FIELDS, "the v2 request", 'a JSON object {"inputs": [...]}')
    if "inputs" not in raw:
        raise RequestError('missing field "inputs": a v2 request lists its input tensors')
    inputs = raw["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError('"inputs" must be a non-empty list of tensors')
    request_id = raw.get("id", "")
    if not isinstance(request_id, str):
        raise RequestError(f'"id" must be a string, got {_show(request_id)}')
    parameters = _parameters(raw.get("parameters"), "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise RequestError("parameters.binary_data_output must be true or false")
    tensors = []
    offset = 0
    for index, spec in enumerate(inputs):
        tensor, used = _tensor(spec, f"inputs[{index}]", tail, offset)
        tensors.append(tensor)
        offset += used
    if offset != len(tail):
        raise RequestError(f"the binary part of the body has {len(tail)} bytes but the inputs' "
                           f"binary_data_size add up to {offset}")
    return InferRequest(request_id, tensors, _outputs(raw.get("outputs")), binary_output)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be an object, got {_show(value)}")
    return value


def _outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise RequestError('"outputs" must be a non-empty list of {"name": ...} objects (or left out for '
                           "every output)")
    out = []
    for index, spec in enumerate(value):
        where = f"outputs[{index}]"
        check_fields(spec, OUTPUT_FIELDS, where, 'an object {"name": ...}')
        if not isinstance(spec.get("name"), str):
            raise RequestError(f'{where} must have a string "name"')
        binary = _parameters(spec.get("parameters"), f"{where}.parameters").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise RequestError(f"{where}.parameters.binary_data must be true or false")
        out.append(RequestedOutput(spec["name"], binary))
    return out


def _tensor(spec: Any, where: str, tail: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor and the number of binary bytes it took from `tail` at `offset`."""
    check_fields(spec, TENSOR_FIELDS, where, "a tensor object with name, datatype, shape and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f'{where}.name must be a non-empty string')
    where = f"{where} ({name[:40]})"
    datatype = check_datatype(spec.get("datatype"), where)
    shape = check_shape(spec.get("shape"), where)
    size = binary_size(spec.get("parameters"), where)
    if size is not None:
        if "data" in spec:
            raise RequestError(f"{where} has both data and parameters.binary_data_size: send one")
        if offset + size > len(tail):
            raise RequestError(f"{where}.parameters.binary_data_size={size} runs past the end of the body")
        return Tensor(name, datatype, shape, decode_binary(datatype, shape, tail[offset:offset + size],
                                                           where)), size
    if "data" not in spec:
        raise RequestError(f"{where} has no data (and no parameters.binary_data_size)")
    data = flatten(spec["data"], where)
    check_count(shape, len(data), where)
    for position, value in enumerate(data):
        check_element(datatype, value, f"{where}.data[{position}]")
    return Tensor(name, datatype, shape, data), 0


def check_datatype(value: Any, where: str) -> str:
    if value not in DATATYPES:
        raise RequestError(f"{where}.datatype={_show(value)} is not an Open Inference Protocol data type; "
                           f"use one of {', '.join(DATATYPES)}")
    return str(value)


def check_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise RequestError(f"{where}.shape must be a list of at most {MAX_RANK} non-negative integers, "
                           f"got {_show(value)}")
    return tuple(value)


def check_count(shape: tuple[int, ...], count: int, where: str) -> None:
    # Python integers: a shape like [2**62, 2**62] cannot overflow into a match.
    expected = 1
    for dim in shape:
        expected *= dim
    if expected != count:
        raise RequestError(f"{where}: shape {list(shape)} holds {expected} values but {count} were sent")


def binary_size(parameters: Any, where: str) -> int | None:
    params = _parameters(parameters, f"{where}.parameters")
    if "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(f"{where}.parameters.binary_data_size must be a non-negative integer")
    return size


def decode_binary(datatype: str, shape: tuple[int, ...], raw: bytes, where: str) -> list[Any]:
    """The elements of a binary tensor, checked against its shape."""
    if datatype == "BYTES":
        values: list[Any] = []
        offset = 0
        while offset < len(raw):
            if offset + BYTES_PREFIX.size > len(raw):
                raise RequestError(f"{where}: a BYTES element's 4-byte length prefix is cut off")
            (length,) = BYTES_PREFIX.unpack_from(raw, offset)
            offset += BYTES_PREFIX.size
            if length > len(raw) - offset:
                raise RequestError(f"{where}: a BYTES element claims {length} bytes but only "
                                   f"{len(raw) - offset} remain")
            values.append(raw[offset:offset + length])
            offset += length
        check_count(shape, len(values), where)
        return values
    itemsize = np.dtype(NUMPY_TYPES[datatype]).itemsize
    if len(raw) % itemsize:
        raise RequestError(f"{where}: {len(raw)} bytes is not a whole number of {datatype} values")
    check_count(shape, len(raw) // itemsize, where)
    return list(np.frombuffer(raw, dtype=NUMPY_TYPES[datatype]).tolist())


def flatten(data: Any, where: str) -> list[Any]:
    """Row-major elements of `data`, a flat or nested JSON list (depth already bounded)."""
    if not isinstance(data, list):
        raise RequestError(f"{where}.data must be a list, got {_show(data)}")
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        value = next(stack[-1], _END)
        if value is _END:
            stack.pop()
        elif isinstance(value, list):
            stack.append(iter(value))
        else:
            out.append(value)
    return out


_END = object()


def check_element(datatype: str, value: Any, where: str) -> None:
    if datatype == "BYTES":
        ok = isinstance(value, str)
        wanted = "a string"
    elif datatype == "BOOL":
        ok = isinstance(value, bool)
        wanted = "true or false"
    elif datatype in INTEGER_TYPES:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
        wanted = "an integer"
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        wanted = "a number"
    if not ok:
        raise RequestError(f"{where} must be {wanted} for datatype {datatype}, got {_show(value)}")


# -- genrec's instances ----------------------------------------------------------------------------


def parse_v2(inputs: Sequence[Tensor], rules: RequestRules) -> list[Instance]:
    """genrec's instances from decoded v2 input tensors: one row per request, the inputs and their
    datatypes as the module docstring of `genrec.serving.requests` lists them."""
    config = rules.config
    tensors: dict[str, tuple[list[int], list[Any]]] = {}
    for tensor in inputs:
        name = tensor.name
        if name not in V2_INPUTS:
            raise RequestError(f"unknown input {name[:40]!r}; allowed inputs: {sorted(V2_INPUTS)}")
        if name in tensors:
            raise RequestError(f"input {name!r} is given twice")
        text = name in ("user_id", "recent_items")
        if text and tensor.datatype != "BYTES":
            raise RequestError(f"input {name} must have datatype BYTES (strings), got {tensor.datatype}")
        if not text and tensor.datatype not in INTEGER_TYPES:
            raise RequestError(f"input {name} must have an integer datatype (INT64, INT32, ...), "
                               f"got {tensor.datatype}")
        tensors[name] = (list(tensor.shape), list(tensor.data))
    for required in ("user_id", "k"):
        if required not in tensors:
            raise RequestError(f"missing the required input {required!r}")
    users_shape, users = tensors["user_id"]
    if len(users_shape) != 1 or not users:
        raise RequestError(f"input user_id must have shape [B] with B >= 1, got {users_shape}")
    batch = len(users)
    if batch > config.max_instances_per_request:
        raise RequestError(f"user_id has {batch} rows; at most {config.max_instances_per_request} "
                           "per request")
    users = [_text(u) for u in users]
    ks = _rows("k", tensors["k"], batch, scalar=True)
    policies = _rows("beam_policy", tensors["beam_policy"], batch, scalar=False) \
        if "beam_policy" in tensors else [None] * batch
    histories: list[list[Any] | None] = [None] * batch
    if "recent_items" in tensors:
        shape, data = tensors["recent_items"]
        if len(shape) != 2 or shape[0] != batch:
            raise RequestError(f"input recent_items must have shape [{batch}, R] (pad rows with \"\"), "
                               f"got {shape}")
        width = shape[1]
        if width > config.max_recent_items:
            raise RequestError(f"input recent_items has {width} columns; at most {config.max_recent_items} "
                               "are accepted (send the most recent ones)")
        histories = [[_text(x) for x in data[row * width:(row + 1) * width] if _text(x) != ""]
                     for row in range(batch)]
    out = []
    for row in range(batch):
        where = f"row {row}"
        history = histories[row]
        # An all-padding row means "no recent items" for that row, as an omitted field does in v1.
        history_given = bool(history)
        out.append(Instance(
            user_id=check_user(users[row], where),
            recent_items=check_items(history, where, config) if history_given else (),
            k=check_k(ks[row], where, config),
            policy=None if policies[row] is None else check_policy(policies[row], where, rules),
            history_given=history_given,
        ))
    ks_seen = {instance.k for instance in out}
    if len(ks_seen) > 1:
        raise RequestError("a v2 request returns one [B, K] tensor: give every row the same k")
    return out


def _rows(name: str, tensor: tuple[list[int], list[Any]], batch: int, scalar: bool) -> list[Any]:
    """One value (scalar) or one list (vector) per row, from a [1]/[B] or [1, L]/[B, L] tensor."""
    shape, data = tensor
    if scalar:
        if len(shape) != 1 or shape[0] not in (1, batch) or len(data) != shape[0]:
            raise RequestError(f"input {name} must have shape [1] or [{batch}], got {shape}")
        values = [_number(v) for v in data]
        return values * batch if len(values) == 1 else values
    if len(shape) != 2 or shape[0] not in (1, batch) or shape[1] < 1 or len(data) != shape[0] * shape[1]:
        raise RequestError(f"input {name} must have shape [1, L] or [{batch}, L], got {shape}")
    width = shape[1]
    rows = [[_number(v) for v in data[r * width:(r + 1) * width]] for r in range(shape[0])]
    return rows * batch if len(rows) == 1 else rows


def _number(value: Any) -> Any:
    # JSON numbers in a v2 INT tensor may arrive as floats (1.0); only integral values count.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


# -- responses -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


def encode_response(model_name: str, request: InferRequest, outputs: list[OutputTensor]
                    ) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; binary outputs follow the JSON header, whose length is
    the `Inference-Header-Content-Length` response header."""
    by_name = {o.name: o for o in outputs}
    described, blobs = [], []
    for name, binary in request.selected(tuple(by_name)):
        tensor = by_name[name]
        entry: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if binary:
            blob = encode_binary(tensor.datatype, tensor.array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.array.ravel().tolist()
        described.append(entry)
    header = orjson.dumps({"model_name": model_name, "id": request.id, "outputs": described})
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}


def encode_binary(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.ravel().tolist():
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts += [BYTES_PREFIX.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=NUMPY_TYPES[datatype]).tobytes()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

