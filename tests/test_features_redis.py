"""The production-like online store: a real redis-server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from genrec.features import materialize_user_summaries, online_summaries
from genrec.features.materialize import SummaryMaterialization
from genrec.vista.snapshot import latest_snapshots
from genrec.vista.train import train_summarizer
from testbed.redis import running_redis
from tests.test_features_repo import tied_log
from tests.test_vista_snapshots import tiny_config


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    with running_redis(tmp_path) as redis:
        yield redis.port


def materialized_into_redis(redis_port: int, tmp_path: Path) -> SummaryMaterialization:
    """A run's summaries materialised into the Redis on `redis_port`."""
    cfg = tiny_config()
    cfg.features.online_store = "redis"
    cfg.features.redis_connection_string = f"127.0.0.1:{redis_port}"
    log = tied_log()
    model_path = tmp_path / "summarizer.pt"
    train_summarizer(log, cfg).summarizer.save(model_path)
    return materialize_user_summaries(cfg, log, model_path, tmp_path / "repo")


@pytest.mark.integration
def test_redis_online_store_round_trip(redis_port: int, tmp_path: Path) -> None:
    result = materialized_into_redis(redis_port, tmp_path)

    settings = yaml.safe_load((result.repo.path / "feature_store.yaml").read_text())
    assert settings["online_store"] == {"type": "redis", "connection_string": f"127.0.0.1:{redis_port}"}
    assert not (result.repo.path / "data" / "online_store.db").exists()
    latest = latest_snapshots(result.snapshots).set_index("user_id")
    read = online_summaries(result.repo, [*latest.index, "nobody"])
    assert read.pop("nobody") is None
    assert {user: summary.tobytes() for user, summary in read.items()} == latest["summary"].to_dict()


@pytest.mark.integration
def test_the_fast_redis_writer_writes_what_feast_writes(redis_port: int, tmp_path: Path) -> None:
    """genrec's Redis writer (the fast path) against Feast's write_to_online_store (its reference):
    every key and every hash field byte for byte, and Feast reads the summaries back; a second write
    at the same snapshot time replaces the values (Feast's own write would keep the old ones)."""
    import numpy as np
    import redis

    from genrec.features.redis_writer import RedisSummaryWriter
    from genrec.features.schema import USER_SUMMARY_VIEW

    result = materialized_into_redis(redis_port, tmp_path)
    latest = latest_snapshots(result.snapshots).reset_index(drop=True)
    client = redis.Redis(host="127.0.0.1", port=redis_port)

    def dump() -> dict[bytes, dict[bytes, bytes]]:
        return {key: client.hgetall(key) for key in client.scan_iter()}

    client.flushall()
    result.repo.store.write_to_online_store(USER_SUMMARY_VIEW, latest)
    through_feast = dump()
    client.flushall()
    assert RedisSummaryWriter(result.repo.path).write(latest, batch_rows=3) == len(latest)
    direct = dump()
    assert len(direct) == len(latest) and direct == through_feast

    replaced = latest.copy()
    replaced["summary"] = [bytes(reversed(b)) for b in replaced["summary"]]
    RedisSummaryWriter(result.repo.path).write(replaced, batch_rows=100)
    read = online_summaries(result.repo, replaced["user_id"].tolist())
    for _, row in replaced.iterrows():
        assert read[row["user_id"]].tobytes() == row["summary"]
        assert list(read[row["user_id"]].shape) == list(np.asarray(row["summary_shape"]))
    client.close()
