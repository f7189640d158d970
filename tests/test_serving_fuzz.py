"""Property-based: no request a client can send makes the predictor answer 5xx.

1,000 generated requests (malformed bytes, arbitrary JSON, near-valid v1 instances with wrong
types and values, broken v2 tensors) go through the predictor's real HTTP app in-process (the same
FastAPI app, KServe routes, genrec middleware and model as `genrec serve`, without a socket, for
speed); test_serving_http.py sends a smaller sample to a real server process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.serving import cached_tiny_model, one_torch_thread

EXAMPLES = 1000

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
item_ids = st.one_of(st.sampled_from([f"i{i}" for i in range(60)]), st.text(max_size=6), st.integers(),
                     st.none())
field_values = {
    "user_id": st.one_of(st.text(max_size=20), json_values),
    "k": st.one_of(st.integers(-5, 80), json_values),
    "recent_items": st.one_of(st.lists(item_ids, max_size=6), json_values),
    "beam_policy": st.one_of(st.lists(st.integers(-3, 80), max_size=5), json_values),
}
instances = st.fixed_dictionaries({}, optional={**field_values, "extra": json_values})
v1_bodies = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(instances, max_size=4)}),
    st.fixed_dictionaries({"instances": json_values}),
    json_values,
)
tensor = st.fixed_dictionaries({
    "name": st.one_of(st.sampled_from(["user_id", "recent_items", "k", "beam_policy"]), st.text(max_size=6)),
    "datatype": st.sampled_from(["BYTES", "INT64", "INT32", "FP32", "BOOL", "UINT8", "nonsense"]),
    "shape": st.lists(st.integers(-2, 5), max_size=3),
    "data": st.one_of(st.lists(st.one_of(st.integers(-3, 60), st.text(max_size=4), st.floats(allow_nan=False)),
                               max_size=8), json_values),
})
v2_bodies = st.one_of(st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=4)}, optional={"id": scalars}),
                      json_values)
raw = st.binary(max_size=64)

@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield



def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


requests = st.one_of(
    st.tuples(st.just("v1"), st.one_of(v1_bodies.map(encode), raw)),
    st.tuples(st.just("v2"), st.one_of(v2_bodies.map(encode), raw)),
)

# The binary extension: a JSON header whose inputs claim binary sizes, a tail of arbitrary bytes
# (BYTES length prefixes among them), and an Inference-Header-Content-Length that may lie.
binary_tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["user_id", "recent_items", "k", "beam_policy", "x"]),
    "datatype": st.sampled_from(["BYTES", "INT64", "INT32", "FP32", "BOOL", "FP16"]),
    "shape": st.lists(st.integers(0, 4), min_size=1, max_size=2),
    "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(0, 40)}),
})
binary_requests = st.tuples(
    st.fixed_dictionaries({"inputs": st.lists(binary_tensor, min_size=1, max_size=4)}, optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["item_ids", "scores", "sids", "x"])},
                                                  optional={"parameters": st.fixed_dictionaries(
                                                      {"binary_data": st.booleans()})}), max_size=3),
        "parameters": st.fixed_dictionaries({"binary_data_output": st.booleans()})}).map(encode),
    st.binary(max_size=80),
    st.one_of(st.none(), st.just("exact"), st.just("exact"), st.integers(-5, 400).map(str),
              st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=6)),
)


@pytest.fixture(scope="module")
def client() -> Any:
    from fastapi.testclient import TestClient

    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    with TestClient(in_process_app(GenerativeRecommender("genrec", cached_tiny_model())),
                    raise_server_exceptions=False) as test_client:
        yield test_client


def test_no_generated_request_gets_a_5xx(client: Any) -> None:
    seen: dict[int, int] = {}
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests)
    def check(request: tuple[str, bytes]) -> None:
        protocol, body = request
        path = "/v1/models/genrec:predict" if protocol == "v1" else "/v2/models/genrec/infer"
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{protocol} {body[:200]!r} -> {response.status_code} {response.text[:200]}")
        assert response.status_code < 500, failures[-1]
        if response.status_code >= 400:
            error = response.json()
            assert error.get("error") or error.get("detail"), response.text

    check()
    assert sum(seen.values()) >= 1000, seen
    # The generator mostly produces bad requests; they must be refused as client errors.
    assert sum(n for code, n in seen.items() if 400 <= code < 500) > 0.8 * sum(seen.values()), seen


def test_no_generated_binary_v2_request_gets_a_5xx(client: Any) -> None:
    codes: list[int] = []

    @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(binary_requests)
    def check(request: tuple[bytes, bytes, str | None]) -> None:
        header, tail, length = request
        headers = {} if length is None else {"Inference-Header-Content-Length": length}
        # Where the claimed length is the header's own, the tail is read as tensors.
        if length == "exact":
            headers["Inference-Header-Content-Length"] = str(len(header))
        response = client.post("/v2/models/genrec/infer", content=header + tail, headers=headers)
        codes.append(response.status_code)
        assert response.status_code < 500, (header[:200], tail, length, response.text[:300])
        if response.status_code >= 400:
            assert response.json()["error"]

    check()
    assert len(codes) >= EXAMPLES // 2 and min(codes) >= 200
