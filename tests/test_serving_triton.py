"""An outside v2 client, `tritonclient[http]`, drives a real `genrec serve` process: health and
metadata, inference with JSON and binary tensors, output selection, and errors. tritonclient sends
JSON without a Content-Type and binary tensors by default, as real clients do."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from testbed.serving import ServerHandle, cached_tiny_model, start_server

pytestmark = pytest.mark.integration

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency (make test)")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(cached_tiny_model(), log_path=tmp_path_factory.mktemp("triton") / "server.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[object]:
    triton = http.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


def inputs(binary: bool, k_type: str = "INT32") -> list[object]:
    users = http.InferInput("user_id", [2], "BYTES")
    users.set_data_from_numpy(np.array([b"u1", b"u2"], dtype=object), binary_data=binary)
    history = http.InferInput("recent_items", [2, 2], "BYTES")
    history.set_data_from_numpy(np.array([[b"i1", b"i5"], [b"i2", b""]], dtype=object), binary_data=binary)
    k = http.InferInput("k", [1], k_type)
    k.set_data_from_numpy(np.array([4], dtype=np.int32 if k_type == "INT32" else np.float32), binary_data=binary)
    return [users, history, k]


def test_health_and_metadata_advertise_the_real_tensors(client: object) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("genrec")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata("genrec")
    assert metadata["name"] == "genrec"
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]} == {
        "user_id": ("BYTES", [-1]), "recent_items": ("BYTES", [-1, -1]), "k": ("INT64", [-1]),
        "beam_policy": ("INT64", [-1, -1])}
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]} == {
        "item_ids": ("BYTES", [-1, -1]), "scores": ("FP32", [-1, -1]), "sids": ("INT64", [-1, -1, 3])}


def test_json_and_binary_inference_agree(client: object) -> None:
    answers = {}
    for binary in (False, True):
        result = client.infer("genrec", inputs(binary))
        ids, scores, sids = (result.as_numpy(n) for n in ("item_ids", "scores", "sids"))
        assert ids.shape == (2, 4) and scores.shape == (2, 4) and sids.shape == (2, 4, 3)
        assert scores.dtype == np.float32 and sids.dtype == np.int64
        assert all(s == sorted(s, reverse=True) for s in scores.tolist())
        answers[binary] = (ids.tolist(), scores.tolist())
    assert answers[False] == answers[True]


def test_requested_outputs_and_their_encoding_are_honoured(client: object) -> None:
    result = client.infer("genrec", inputs(True), outputs=[
        http.InferRequestedOutput("scores", binary_data=False), http.InferRequestedOutput("item_ids")])
    described = result.get_response()["outputs"]
    assert [o["name"] for o in described] == ["scores", "item_ids"]
    assert "data" in described[0] and described[1]["parameters"]["binary_data_size"] > 0
    assert result.as_numpy("sids") is None
    assert result.as_numpy("item_ids").shape == (2, 4)


@pytest.mark.parametrize("call,status,fragment", [
    (lambda c: c.infer("genrec", inputs(True), outputs=[http.InferRequestedOutput("nope")]), "400",
     "not an output of this model"),
    (lambda c: c.infer("genrec", inputs(True, k_type="FP32")), "400", "integer datatype"),
    (lambda c: c.infer("genrec", inputs(True)[:1]), "400", "required input 'k'"),
    (lambda c: c.infer("other", inputs(True)), "404", "not served here"),
    (lambda c: c.get_model_metadata("genrec", model_version="1"), "404", "unversioned"),
    (lambda c: c.unload_model("genrec"), "404", "repository routes are off"),
])
def test_errors_reach_the_client_as_4xx_with_the_message(client: object, call: object, status: str,
                                                         fragment: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call(client)
    assert caught.value.status() == status and fragment in caught.value.message()
    assert client.is_model_ready("genrec"), "the model is still served"
