"""A real `redis-server` on a free loopback port, for the tests of the production online store.

    with running_redis(tmp_path) as redis:
        ... redis.port ...
        redis.stop()    # take the store down mid-test (a Feast outage)
        redis.start()   # and bring it back on the same port
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from testbed.binaries import require_binary

STARTUP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str, folder: Path, port: int) -> None:
        self.binary, self.folder, self.port = binary, folder, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError as exc:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from exc
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=STARTUP_SECONDS)


@contextlib.contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    """Starts redis-server (skipping the test, or failing it in CI, when the binary is missing)."""
    server = RedisServer(require_binary("redis-server"), folder, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
