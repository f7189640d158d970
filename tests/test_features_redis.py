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


def summary_frame(users: int, seed: int):  # type: ignore[no-untyped-def]
    """Newest-summary rows of mixed summary lengths (empty, one-byte and multi-byte varint lengths),
    shapes, item counts and timestamps (whole seconds, the epoch, and microseconds)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 5, 127, 128, 1024, 40000], size=users)
    stamps = pd.to_datetime(rng.integers(0, 2_000_000_000_000_000, size=users), unit="us", utc=True)
    stamps = stamps.where(np.arange(users) % 7 != 0, pd.Timestamp(0, tz="UTC"))
    return pd.DataFrame({
        "user_id": [f"user-{i}-é" for i in range(users)],
        "event_timestamp": stamps,
        "summary": [rng.bytes(int(n)) for n in lengths],
        "summary_shape": [[int(n) // 4, 1] if n % 4 == 0 else [int(n), 0] for n in lengths],
        "n_items": rng.integers(0, 1 << 40, size=users),
    })


def redis_repo(folder: Path, port: int, ttl: int | None) -> Path:
    online = {"type": "redis", "connection_string": f"127.0.0.1:{port}"}
    if ttl:
        online["key_ttl_seconds"] = ttl
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "feature_store.yaml").write_text(yaml.safe_dump(
        {"project": "genrec_test", "registry": "registry.db", "provider": "local", "online_store": online}))
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("ttl", [None, 3600])
def test_the_resp_writer_stores_what_the_pipelined_reference_stores(redis_port: int, tmp_path: Path,
                                                                    ttl: int | None) -> None:
    """The writer's own RESP buffers (the fast path) against redis-py pipelines (its reference):
    every key, hash field and value, and the keys' time to live, over batches that do not divide the
    rows."""
    import redis

    from genrec.features.redis_writer import RedisSummaryWriter

    frame = summary_frame(500, seed=3)
    writer = RedisSummaryWriter(redis_repo(tmp_path / "repo", redis_port, ttl))
    client = redis.Redis(host="127.0.0.1", port=redis_port)

    def dump() -> tuple[dict[bytes, dict[bytes, bytes]], set[int]]:
        keys = list(client.scan_iter())
        # Time to live in whole minutes, rounded up (Redis answers -1 for none).
        return {key: client.hgetall(key) for key in keys}, {-(-client.ttl(key) // 60) for key in keys}

    assert writer.write_pipelined(frame, batch_rows=7) == len(frame)
    reference, reference_ttl = dump()
    client.flushall()
    assert writer.write(frame, batch_rows=7) == len(frame)
    fast, fast_ttl = dump()
    assert len(fast) == len(frame) and fast == reference
    assert fast_ttl == reference_ttl == ({ttl // 60} if ttl else {0})
    client.close()


@pytest.mark.integration
def test_a_redis_error_reply_is_raised_and_the_connection_stays_usable(redis_port: int, tmp_path: Path) -> None:
    """A user key that holds another type answers WRONGTYPE: the write raises it, the other users of
    the batch are written, and the next write on the pooled connection reads its own replies."""
    import redis

    from genrec.features.redis_writer import RedisSummaryWriter

    frame = summary_frame(20, seed=4)
    writer = RedisSummaryWriter(redis_repo(tmp_path / "repo", redis_port, None))
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    blocked = writer._key_function()(frame["user_id"][5])
    client.set(blocked, b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer.write(frame, batch_rows=100)
    assert client.dbsize() == len(frame)
    client.delete(blocked)
    assert writer.write(frame, batch_rows=100) == len(frame)
    assert all(client.type(writer._key_function()(user)) == b"hash" for user in frame["user_id"])
    client.close()
