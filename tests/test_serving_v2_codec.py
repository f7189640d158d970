"""The v2 (Open Inference Protocol) codec and the request parsers, without a server: JSON and binary
bodies decode to the same tensors, every malformed body is a RequestError naming its field (never
an exception of another kind), and the binary format matches tritonclient's byte for byte."""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pytest

from genrec.config import GenrecConfig
from genrec.serving import v2
from genrec.serving.policy import BeamLadder
from genrec.serving.requests import RequestError, RequestRules, check_depth, parse_json, parse_v1
from genrec.serving.v2 import parse_v2

DEPTH = GenrecConfig().serving.max_json_depth


def rules(levels: int = 3) -> RequestRules:
    serving = GenrecConfig().serving
    ladder = BeamLadder.from_config(serving.beam_ladder, serving.default_rung, serving.max_beam_width)
    return RequestRules(serving, ladder, levels)


def json_body(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


USERS = {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "u2"]}
K = {"name": "k", "datatype": "INT64", "shape": [1], "data": [4]}
HISTORY = {"name": "recent_items", "datatype": "BYTES", "shape": [2, 2], "data": [["i1", "i5"], ["i2", ""]]}


def binary_body(tensors: list[tuple[str, str, list[int], bytes]], **extra: object) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s,
                                     "parameters": {"binary_data_size": len(raw)}}
                                    for n, d, s, raw in tensors], **extra}).encode()
    return header + b"".join(raw for *_, raw in tensors), str(len(header))


def test_json_and_binary_bodies_decode_to_the_same_instances() -> None:
    from tritonclient.utils import serialize_byte_tensor

    plain = v2.decode_request(json_body([USERS, HISTORY, K]), None, DEPTH)
    users = serialize_byte_tensor(np.array([b"u1", b"u2"], dtype=object)).item()
    history = serialize_byte_tensor(np.array([[b"i1", b"i5"], [b"i2", b""]], dtype=object)).item()
    body, length = binary_body([("user_id", "BYTES", [2], users), ("recent_items", "BYTES", [2, 2], history),
                                ("k", "INT32", [1], np.array([4], dtype="<i4").tobytes())])
    binary = v2.decode_request(body, length, DEPTH)
    assert parse_v2(plain.inputs, rules()) == parse_v2(binary.inputs, rules())
    (first, second) = parse_v2(binary.inputs, rules())
    assert first.recent_items == ("i1", "i5") and second.recent_items == ("i2",) and first.k == 4


def test_binary_encoding_matches_tritonclient() -> None:
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    ids = np.array([["a", "bcd"], ["", "é"]], dtype=object)
    ours = v2.encode_binary("BYTES", ids)
    assert ours == serialize_byte_tensor(np.array([[s.encode() for s in row] for row in ids.tolist()],
                                                  dtype=object)).item()
    assert [b.decode() for b in deserialize_bytes_tensor(ours)] == ["a", "bcd", "", "é"]
    assert v2.decode_binary("BYTES", (2, 2), ours, "x") == [b"a", b"bcd", b"", "é".encode()]
    scores = np.array([[0.5, -1.25]], dtype=np.float32)
    assert v2.encode_binary("FP32", scores) == scores.tobytes()
    assert v2.decode_binary("FP32", (1, 2), scores.tobytes(), "x") == [0.5, -1.25]


MALFORMED = {
    "header length not a number": (b"{}", "abc", "Inference-Header-Content-Length"),
    "header length negative": (b"{}", "-1", "Inference-Header-Content-Length"),
    "header length past the body": (b"{}", "99", "longer than the body"),
    "missing inputs": (b"{}", None, 'missing field "inputs"'),
    "inputs empty": (b'{"inputs": []}', None, "non-empty list"),
    "not an object": (b"[1]", None, "JSON object"),
    "empty body": (b"", None, "empty body"),
    "malformed JSON": (b'{"inputs": [', None, "not valid JSON"),
    "unknown top-level field": (json_body([K], extra=1), None, "unknown field"),
    "unknown datatype": (json_body([{**K, "datatype": "INT128"}]), None, "not an Open Inference Protocol"),
    "shape negative": (json_body([{**K, "shape": [-1]}]), None, "non-negative"),
    "shape too deep": (json_body([{**K, "shape": [1] * 9}]), None, "at most 8"),
    "shape and data disagree": (json_body([{**K, "shape": [2**62, 2**62]}]), None, "holds"),
    "data of the wrong type": (json_body([{**K, "data": ["four"]}]), None, "must be an integer"),
    "no data": (json_body([{"name": "k", "datatype": "INT64", "shape": [1]}]), None, "no data"),
    "data and binary size": (json_body([{**K, "parameters": {"binary_data_size": 8}}]), None, "both"),
    "bad output list": (json_body([K], outputs=[{"nom": "x"}]), None, "outputs[0]"),
    "binary_data_output not a bool": (json_body([K], parameters={"binary_data_output": "yes"}), None,
                                      "binary_data_output"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bodies_are_request_errors_naming_the_field(case: str) -> None:
    body, length, fragment = MALFORMED[case]
    with pytest.raises(RequestError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        v2.decode_request(body, length, DEPTH)


def test_binary_parts_are_bounded_before_use() -> None:
    huge_prefix = struct.pack("<I", 2**31) + b"abc"
    body, length = binary_body([("user_id", "BYTES", [1], huge_prefix)])
    with pytest.raises(RequestError, match="claims 2147483648 bytes but only 3 remain"):
        v2.decode_request(body, length, DEPTH)
    body, length = binary_body([("user_id", "BYTES", [1], b"\x01\x00")])
    with pytest.raises(RequestError, match="length prefix is cut off"):
        v2.decode_request(body, length, DEPTH)
    body, length = binary_body([("k", "INT64", [1], b"\x00" * 7)])
    with pytest.raises(RequestError, match="not a whole number"):
        v2.decode_request(body, length, DEPTH)
    body, length = binary_body([("k", "INT64", [2], b"\x00" * 8)])
    with pytest.raises(RequestError, match="holds 2 values but 1"):
        v2.decode_request(body, length, DEPTH)
    body, length = binary_body([("k", "INT64", [1], b"\x00" * 8)])
    with pytest.raises(RequestError, match="add up to 8"):
        v2.decode_request(body + b"trailing", length, DEPTH)
    with pytest.raises(RequestError, match="runs past the end"):
        v2.decode_request(body[:-1], length, DEPTH)


@pytest.mark.parametrize("inputs,fragment", [
    ([{**USERS, "datatype": "INT64", "data": [1, 2]}, K], "user_id must have datatype BYTES"),
    ([USERS, {**K, "datatype": "FP32", "data": [4.0]}], "k must have an integer datatype"),
    ([USERS, {**K, "name": "nope"}], "unknown input 'nope'"),
    ([USERS], "missing the required input 'k'"),
    ([USERS, K, {"name": "beam_policy", "datatype": "INT64", "shape": [1, 4], "data": [8, 8, 8, 8]}],
     "4 widths but the model has 3"),
    ([USERS, K, {**HISTORY, "shape": [2, 201], "data": ["i1"] * 402}], "at most 200"),
])
def test_v2_inputs_are_checked_against_genrec_s_contract(inputs: list[dict], fragment: str) -> None:
    request = v2.decode_request(json_body(inputs), None, DEPTH)
    with pytest.raises(RequestError, match=fragment):
        parse_v2(request.inputs, rules())


def test_requested_outputs_are_honoured() -> None:
    request = v2.decode_request(json_body([USERS, K], outputs=[
        {"name": "scores"}, {"name": "item_ids", "parameters": {"binary_data": True}}]), None, DEPTH)
    outputs = [v2.OutputTensor("item_ids", "BYTES", np.array([["i1", "i2"]], dtype=object)),
               v2.OutputTensor("scores", "FP32", np.array([[-1.0, -2.0]], dtype=np.float32)),
               v2.OutputTensor("sids", "INT64", np.zeros((1, 2, 3), dtype=np.int64))]
    body, headers = v2.encode_response("genrec", request, outputs)
    length = int(headers[v2.HEADER_LENGTH])
    header = orjson.loads(body[:length])
    assert [o["name"] for o in header["outputs"]] == ["scores", "item_ids"]
    assert header["outputs"][0]["data"] == [-1.0, -2.0]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": len(body) - length}
    assert v2.decode_binary("BYTES", (1, 2), body[length:], "x") == [b"i1", b"i2"]
    plain = v2.decode_request(json_body([USERS, K]), None, DEPTH)
    body, headers = v2.encode_response("genrec", plain, outputs)
    assert v2.HEADER_LENGTH not in headers and len(orjson.loads(body)["outputs"]) == 3
    for wrong, fragment in ([{"name": "nope"}], "not an output"), ([{"name": "sids"}, {"name": "sids"}], "twice"):
        request = v2.decode_request(json_body([USERS, K], outputs=wrong), None, DEPTH)
        with pytest.raises(RequestError, match=fragment):
            request.selected(("item_ids", "scores", "sids"))


def test_nesting_depth_is_bounded_without_recursion() -> None:
    deep = b'{"instances": [{"user_id": ' + b"[" * 990 + b"]" * 990 + b', "k": 3}]}'
    with pytest.raises(RequestError, match="more than 10 levels deep"):
        parse_json(deep, DEPTH, "the v1 request")
    # Deeper than any JSON parser's own limit: still a RequestError, never a RecursionError.
    with pytest.raises(RequestError):
        parse_json(b"[" * 100_000 + b"]" * 100_000, DEPTH, "the body")
    nested: list = []
    node = nested
    for _ in range(5000):  # built without the parser: check_depth itself must not recurse
        node.append([])
        node = node[0]
    with pytest.raises(RequestError, match="levels deep"):
        check_depth(nested, DEPTH, "value")
    check_depth({"instances": [{"recent_items": ["a"]}]}, 4, "value")


def test_v1_beam_policy_longer_than_the_levels_is_refused() -> None:
    body = {"instances": [{"user_id": "u1", "k": 3, "beam_policy": [1] * 16000}]}
    with pytest.raises(RequestError, match="16000 widths but the model has 3"):
        parse_v1(body, rules())
    (instance,) = parse_v1({"instances": [{"user_id": "u1", "k": 3, "beam_policy": [8, 4]}]}, rules())
    assert instance.policy is not None and instance.policy.widths == (8, 4)
