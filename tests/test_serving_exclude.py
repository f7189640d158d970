"""serving.exclude_history: the predictor never recommends an item the request already holds, with
the same beams otherwise (the library's masked beam search, held to the exhaustive reference in
tests/test_beam_search.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from genrec.config import ConfigError, GenrecConfig
from testbed.serving import cached_tiny_model, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def _top(config: GenrecConfig, recent: list[str], k: int) -> list[str]:
    from fastapi.testclient import TestClient

    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    model = GenerativeRecommender("genrec", cached_tiny_model(), config)
    with TestClient(in_process_app(model)) as client:
        response = client.post("/v1/models/genrec:predict", json={"instances": [
            {"user_id": "u0", "k": k, "recent_items": recent, "beam_policy": [32]}]})
    assert response.status_code == 200, response.text
    return [entry["item_id"] for entry in response.json()["predictions"][0]["items"]]


def test_items_of_the_request_are_left_out_and_the_rest_keep_their_order() -> None:
    # The tiny model's users keep to one item group (i mod 4): a history of group 0 makes the model
    # propose more of group 0, several of them items the history already holds.
    history = [f"i{item}" for item in range(0, 60, 4)]
    plain = _top(GenrecConfig(), history, 30)
    assert set(plain[:10]) & set(history), "the test needs a list that repeats the history"
    config = GenrecConfig()
    config.serving.exclude_history = True
    kept = _top(config, history, 10)
    assert not set(kept) & set(history)
    assert kept == [item for item in plain if item not in history][:10]


def test_exclude_history_with_dare_is_refused_by_name() -> None:
    config = GenrecConfig()
    config.serving.exclude_history = True
    config.serving.dare = True
    with pytest.raises(ConfigError, match="serving.exclude_history"):
        config.check()
