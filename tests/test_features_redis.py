"""The production-like online store: a real redis-server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from genrec.features import materialize_user_summaries, online_summaries
from genrec.vista.snapshot import latest_snapshots
from genrec.vista.train import train_summarizer
from testbed.redis import running_redis
from tests.test_features_repo import tied_log
from tests.test_vista_snapshots import tiny_config


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    with running_redis(tmp_path) as redis:
        yield redis.port


@pytest.mark.integration
def test_redis_online_store_round_trip(redis_port: int, tmp_path: Path) -> None:
    cfg = tiny_config()
    cfg.features.online_store = "redis"
    cfg.features.redis_connection_string = f"127.0.0.1:{redis_port}"
    log = tied_log()
    model_path = tmp_path / "summarizer.pt"
    train_summarizer(log, cfg).summarizer.save(model_path)
    result = materialize_user_summaries(cfg, log, model_path, tmp_path / "repo")

    settings = yaml.safe_load((result.repo.path / "feature_store.yaml").read_text())
    assert settings["online_store"] == {"type": "redis", "connection_string": f"127.0.0.1:{redis_port}"}
    assert not (result.repo.path / "data" / "online_store.db").exists()
    latest = latest_snapshots(result.snapshots).set_index("user_id")
    read = online_summaries(result.repo, [*latest.index, "nobody"])
    assert read.pop("nobody") is None
    assert {user: summary.tobytes() for user, summary in read.items()} == latest["summary"].to_dict()
