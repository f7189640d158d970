"""Serving load: a real `genrec serve` process with the Beauty LazyAR model (the one bench_quality
trains and caches), driven open-loop by benchmarks/loadgen.py over loopback HTTP at rising offered
loads, for every rung of the beam ladder. Writes benchmarks/results/<name>.json (+ .png: latency
against offered load per rung, and where a request's time goes at low and high load).

    python -m benchmarks.bench_serving [--loads 200 400 800 1000] [--seconds 10] [--name serving_load]

Capacity at a rung = the highest load such that it and every lower load were served with zero errors
and p99 <= --p99-target-ms;
throughput capacity = the highest served with zero errors at any latency (the controller's
feed-forward table, `controller.rung_capacity_rps`). The load generator shares the machine's cores
with the server; its CPU share, and the server's, are recorded per point, as is the load average.

Each point also carries the server's request profile (`benchmarks/request_profile.py`): the mean and
p99 time per request in parse, queue, Feast read, decode and serialise, the garbage collector's
pauses, and the mean decode batch. The Beauty reference model reads no summaries, so it does no
Feast reads (its `feast` stage is empty).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.common import prepare, run_config, train_cached
from benchmarks.harness import RESULTS, save_result
from benchmarks.loadgen import run_load
from benchmarks.request_profile import STAGES, Snapshot
from genrec.config import GenrecConfig
from genrec.model.artefact import TrainedModel, save_model
from genrec.train.data import evaluation_requests
from testbed.serving import start_server

TOKEN_ENV = GenrecConfig().serving.admin_token_env
TOKEN = "bench-serving"
# Distinct request bodies cycled by the load generator (users of the test split).
BODIES = 2000
WARMUP_SECONDS = 3.0
# The bar for the default rung (requests/s within the p99 target), and the result that holds
# the request path's profile before the decode process and the event-driven batcher.
TARGET_QPS = 800
BEFORE = "serving_load_before"
# A point whose achieved rate falls this far short of the offered one did not serve the load.
SERVED_FRACTION = 0.97


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


def recall_parity(url: str, model: TrainedModel, prepared: Any, serving: Any, count: int,
                  k: int = 10) -> dict[str, Any]:
    """Recall@k at the default rung of the served answers (HTTP, the decode process) and of the
    in-process reference (`BeamSearcher`, the library's beam search) on the same test-split users,
    and how many answers differ at all."""
    from genrec.serving.decode_worker import BeamSearcher, SearchBatch

    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    chosen = np.random.default_rng(1).choice(len(requests), size=min(count, len(requests)), replace=False)
    chosen = chosen[requests.lengths[chosen] > 0]
    widths = tuple(serving.beam_ladder[serving.default_rung])
    levels = model.decoder.levels
    widths = tuple(widths[min(i, len(widths) - 1)] for i in range(levels))
    reference = BeamSearcher(model, serving, None)
    served: list[list[str]] = []
    expected: list[list[str]] = []
    step = serving.max_instances_per_request
    for start in range(0, len(chosen), step):
        index = chosen[start:start + step]
        histories = [requests.recent[i][requests.recent[i] >= 0][::-1] for i in index]  # oldest first
        instances = [{"user_id": str(requests.users[i]), "k": k,
                      "recent_items": [str(model.item_ids[r]) for r in history]}
                     for i, history in zip(index, histories)]
        response = httpx.post(f"{url}/v1/models/genrec:predict", json={"instances": instances}, timeout=60)
        response.raise_for_status()
        served.extend([entry["item_id"] for entry in p["items"]] for p in response.json()["predictions"])
        output = reference.search(SearchBatch(requests.recent[index], None, widths, k, None, False))
        expected.extend([str(model.item_ids[r]) for r in row if r >= 0] for row in output.items)
    targets = [str(model.item_ids[t]) if t >= 0 else "" for t in requests.targets[chosen]]
    return {"users": len(chosen), "k": k, "widths": list(widths),
            "served_recall": float(np.mean([t in s[:k] for t, s in zip(targets, served)])),
            "reference_recall": float(np.mean([t in e[:k] for t, e in zip(targets, expected)])),
            "answers_differing": sum(s != e for s, e in zip(served, expected))}


def measure_point(server: Any, bodies: list[dict], qps: float, seconds: float) -> dict[str, Any]:
    """One open-loop run at `qps`, with the server's request profile and both processes' CPU."""
    before_load = load_average()
    snapshot = Snapshot.take(server.url, server.process.pid)
    result = run_load(server.predict_url, bodies, qps=qps, duration_s=seconds)
    profile = Snapshot.take(server.url, server.process.pid).since(snapshot)
    return {**result.to_json(), "profile": profile, "load_average_before": before_load,
            "load_average_after": load_average()}


def served(point: dict[str, Any], p99_ms: float | None = None) -> bool:
    """Zero errors, the offered rate achieved, and (when given) p99 within `p99_ms`."""
    return (point["errors"] == 0 and point["achieved_qps"] >= SERVED_FRACTION * point["offered_qps"]
            and (p99_ms is None or point["p99_ms"] <= p99_ms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=float, nargs="+",
                        default=[100, 200, 400, 600, 800, 900, 1000, 1200])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rungs", type=int, nargs="*", default=None, help="default: every rung")
    parser.add_argument("--p99-target-ms", type=float, default=50.0,
                        help="capacity = the highest load served with p99 within this")
    parser.add_argument("--name", default="serving_load", help="result name (benchmarks/results/<name>.json)")
    parser.add_argument("--set", action="append", default=[], help="serving config override for the server")
    args = parser.parse_args()
    config = GenrecConfig().with_overrides(args.set)
    serving = config.serving
    target_ms = args.p99_target_ms
    rungs = args.rungs if args.rungs is not None else list(range(len(serving.beam_ladder)))
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        model, prepared, model_dir = beauty_model(Path(tmp))
        bodies = request_bodies(model, prepared, BODIES, k=10)
        server = start_server(model_dir, env={TOKEN_ENV: TOKEN}, overrides=args.set,
                              log_path=Path(tmp) / "server.log")
        results: dict[str, Any] = {}
        try:
            set_rung(server.url, serving.default_rung)
            parity = recall_parity(server.url, model, prepared, serving, BODIES)
            print(f"recall@10 served {parity['served_recall']:.4f} "
                  f"reference {parity['reference_recall']:.4f} answers differing "
                  f"{parity['answers_differing']}/{parity['users']}", flush=True)
            for rung in rungs:
                policy = set_rung(server.url, rung)
                run_load(server.predict_url, bodies, qps=min(args.loads), duration_s=WARMUP_SECONDS)
                points = []
                for qps in args.loads:
                    point = measure_point(server, bodies, qps, args.seconds)
                    points.append(point)
                    profile = point["profile"]
                    stages = " ".join(f"{k} {v['mean_ms']:.1f}" for k, v in profile["stages"].items()
                                      if v["count"])
                    print(f"rung {rung} {policy['widths']} offered {qps:.0f}/s: achieved "
                          f"{point['achieved_qps']:.0f}/s p50 {point['p50_ms']:.1f} ms "
                          f"p99 {point['p99_ms']:.1f} ms "
                          f"errors {point['errors']} | cpu server {profile['server_cpu_cores']:.2f} loadgen "
                          f"{profile['load_generator_cpu_cores']:.2f} | mean ms: {stages}", flush=True)
                    # Policy may have been stepped down by the guard under overload: put it back.
                    set_rung(server.url, rung)
                    if not served(point):
                        break  # past capacity; heavier loads only queue more
                # Capacity is the top of the run of loads that all met the target from the lowest up:
                # a load above a miss that happened to meet it is luck, not capacity.
                within = list(itertools.takewhile(lambda p: served(p, target_ms), points))
                results[str(rung)] = {
                    "widths": policy["widths"],
                    "capacity_qps": max((p["achieved_qps"] for p in within), default=0.0),
                    # Highest throughput served without errors, whatever the latency (the soak's base
                    # and the controller's feed-forward).
                    "throughput_capacity_qps": max((p["achieved_qps"] for p in points if served(p)),
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
        "reads_summaries": bool(model.decoder.summary_dim),
        "p99_target_ms": target_ms,
        "duration_s_per_point": args.seconds,
        "server": {"max_batch_size": serving.max_batch_size, "max_batch_wait_ms": serving.max_batch_wait_ms,
                   "overrides": args.set},
        "default_rung": serving.default_rung,
        "rungs": results,
        "recall_parity": parity,
        "rung_capacity_rps": [results[str(r)]["throughput_capacity_qps"] for r in sorted(map(int, results))],
        "load_average_start_end": [load_start, load_average()],
        "cpus": os.cpu_count(),
        "note": "load generator and server share the machine's cores; each point records both CPU shares",
    }
    if default is not None:
        points = default["points"]
        figures["default_rung_capacity_qps"] = default["capacity_qps"]
        figures["profile_low_load"] = {"offered_qps": points[0]["offered_qps"], **points[0]["profile"]}
        top = list(itertools.takewhile(lambda p: served(p, target_ms), points)) or points[:1]
        figures["profile_high_load"] = {"offered_qps": top[-1]["offered_qps"], **top[-1]["profile"]}
        at_800 = [p for p in points if p["offered_qps"] >= 800]
        figures["default_rung_at_800qps"] = at_800[0] if at_800 else None
        figures["target_met"] = default["capacity_offered_qps"] >= TARGET_QPS
    before = RESULTS / f"{BEFORE}.json"
    if before.is_file() and args.name != BEFORE:
        # The profile of the request path before this work (the same benchmark at an earlier commit).
        record = json.loads(before.read_text())
        figures["before"] = {"result": f"benchmarks/results/{BEFORE}.json", "commit": record.get("commit"),
                             "default_rung_capacity_qps": record["figures"].get("default_rung_capacity_qps"),
                             "profile_low_load": record["figures"].get("profile_low_load"),
                             "profile_high_load": record["figures"].get("profile_high_load")}

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        for rung, data in results.items():
            offered = [p["offered_qps"] for p in data["points"]]
            label = f"rung {rung} {data['widths']}"
            axes[0].plot(offered, [p["p99_ms"] for p in data["points"]], marker="o", label=label)
            axes[1].plot(offered, [p["p50_ms"] for p in data["points"]], marker="o", label=label)
        for ax, name in zip(axes, ("p99", "p50")):
            ax.axhline(target_ms, ls="--", color="grey", label=f"target p99 {target_ms:.0f} ms")
            ax.set_xlabel("offered load (requests/s)")
            ax.set_ylabel(f"{name} latency (ms)")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        if default is not None:
            profiles = {"low load": figures["profile_low_load"], "high load": figures["profile_high_load"]}
            if figures.get("before"):
                profiles = {"before, low load": figures["before"]["profile_low_load"],
                            "before, high load": figures["before"]["profile_high_load"], **profiles}
            plot_profile(axes[2], profiles)
        fig.suptitle(f"genrec serve, Beauty LazyAR, {os.cpu_count()}-core CPU shared with the load generator")
        return fig

    save_result(args.name, figures, plot)


def plot_profile(ax: Any, profiles: dict[str, dict[str, Any]]) -> None:
    """Stacked mean time per request and stage, one bar per profile."""
    bottoms = np.zeros(len(profiles))
    labels = [f"{name}\n{p['offered_qps']:.0f}/s" for name, p in profiles.items()]
    for stage in STAGES:
        values = np.array([p["stages"].get(stage, {}).get("mean_ms", 0.0) or 0.0 for p in profiles.values()])
        values = np.nan_to_num(values)
        ax.bar(labels, values, bottom=bottoms, label=stage)
        bottoms += values
    ax.set_ylabel("mean ms per request")
    ax.set_title("where a request's time goes (server)")
    ax.legend(fontsize=7)


if __name__ == "__main__":
    main()
