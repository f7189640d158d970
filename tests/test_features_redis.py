"""The production-like online store: a real redis-server on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from genrec.features import materialize_user_summaries, online_summaries
from genrec.vista.snapshot import latest_snapshots
from genrec.vista.train import train_summarizer
from tests.conftest import require_binary
from tests.test_features_repo import tied_log
from tests.test_vista_snapshots import tiny_config

STARTUP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    import redis

    binary = require_binary("redis-server")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=STARTUP_SECONDS)


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
