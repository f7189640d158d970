"""Serving load: a real `genrec serve` process with the Beauty LazyAR model (the one bench_quality
trains and caches), driven open-loop by benchmarks/loadgen.py over loopback HTTP at rising offered
loads, for every rung of the beam ladder. Writes benchmarks/results/serving_load.json (+ .png:
latency against offered load per rung).

    nice python -m benchmarks.bench_serving [--loads 50 100 200 300 400] [--seconds 10]

Capacity at a rung = the highest load served with zero errors and p99 <= the SLO
(controller.slo_p99_seconds); throughput capacity = the highest served with zero errors at any
latency. The load generator shares the machine's two cores with the server,
so the figures are a lower bound on what the server alone could do; the load average before and
after each run is recorded, since other jobs share the machine too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.common import prepare, run_config, train_cached
from benchmarks.harness import save_result
from benchmarks.loadgen import run_load
from genrec.config import GenrecConfig
from genrec.model.artefact import TrainedModel, save_model
from genrec.train.data import evaluation_requests
from testbed.serving import start_server

TOKEN_ENV = GenrecConfig().serving.admin_token_env
TOKEN = "bench-serving"
# Distinct request bodies cycled by the load generator (users of the test split).
BODIES = 2000
WARMUP_SECONDS = 3.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def beauty_model(folder: Path) -> tuple[TrainedModel, Any, Path]:
    config = run_config("beauty", [])
    prepared = prepare("beauty", config)
    model = train_cached(prepared, config)
    # The served folder holds exactly what serving reads (weights, codes, item ids).
    save_model(folder / "model", model.decoder, model.item_ids, extra={"source": "bench_quality beauty"})
    return model, prepared, folder / "model"


def request_bodies(model: TrainedModel, prepared: Any, count: int, k: int, seed: int = 0) -> list[dict]:
    """v1 bodies for users of the test split: their last R items (train + valid) as recent_items."""
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(requests), size=min(count, len(requests)), replace=False)
    bodies = []
    for index in chosen:
        rows = requests.recent[index][requests.recent[index] >= 0][::-1]  # oldest first
        instance: dict[str, Any] = {"user_id": str(requests.users[index]), "k": k}
        if len(rows):
            instance["recent_items"] = [str(model.item_ids[r]) for r in rows]
        bodies.append({"instances": [instance]})
    return bodies


def set_rung(url: str, rung: int) -> dict:
    response = httpx.put(f"{url}/admin/beam-policy", json={"rung": rung},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=float, nargs="+", default=[50, 100, 150, 200, 250, 300, 400])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rungs", type=int, nargs="*", default=None, help="default: every rung")
    parser.add_argument("--set", action="append", default=[], help="serving config override for the server")
    args = parser.parse_args()
    config = GenrecConfig().with_overrides(args.set)
    serving = config.serving
    slo_ms = config.controller.slo_p99_seconds * 1000
    rungs = args.rungs if args.rungs is not None else list(range(len(serving.beam_ladder)))
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        model, prepared, model_dir = beauty_model(Path(tmp))
        bodies = request_bodies(model, prepared, BODIES, k=10)
        server = start_server(model_dir, env={TOKEN_ENV: TOKEN}, overrides=args.set,
                              log_path=Path(tmp) / "server.log")
        results: dict[str, Any] = {}
        try:
            for rung in rungs:
                policy = set_rung(server.url, rung)
                run_load(server.predict_url, bodies, qps=min(args.loads), duration_s=WARMUP_SECONDS)
                points = []
                for qps in args.loads:
                    before = load_average()
                    result = run_load(server.predict_url, bodies, qps=qps, duration_s=args.seconds)
                    point = {**result.to_json(), "load_average_before": before,
                             "load_average_after": load_average()}
                    points.append(point)
                    print(f"rung {rung} {policy['widths']} offered {qps:.0f}/s: "
                          f"achieved {result.achieved_qps:.0f}/s p50 {result.p50_ms:.1f} ms "
                          f"p99 {result.p99_ms:.1f} ms errors {result.errors}", flush=True)
                    # Policy may have been stepped down by the guard under overload: put it back.
                    set_rung(server.url, rung)
                    if result.errors > result.sent // 2:
                        break  # far past capacity; heavier loads only queue more
                within = [p for p in points if p["errors"] == 0 and p["p99_ms"] <= slo_ms]
                results[str(rung)] = {
                    "widths": policy["widths"],
                    "capacity_qps": max((p["achieved_qps"] for p in within), default=0.0),
                    # Highest throughput served without errors, whatever the latency (the soak's base).
                    "throughput_capacity_qps": max((p["achieved_qps"] for p in points if p["errors"] == 0),
                                                   default=0.0),
                    "capacity_offered_qps": max((p["offered_qps"] for p in within), default=0.0),
                    "points": points,
                }
        finally:
            server.stop()
    default = results.get(str(serving.default_rung))
    figures: dict[str, Any] = {
        "model": "amazon-beauty LazyAR (bench_quality cache)",
        "items": int(model.decoder.item_codes.shape[0]),
        "levels": model.decoder.levels,
        "slo_p99_ms": slo_ms,
        "duration_s_per_point": args.seconds,
        "server": {"threads": 1, "max_batch_size": serving.max_batch_size,
                   "max_batch_wait_ms": serving.max_batch_wait_ms, "overrides": args.set},
        "default_rung": serving.default_rung,
        "rungs": results,
        "load_average_start_end": [load_start, load_average()],
        "cpus": os.cpu_count(),
        "note": "load generator and server share the machine's cores",
    }
    if default is not None:
        at_200 = [p for p in default["points"] if p["offered_qps"] >= 200]
        figures["default_rung_at_200qps"] = at_200[0] if at_200 else None
        figures["target_met"] = bool(at_200 and at_200[0]["errors"] == 0 and at_200[0]["p99_ms"] <= slo_ms
                                     and at_200[0]["achieved_qps"] >= 0.95 * 200)

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for rung, data in results.items():
            offered = [p["offered_qps"] for p in data["points"]]
            label = f"rung {rung} {data['widths']}"
            axes[0].plot(offered, [p["p99_ms"] for p in data["points"]], marker="o", label=label)
            axes[1].plot(offered, [p["p50_ms"] for p in data["points"]], marker="o", label=label)
        for ax, name in zip(axes, ("p99", "p50")):
            ax.axhline(slo_ms, ls="--", color="grey", label="SLO (p99)")
            ax.set_xlabel("offered load (requests/s)")
            ax.set_ylabel(f"{name} latency (ms)")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        fig.suptitle("genrec serve, Beauty LazyAR, 2-core CPU shared with the load generator")
        return fig

    save_result("serving_load", figures, plot)


if __name__ == "__main__":
    main()
