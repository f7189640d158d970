"""Soak: a real `genrec serve` (Beauty LazyAR, default rung) under open-loop load at 70% of the
capacity bench_serving measured, for 10 minutes. Records errors, latency and the server's resident
memory per window; writes benchmarks/results/soak.json (+ .png). Not part of CI.

    nice python -m benchmarks.bench_soak [--minutes 10] [--fraction 0.7] [--qps Q]

RSS (the server's and its decode process's) growth is measured from the end of the warm-up
(imports, first batches, allocator pools) to the end of the run. Targets: zero errors, RSS growth
under 10%, and every 30-second window's p99 within --p99-target-ms. Each window also records the
server's request profile (benchmarks/request_profile.py: stages, GC pauses, both processes' CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.bench_serving import BODIES, beauty_model, request_bodies
from benchmarks.harness import RESULTS, save_result
from benchmarks.loadgen import run_load
from benchmarks.request_profile import Snapshot
from genrec.config import GenrecConfig
from testbed.serving import start_server

WINDOW_SECONDS = 30.0
WARMUP_SECONDS = 60.0


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its children (the decode process), in MB."""
    import psutil

    process = psutil.Process(pid)
    return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)]) / 2**20


def measured_capacity() -> float:
    path = RESULTS / "serving_load.json"
    if not path.is_file():
        raise SystemExit("run benchmarks.bench_serving first (or pass --qps)")
    figures = json.loads(path.read_text())["figures"]
    rung = figures["rungs"][str(figures["default_rung"])]
    # Capacity within the SLO when the run found one, else the zero-error throughput capacity.
    return float(rung["capacity_qps"] or rung["throughput_capacity_qps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--qps", type=float, default=None, help="offered load (default: fraction x capacity)")
    parser.add_argument("--p99-target-ms", type=float, default=50.0, help="every 30 s window's p99 target")
    args = parser.parse_args()
    capacity = None if args.qps else measured_capacity()
    qps = args.qps or args.fraction * capacity
    serving = GenrecConfig().serving
    load_start = [round(x, 2) for x in os.getloadavg()]
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model, prepared, model_dir = beauty_model(Path(tmp))
        bodies = request_bodies(model, prepared, BODIES, k=10)
        server = start_server(model_dir, log_path=Path(tmp) / "server.log")
        pid = server.process.pid
        try:
            warm = run_load(server.predict_url, bodies, qps=qps, duration_s=WARMUP_SECONDS)
            baseline = rss_mb(pid)
            started = time.monotonic()
            while time.monotonic() - started < args.minutes * 60:
                snapshot = Snapshot.take(server.url, pid)
                result = run_load(server.predict_url, bodies, qps=qps, duration_s=WINDOW_SECONDS)
                profile = Snapshot.take(server.url, pid).since(snapshot)
                windows.append({"minute": (time.monotonic() - started) / 60, "rss_mb": rss_mb(pid),
                                "load_average": [round(x, 2) for x in os.getloadavg()], **result.to_json(),
                                "profile": profile})
                gc_ms = sum(g["total_ms"] for g in profile["gc"].values())
                print(f"{windows[-1]['minute']:.1f} min: {result.achieved_qps:.0f}/s p50 {result.p50_ms:.1f} "
                      f"p99 {result.p99_ms:.1f} ms max {result.max_ms:.0f} ms errors {result.errors} "
                      f"rss {windows[-1]['rss_mb']:.0f} MB cpu server {profile['server_cpu_cores']:.2f} "
                      f"loadgen {profile['load_generator_cpu_cores']:.2f} gc {gc_ms:.0f} ms", flush=True)
            exit_code = server.stop()
        finally:
            server.stop()
    sent = sum(w["sent"] for w in windows)
    errors = sum(w["errors"] for w in windows)
    final = windows[-1]["rss_mb"]
    figures = {
        "model": "amazon-beauty LazyAR (bench_quality cache)",
        "rung": serving.default_rung,
        "capacity_qps": capacity,
        "offered_qps": qps,
        "minutes": args.minutes,
        "requests": sent,
        "errors": errors,
        "warmup": {"seconds": WARMUP_SECONDS, "errors": warm.errors, "p99_ms": warm.p99_ms},
        "rss_mb_after_warmup": baseline,
        "rss_mb_end": final,
        "rss_growth": (final - baseline) / baseline,
        "p99_ms_worst_window": max(w["p99_ms"] for w in windows),
        "p50_ms_median_window": sorted(w["p50_ms"] for w in windows)[len(windows) // 2],
        "achieved_qps_mean": sum(w["achieved_qps"] for w in windows) / len(windows),
        "server_exit_code": exit_code,
        "p99_target_ms": args.p99_target_ms,
        "windows_within_p99_target": sum(w["p99_ms"] <= args.p99_target_ms for w in windows),
        "load_generator_cpu_cores_mean": float(np.mean([w["profile"]["load_generator_cpu_cores"]
                                                        for w in windows])),
        "server_cpu_cores_mean": float(np.mean([w["profile"]["server_cpu_cores"] for w in windows])),
        "gc_pause_ms_per_window_max": max(sum(g["total_ms"] for g in w["profile"]["gc"].values())
                                          for w in windows),
        "targets": {"zero_errors": errors == 0, "rss_growth<10%": (final - baseline) / baseline < 0.10,
                    "every_window_p99_within_target": all(w["p99_ms"] <= args.p99_target_ms
                                                          for w in windows)},
        "windows": windows,
        "load_average_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
    }

    def plot() -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
        minutes = [w["minute"] for w in windows]
        left.plot(minutes, [w["rss_mb"] for w in windows], marker="o")
        left.axhline(baseline, ls="--", color="grey", label="after warm-up")
        left.axhline(baseline * 1.1, ls=":", color="red", label="+10%")
        left.set_xlabel("minutes")
        left.set_ylabel("server RSS (MB)")
        left.legend(fontsize=7)
        right.plot(minutes, [w["p99_ms"] for w in windows], marker="o", label="p99")
        right.plot(minutes, [w["p50_ms"] for w in windows], marker="o", label="p50")
        right.set_xlabel("minutes")
        right.set_ylabel("latency per 30 s window (ms)")
        right.axhline(args.p99_target_ms, ls="--", color="grey", label="p99 target")
        right.legend(fontsize=7)
        fig.suptitle(f"soak: {qps:.0f} req/s offered for {args.minutes:.0f} min, {errors} errors")
        return fig

    save_result("soak", figures, plot)


if __name__ == "__main__":
    main()
