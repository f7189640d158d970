"""The predictor and the Feast online store: summaries join the context when the store has them; an
unknown user, a store that is down and a store that is too slow each degrade to history-only (or
popular items without a history) with a metric, never an error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from testbed.serving import build_tiny_feature_repo, cached_tiny_model, free_port, one_torch_thread

PREDICT = "/v1/models/genrec:predict"

@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield



def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model(summary_dim=8)


def client_for(model_dir: Path, feature_repo: Path | None, **serving: Any) -> Any:
    from fastapi.testclient import TestClient

    from genrec.config import GenrecConfig
    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    config = GenrecConfig()
    for key, value in serving.items():
        setattr(config.serving, key, value)
    model = GenerativeRecommender("genrec", model_dir, config, feature_repo=feature_repo)
    return TestClient(in_process_app(model), raise_server_exceptions=False)


def ask(client: Any, user: str, items: list[str] | None = None) -> dict[str, Any]:
    instance: dict[str, Any] = {"user_id": user, "k": 5}
    if items:
        instance["recent_items"] = items
    response = client.post(PREDICT, json={"instances": [instance]})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_summaries_from_the_online_store_and_unknown_users(model_dir: Path, tmp_path: Path) -> None:
    repo = build_tiny_feature_repo(tmp_path / "repo", model_dir)
    with client_for(model_dir, repo) as client:
        assert ask(client, "u1", ["i1"])["context"] == "summary+history"
        assert ask(client, "u2")["context"] == "summary"
        misses = sample("genrec_feast_misses_total", reason="unknown_user")
        history_only = sample("genrec_context_fallbacks_total", kind="history_only")
        answer = ask(client, "nobody", ["i1", "i4"])
        assert answer["context"] == "history_only" and len(answer["items"]) == 5
        assert sample("genrec_feast_misses_total", reason="unknown_user") == misses + 1
        assert sample("genrec_context_fallbacks_total", kind="history_only") == history_only + 1
        popular = sample("genrec_context_fallbacks_total", kind="popular")
        assert ask(client, "nobody")["context"] == "popular"
        assert sample("genrec_context_fallbacks_total", kind="popular") == popular + 1
        # The summary changes the answer: the same history with and without the user's summary.
        with_summary = [i["item_id"] for i in ask(client, "u3", ["i1", "i4"])["items"]]
        without = [i["item_id"] for i in answer["items"]]
        assert with_summary != without


def test_feast_down_degrades_to_history_only(model_dir: Path, tmp_path: Path) -> None:
    # A Redis online store on a port nobody listens on: every read fails at once.
    repo = build_tiny_feature_repo(tmp_path / "repo", model_dir, redis_port=free_port())
    errors = sample("genrec_feast_errors_total")
    unavailable = sample("genrec_feast_misses_total", reason="unavailable")
    with client_for(model_dir, repo) as client:
        answer = ask(client, "u1", ["i1"])
        assert answer["context"] == "history_only" and len(answer["items"]) == 5
        assert ask(client, "u1")["context"] == "popular"
    assert sample("genrec_feast_errors_total") >= errors + 2
    assert sample("genrec_feast_misses_total", reason="unavailable") >= unavailable + 2


def test_slow_feast_read_times_out(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.serving.engine import SummaryFetcher

    repo = build_tiny_feature_repo(tmp_path / "repo", model_dir)
    timeout_ms = 30.0
    real_read = SummaryFetcher._read

    def slow_read(self: SummaryFetcher, users: list[str]) -> Any:
        if users != ["__genrec_warmup__"]:
            time.sleep(5 * timeout_ms / 1000)
        return real_read(self, users)

    monkeypatch.setattr(SummaryFetcher, "_read", slow_read)
    errors = sample("genrec_feast_errors_total")
    with client_for(model_dir, repo, feature_timeout_ms=timeout_ms) as client:
        started = time.perf_counter()
        assert ask(client, "u1", ["i1"])["context"] == "history_only"
        # Answered after the timeout, not after the slow read.
        assert time.perf_counter() - started < 5 * timeout_ms / 1000 + 1.0
    assert sample("genrec_feast_errors_total") == errors + 1
