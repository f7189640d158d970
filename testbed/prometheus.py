"""A real Prometheus server on loopback for tests and benchmarks (Debian's `prometheus` binary).

It gets a generated config (one static scrape job, a short scrape interval) and a throw-away TSDB
folder. `stop()` and `start()` again keep the port and the data, which is how the tests take
Prometheus away mid-run and give it back.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPrometheus:
    def __init__(self, binary: str, folder: Path, targets: dict[str, list[str]],
                 scrape_interval: str = "1s") -> None:
        """`targets`: job name -> ["host:port", ...], each scraped at /metrics."""
        self.binary = binary
        self.folder = Path(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                               for job, hosts in targets.items()],
        }))
        self.log_path = self.folder / "prometheus.log"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def query(self, promql: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5.0)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def wait_for_scrapes(self, job: str, scrapes: int = 2, timeout: float = 30.0) -> None:
        """Until every target of `job` has been scraped `scrapes` times and is up: before that
        rate() has fewer than two samples and answers nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(f'count_over_time(up{{job="{job}"}}[1m])')
            up = self.query(f'up{{job="{job}"}}')
            if result and all(float(r["value"][1]) >= scrapes for r in result) and up and \
                    all(r["value"][1] == "1" for r in up):
                return
            time.sleep(0.25)
        raise RuntimeError(f"job {job} was not scraped {scrapes} times within {timeout}s")

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
