"""The predictor over HTTP: a real `genrec serve` (kserve.ModelServer) process on loopback for the
contract (v1, v2, admin, guard, metrics, bad input), and the same app in-process for the cases that
need another environment (admin disabled)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.serving import (
    ServerHandle,
    cached_tiny_model,
    one_torch_thread,
    predict,
    start_server,
    tiny_request,
)

pytestmark = pytest.mark.integration

TOKEN = "test-token"
# Short batch wait so requests pile up in flight for the guard test; small guard bound.
GUARD = 3

@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield



@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model()


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerHandle:
    handle = start_server(model_dir, env={"GENREC_ADMIN_TOKEN": TOKEN},
                          overrides=[f"serving.inflight_guard={GUARD}", "serving.max_batch_wait_ms=20",
                                     "serving.max_body_bytes=4096"],
                          log_path=tmp_path_factory.mktemp("server") / "server.log")
    yield handle
    assert handle.stop() is not None


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    assert found, f"{name}{{{labels}}} missing from /metrics"
    return float(found.group(1))


def test_v1_predict_returns_top_k_with_scores_and_sids(server: ServerHandle, model_dir: Path) -> None:
    response = predict(server, tiny_request(model_dir, k=7))
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    items = answer["items"]
    assert len(items) == 7 and answer["context"] == "history"
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert all(len(i["sid"]) == 3 for i in items) and len({i["item_id"] for i in items}) == 7
    assert answer["beam_policy"] == [16, 16, 16]  # the rung's widths, per SID level


def test_v2_open_inference_protocol(server: ServerHandle) -> None:
    body = {"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "u2"]},
        {"name": "recent_items", "datatype": "BYTES", "shape": [2, 2], "data": ["i1", "i5", "i2", ""]},
        {"name": "k", "datatype": "INT64", "shape": [1], "data": [4]},
        {"name": "beam_policy", "datatype": "INT64", "shape": [1, 1], "data": [8]}]}
    response = httpx.post(server.infer_url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["item_ids"]["shape"] == [2, 4] and outputs["scores"]["shape"] == [2, 4]
    assert outputs["sids"]["shape"] == [2, 4, 3]
    assert all(isinstance(i, str) and i.startswith("i") for i in outputs["item_ids"]["data"])


def test_no_history_and_no_summary_falls_back_to_popular_items(server: ServerHandle, model_dir: Path) -> None:
    before = metric(server.metrics(), "genrec_context_fallbacks_total", 'kind="popular"')
    response = predict(server, {"instances": [{"user_id": "someone-new", "k": 3}]})
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"][0]
    assert answer["context"] == "popular" and len(answer["items"]) == 3
    assert metric(server.metrics(), "genrec_context_fallbacks_total", 'kind="popular"') == before + 1


BAD_BODIES = {
    "malformed JSON": b'{"instances": [',
    "not an object": b"[1, 2, 3]",
    "missing instances": b'{"inputs": 3}',
    "instances not a list": b'{"instances": {"user_id": "u1"}}',
    "empty instances": b'{"instances": []}',
    "missing user_id": b'{"instances": [{"k": 3}]}',
    "missing k": b'{"instances": [{"user_id": "u1"}]}',
    "user_id wrong type": b'{"instances": [{"user_id": 5, "k": 3}]}',
    "k wrong type": b'{"instances": [{"user_id": "u1", "k": "ten"}]}',
    "k zero": b'{"instances": [{"user_id": "u1", "k": 0}]}',
    "k too large": b'{"instances": [{"user_id": "u1", "k": 51}]}',
    "k bool": b'{"instances": [{"user_id": "u1", "k": true}]}',
    "beam policy too wide": b'{"instances": [{"user_id": "u1", "k": 3, "beam_policy": [64]}]}',
    "beam policy zero": b'{"instances": [{"user_id": "u1", "k": 3, "beam_policy": [0]}]}',
    "beam policy empty": b'{"instances": [{"user_id": "u1", "k": 3, "beam_policy": []}]}',
    "beam policy not a list": b'{"instances": [{"user_id": "u1", "k": 3, "beam_policy": 8}]}',
    "unknown items": b'{"instances": [{"user_id": "u1", "k": 3, "recent_items": ["i1", "nope"]}]}',
    "empty history": b'{"instances": [{"user_id": "u1", "k": 3, "recent_items": []}]}',
    "history wrong type": b'{"instances": [{"user_id": "u1", "k": 3, "recent_items": "i1"}]}',
    "unknown field": b'{"instances": [{"user_id": "u1", "k": 3, "extra": 1}]}',
    "too many instances": json.dumps({"instances": [{"user_id": "u", "k": 1}] * 65}).encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_a_4xx_with_a_message(server: ServerHandle, case: str) -> None:
    response = predict(server, BAD_BODIES[case])
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert response.json().get("error") or response.json().get("detail")


def test_error_messages_name_the_problem(server: ServerHandle) -> None:
    expectations = {"k too large": "1..50", "unknown items": "nope", "beam policy too wide": "exceeds",
                    "missing k": "'k'", "empty history": "empty", "malformed JSON": "not valid JSON"}
    for case, fragment in expectations.items():
        assert fragment in predict(server, BAD_BODIES[case]).json()["error"], case


def test_oversized_body_is_413(server: ServerHandle) -> None:
    body = json.dumps({"instances": [{"user_id": "u" * 5000, "k": 3}]}).encode()
    assert predict(server, body).status_code == 413


def test_admin_policy_contract(server: ServerHandle) -> None:
    url = f"{server.url}/admin/beam-policy"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    current = httpx.get(url).json()
    assert set(current) == {"rung", "widths", "source"} and current["source"] in ("default", "admin", "guard")
    assert httpx.put(url, json={"rung": 1}).status_code == 401
    assert httpx.put(url, json={"rung": 1}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    outside = httpx.put(url, json={"rung": 4}, headers=auth)
    assert outside.status_code == 422 and "outside the ladder" in outside.json()["error"]
    assert httpx.put(url, json={"rung": "1"}, headers=auth).status_code == 422
    changed = httpx.put(url, json={"rung": 1}, headers=auth)
    assert changed.status_code == 200 and changed.json() == {"rung": 1, "widths": [8], "source": "admin"}
    assert httpx.get(url).json() == changed.json()
    (answer,) = predict(server, {"instances": [{"user_id": "u1", "k": 3, "recent_items": ["i1"]}]}
                        ).json()["predictions"]
    assert answer["beam_policy"] == [8, 8, 8]
    text = server.metrics()
    assert metric(text, "genrec_beam_rung") == 1 and metric(text, "genrec_beam_width", 'level="0"') == 8


def test_guard_steps_down_one_rung_when_in_flight_passes_the_bound(server: ServerHandle,
                                                                     model_dir: Path) -> None:
    url = f"{server.url}/admin/beam-policy"
    httpx.put(url, json={"rung": 3}, headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    before = metric(server.metrics(), "genrec_inflight_guard_stepdowns_total")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = json.dumps(tiny_request(model_dir)).encode()
            responses = await asyncio.gather(*[
                client.post(server.predict_url, content=body, headers={"Content-Type": "application/json"})
                for _ in range(4 * GUARD)])
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * (4 * GUARD)
    policy = httpx.get(url).json()
    assert policy["source"] == "guard" and policy["rung"] < 3
    assert metric(server.metrics(), "genrec_inflight_guard_stepdowns_total") >= before + 1


def test_metrics_cover_the_contract_without_user_ids(server: ServerHandle, model_dir: Path) -> None:
    predict(server, tiny_request(model_dir, user="user-with-a-secret-id"))
    text = server.metrics()
    for name in ("genrec_request_duration_seconds_bucket", "genrec_decode_duration_seconds_bucket",
                 "genrec_batch_size_bucket", "genrec_inflight_requests", "genrec_beam_rung",
                 "genrec_dare_accepted_tokens_total", "genrec_dare_draft_tokens_total",
                 "genrec_feast_misses_total", "genrec_feast_errors_total", "genrec_requests_total"):
        assert name in text, name
    assert "user-with-a-secret-id" not in text
    assert metric(text, "genrec_requests_total", 'code="ok"') >= 1
    assert metric(text, "genrec_requests_total", 'code="server_error"') == 0


def test_admin_disabled_without_a_token(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    monkeypatch.delenv("GENREC_ADMIN_TOKEN", raising=False)
    with TestClient(in_process_app(GenerativeRecommender("genrec", model_dir))) as client:
        response = client.put("/admin/beam-policy", json={"rung": 0}, headers={"Authorization": "Bearer x"})
        assert response.status_code == 403 and "admin disabled" in response.json()["error"]
        assert client.get("/admin/beam-policy").json()["source"] == "default"


def test_load_refuses_a_missing_model_folder_or_a_remote_uri(tmp_path: Path) -> None:
    from genrec.serving.model import GenerativeRecommender, ModelSourceError

    with pytest.raises(ModelSourceError, match="does not exist"):
        GenerativeRecommender("genrec", tmp_path / "no-such-model").load()
    with pytest.raises(ModelSourceError, match="storage initializer"):
        GenerativeRecommender("genrec", "s3://bucket/model").load()


def test_file_uri_is_served(model_dir: Path) -> None:
    from genrec.serving.model import GenerativeRecommender

    model = GenerativeRecommender("genrec", f"file://{model_dir}")
    assert model.load() and model.ready


def test_generated_bad_requests_against_the_real_process(server: ServerHandle) -> None:
    """A sample of test_serving_fuzz's generated requests, over the socket: still never a 5xx."""
    from hypothesis import HealthCheck, given, settings

    from tests.test_serving_fuzz import requests

    codes: list[int] = []
    with httpx.Client(timeout=30) as client:

        @settings(max_examples=150, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def check(request: tuple[str, bytes]) -> None:
            protocol, body = request
            url = server.predict_url if protocol == "v1" else server.infer_url
            response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            codes.append(response.status_code)
            assert response.status_code < 500, (protocol, body[:200], response.text[:200])

        check()
    assert len(codes) == 150
    assert metric(server.metrics(), "genrec_requests_total", 'code="server_error"') == 0


def test_requests_queued_past_the_bound_are_shed_with_503() -> None:
    """Load shedding: under overload a request that waited past serving.max_queue_ms gets a 503 with
    Retry-After instead of a decode nobody is waiting for; the ones within the bound still decode."""
    from genrec.serving.batching import DynamicBatcher, Overloaded
    from genrec.serving.routes import guarded

    def slow_decode(items: list[int]) -> list[int]:
        time.sleep(0.3)
        return [i * 10 for i in items]

    async def scenario() -> list[object]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(slow_decode, max_batch_size=1, max_batch_wait_ms=0,
                                                           max_queue_ms=100)
        try:
            first = asyncio.ensure_future(batcher.submit_many([1]))
            await asyncio.sleep(0.01)
            # Queued behind a 300 ms decode: waits past the 100 ms bound.
            second = asyncio.ensure_future(batcher.submit_many([2]))
            results = await asyncio.gather(first, second, return_exceptions=True)
            third = await batcher.submit_many([3])  # an idle server decodes at once
            assert batcher.shed == 1
            return [*results, third]
        finally:
            batcher.close()

    first, second, third = asyncio.run(scenario())
    assert first == [10] and third == [30]
    assert isinstance(second, Overloaded) and "serving.max_queue_ms=100" in str(second)

    async def shed(_: object) -> object:
        raise second

    response = asyncio.run(guarded(shed)(None))  # type: ignore[arg-type]
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "serving.max_queue_ms" in json.loads(response.body)["error"]
