"""Open-loop HTTP load generator: requests start on a fixed schedule at the target rate whatever the
server's latency (so a slow server builds a queue, as real traffic does, instead of slowing the
client down), each timed from its scheduled start to its response.

    from benchmarks.loadgen import run_load
    result = run_load(url, bodies, qps=200, duration_s=10)
    result.p50_ms, result.p99_ms, result.achieved_qps, result.errors

`bodies` is a list of JSON-able request bodies used round-robin (or a callable i -> body). An error
is a transport failure, a timeout or any non-2xx status; the first few error messages are kept.
Runs on its own event loop in the calling thread (uvloop + aiohttp), one connection pool capped at
`max_connections`; requests that find the pool exhausted wait, and that wait counts in their latency.

    python -m benchmarks.loadgen --url http://127.0.0.1:8080/v1/models/genrec:predict --qps 100 \
        --duration 10 --body '{"instances": [{"user_id": "u1", "k": 10}]}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    offered_qps: float
    duration_s: float
    sent: int
    ok: int
    errors: int
    achieved_qps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    status_counts: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    # Per-request latencies in ms (successes only), in send order; left out of to_json.
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms")
        return out


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


async def _load(url: str, body_for: Callable[[int], Any], qps: float, duration_s: float, timeout_s: float,
                max_connections: int, headers: dict[str, str]) -> LoadResult:
    import aiohttp

    total = max(1, int(round(qps * duration_s)))
    interval = 1.0 / qps
    latencies: list[float | None] = [None] * total
    statuses: dict[str, int] = {}
    samples: list[str] = []
    payloads = [json.dumps(body_for(i)).encode() for i in range(min(total, 4096))]
    connector = aiohttp.TCPConnector(limit=max_connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def one(index: int, scheduled: float) -> None:
            try:
                async with session.post(url, data=payloads[index % len(payloads)]) as response:
                    text = await response.read()
                    key = str(response.status)
                    if 200 <= response.status < 300:
                        latencies[index] = (time.perf_counter() - scheduled) * 1000.0
                    elif len(samples) < 5:
                        samples.append(f"{response.status}: {text[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
                if len(samples) < 5:
                    samples.append(f"{key}: {exc}")
            statuses[key] = statuses.get(key, 0) + 1

        tasks = []
        start = time.perf_counter()
        for index in range(total):
            scheduled = start + index * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    done = [x for x in latencies if x is not None]
    ok = len(done)
    return LoadResult(
        offered_qps=qps, duration_s=elapsed, sent=total, ok=ok, errors=total - ok,
        achieved_qps=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(done, 50), p90_ms=percentile(done, 90), p99_ms=percentile(done, 99),
        max_ms=max(done) if done else float("nan"), mean_ms=float(np.mean(done)) if done else float("nan"),
        status_counts=statuses, error_samples=samples, latencies_ms=done)


def run_load(url: str, bodies: Sequence[Any] | Callable[[int], Any], qps: float, duration_s: float,
             timeout_s: float = 10.0, max_connections: int = 256,
             headers: dict[str, str] | None = None) -> LoadResult:
    """Sends POSTs at `qps` for `duration_s` seconds (open loop) and returns the latency figures."""
    if qps <= 0 or duration_s <= 0:
        raise ValueError("qps and duration_s must be positive")
    if callable(bodies):
        body_for = bodies
    else:
        if not bodies:
            raise ValueError("give at least one request body")
        body_for = lambda i: bodies[i % len(bodies)]  # noqa: E731
    import gc

    import uvloop

    # The caller's objects (a benchmark holds its data set and model) are frozen for the run: a full
    # collection walking them stalled this event loop for up to ~150 ms, which the requests in flight
    # then counted as server latency.
    gc.collect()
    gc.freeze()
    try:
        # uvloop + aiohttp: the client shares the machine with the server, so its own CPU per request
        # must stay small (httpx's async client cost several times more and capped the offered load).
        return uvloop.run(_load(url, body_for, qps, duration_s, timeout_s, max_connections,
                                {"Content-Type": "application/json", **(headers or {})}))
    finally:
        gc.unfreeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--qps", type=float, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--body", required=True, help="JSON body, or @file with one JSON body per line")
    args = parser.parse_args()
    if args.body.startswith("@"):
        with open(args.body[1:]) as handle:
            bodies = [json.loads(line) for line in handle if line.strip()]
    else:
        bodies = [json.loads(args.body)]
    print(json.dumps(run_load(args.url, bodies, args.qps, args.duration).to_json(), indent=2))


if __name__ == "__main__":
    main()
