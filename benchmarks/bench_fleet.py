"""Replicas and beams together: a simulated day of the predictor fleet under four scaling policies.

- fixed widest beam, KEDA scaling on the widest rung's demand;
- the beam controller alone, on a fixed fleet (sized, unless the recipe says otherwise, to the mean
  replicas of the policy with both loops: the same GPU budget, spent without an autoscaler);
- both loops: the controller, and KEDA on the widest rung's demand (manifests/base/scaledobject.yaml);
- both loops, with the autoscaler on utilisation instead (what a CPU or GPU-utilisation HPA sees): the
  controller narrows, utilisation falls, the autoscaler scales in, the controller narrows further.

Replicas serve as benchmarks/results/serving_load.json measured the default ladder; the controller is
`genrec.controller.law.decide` itself, on a simulated clock; KEDA and the HPA are modelled with their
polling, stabilisation and rate limits, and every new replica starts 1-3 minutes after it is asked
for (genrec.fleet). Recall given up is request-weighted, from each rung's offline Recall@10 on Beauty
test users (the model serving_load.json served; cached beside it). Writes benchmarks/results/fleet.json
and fleet.png (load, replicas, rung and p99 over the day, per policy).

    python -m benchmarks.bench_fleet            # about a minute once the per-rung recall is cached
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks import common as bq
from benchmarks.harness import RESULTS, save_result
from genrec.config import GenrecConfig, load_config
from genrec.fleet.replica import ReplicaModel
from genrec.fleet.simulate import POLICIES, SECONDS_PER_MINUTE, DayRecord, DaySummary, simulate_day, summarise
from genrec.fleet.traffic import arrivals
from genrec.serving.policy import BeamLadder
from genrec.train.data import evaluation_requests

RECIPE = bq.RECIPES / "fleet.yaml"
SERVING_LOAD = RESULTS / "serving_load.json"
# The targets of the policy with both loops (issue 28).
MIN_MINUTES_WITHIN_SLO = 0.99
MAX_RECALL_SHARE_OF_CONTROLLER_ALONE = 0.5
MAX_SCALE_INS_PER_WINDOW = 1
# The settings swept around the recipe's: KEDA's target utilisation, and the slowest replica start.
SENSITIVITY_TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7)
SENSITIVITY_STARTUP_MAX = (180.0, 420.0)


def rung_recall(config: GenrecConfig, users: int, seed: int, allow_train: bool) -> list[float]:
    """Offline Recall@10 of each rung of the ladder on `users` Beauty test users, with the model the
    load test served (bench_quality's reference recipe)."""
    quality = bq.run_config("beauty", [])
    prepared = bq.prepare("beauty", quality)
    model = bq.cached_model(prepared, quality, allow_train)
    model_dir = bq.model_folder(prepared, quality) / "model"
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    ladder = BeamLadder.from_config(config.serving.beam_ladder, config.serving.default_rung,
                                    config.serving.max_beam_width)
    levels = model.decoder.levels
    return [bq.recall_of(model, model_dir, requests, ladder.policy(r).for_levels(levels), users, seed)
            for r in range(len(ladder))]


def per_minute(record: DayRecord) -> dict[str, list[float]]:
    """The day's series a minute at a time (for the JSON and the plot)."""
    minutes = len(record.arrivals) // SECONDS_PER_MINUTE

    def fold(values: np.ndarray, how: str) -> np.ndarray:
        shaped = values[: minutes * SECONDS_PER_MINUTE].reshape(minutes, SECONDS_PER_MINUTE)
        return shaped.max(axis=1) if how == "max" else shaped.mean(axis=1)

    return {"load_rps": np.round(fold(record.arrivals, "mean"), 1).tolist(),
            "replicas_requested": np.round(fold(record.requested.astype(float), "mean"), 2).tolist(),
            "replicas_ready": np.round(fold(record.ready.astype(float), "mean"), 2).tolist(),
            "rung": np.round(fold(record.rung.astype(float), "mean"), 2).tolist(),
            "p99_ms": np.round(np.minimum(fold(record.p99, "max"), 1e6) * 1000, 2).tolist()}


def run(config: GenrecConfig, recall: list[float], serving_load: dict[str, Any]) -> dict[str, Any]:
    model = ReplicaModel.from_serving_load(serving_load["figures"])
    day = arrivals(config.fleet)
    records: dict[str, DayRecord] = {}
    summaries: dict[str, DaySummary] = {}
    order = ["both", "fixed_widest_autoscaled", "both_utilisation_trigger", "controller_fixed_fleet"]
    for name in order:
        fixed = 0
        if name == "controller_fixed_fleet":
            fixed = config.fleet.fixed_replicas or math.ceil(summaries["both"].mean_replicas)
        records[name] = simulate_day(config, model, day, POLICIES[name], recall, fixed)
        summaries[name] = summarise(records[name], config, recall)
        s = summaries[name]
        print(f"{name:26s} within SLO {s.minutes_within_slo:.2%} ({s.minutes_outside_slo} min out), "
              f"recall given up {s.recall_given_up:.2%}, {s.replica_hours:.1f} replica-h, "
              f"{s.scale_events} scale events, {s.rung_changes} rung changes", flush=True)
    both, widest = summaries["both"], summaries["fixed_widest_autoscaled"]
    alone = summaries["controller_fixed_fleet"]
    targets = {
        "minutes_within_slo": {"value": both.minutes_within_slo, "at_least": MIN_MINUTES_WITHIN_SLO,
                               "met": both.minutes_within_slo >= MIN_MINUTES_WITHIN_SLO},
        "replica_hours_vs_fixed_widest": {"value": both.replica_hours, "at_most": widest.replica_hours,
                                          "met": both.replica_hours <= widest.replica_hours},
        "recall_given_up_vs_controller_alone": {
            "value": both.recall_given_up,
            "at_most": MAX_RECALL_SHARE_OF_CONTROLLER_ALONE * alone.recall_given_up,
            "met": both.recall_given_up <= MAX_RECALL_SHARE_OF_CONTROLLER_ALONE * alone.recall_given_up},
        "scale_ins_per_stabilisation_window": {"value": both.most_scale_ins_per_stabilisation_window,
                                               "at_most": MAX_SCALE_INS_PER_WINDOW,
                                               "met": both.most_scale_ins_per_stabilisation_window
                                               <= MAX_SCALE_INS_PER_WINDOW},
    }
    return {
        "day": {"seconds": len(day), "requests": int(day.sum()), "mean_rps": float(day.mean()),
                "peak_second_rps": float(day.max())},
        "replica_model": {"source": str(SERVING_LOAD.relative_to(bq.REPO)),
                          "source_commit": serving_load.get("commit"),
                          "throughput_rps_per_rung": [c.throughput for c in model.rungs],
                          "p99_curve_ms_per_rung": [{"rates": list(c.rates),
                                                     "p99_ms": [1000 * x for x in c.p99_seconds]}
                                                    for c in model.rungs]},
        "offline_recall@10_per_rung": recall,
        "slo_p99_seconds": config.controller.slo_p99_seconds,
        "policies": {name: {"description": POLICIES[name].description, **asdict(summaries[name]),
                            "fixed_replicas": (config.fleet.fixed_replicas or math.ceil(both.mean_replicas))
                            if name == "controller_fixed_fleet" else None,
                            "per_minute": per_minute(records[name])} for name in order},
        "targets": targets,
        "targets_met": all(t["met"] for t in targets.values()),
        "config": {"controller": bq.recorded_controller(config.controller),
                   "autoscaling": asdict(config.autoscaling), "fleet": asdict(config.fleet),
                   "beam_ladder": config.serving.beam_ladder},
    }


def sensitivity(config: GenrecConfig, recall: list[float], serving_load: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """What the settings a platform owner tunes do to the policy with both loops (and to the widest beam
    alone, the same autoscaler without the controller): the target utilisation, and slower starts."""
    model = ReplicaModel.from_serving_load(serving_load["figures"])
    day = arrivals(config.fleet)
    rows = []
    for target in SENSITIVITY_TARGETS:
        for slowest in SENSITIVITY_STARTUP_MAX:
            varied = dataclasses.replace(config, autoscaling=dataclasses.replace(config.autoscaling,
                                                                                 target_utilisation=target),
                                         fleet=dataclasses.replace(config.fleet, startup_seconds_max=slowest))
            row: dict[str, Any] = {"target_utilisation": target, "startup_seconds_max": slowest}
            for name in ("both", "fixed_widest_autoscaled"):
                s = summarise(simulate_day(varied, model, day, POLICIES[name], recall), varied, recall)
                row[name] = {"minutes_within_slo": s.minutes_within_slo, "recall_given_up": s.recall_given_up,
                             "replica_hours": s.replica_hours}
            both = row["both"]
            print(f"target {target:.1f}, start-up up to {slowest:.0f}s: both "
                  f"{both['minutes_within_slo']:.2%} within SLO, recall given up "
                  f"{both['recall_given_up']:.2%}, {both['replica_hours']:.0f} replica-h; widest alone "
                  f"{row['fixed_widest_autoscaled']['minutes_within_slo']:.2%}", flush=True)
            rows.append(row)
    return rows


def plot(figures: dict[str, Any]) -> plt.Figure:
    names = list(figures["policies"])
    fig, axes = plt.subplots(len(names), 3, figsize=(16, 3.1 * len(names)), sharex=True)
    hours = np.arange(len(figures["policies"][names[0]]["per_minute"]["load_rps"])) / 60
    slo_ms = 1000 * figures["slo_p99_seconds"]
    for row, name in zip(axes, names):
        p = figures["policies"][name]
        series = p["per_minute"]
        load, replicas = row[0], row[0].twinx()
        load.plot(hours, series["load_rps"], color="#999", lw=0.8, label="load (requests/s)")
        replicas.plot(hours, series["replicas_requested"], color="#1f77b4", lw=1.2,
                      label="replicas asked for")
        replicas.plot(hours, series["replicas_ready"], color="#1f77b4", lw=0.8, ls=":",
                      label="replicas ready")
        load.set_ylabel("requests/s")
        replicas.set_ylabel("replicas")
        load.set_title(f"{name}: {p['replica_hours']:.0f} replica-h, {p['scale_events']} scale events",
                       fontsize=9)
        row[1].plot(hours, series["rung"], color="#2ca02c", lw=1)
        row[1].set_ylim(-0.2, len(figures["offline_recall@10_per_rung"]) - 0.8)
        row[1].set_ylabel("rung (0 = narrowest)")
        row[1].set_title(f"recall given up {p['recall_given_up']:.2%}, {p['rung_changes']} rung changes",
                         fontsize=9)
        row[2].semilogy(hours, np.maximum(series["p99_ms"], 1.0), color="#d62728", lw=0.8)
        row[2].axhline(slo_ms, color="#333", ls="--", lw=0.8)
        row[2].set_ylabel("p99 per minute (ms)")
        row[2].set_title(f"within SLO {p['minutes_within_slo']:.2%} of minutes", fontsize=9)
        replicas.set_ylim(0, max(series["replicas_requested"]) + 1)
        if name == names[0]:
            load.legend(handles=load.get_lines() + replicas.get_lines(), loc="upper left", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("hour of day")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bq.add_config_arguments(parser)
    parser.add_argument("--recall-users", type=int, default=2000,
                        help="Beauty test users behind each rung's recall")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the recall users' sample")
    parser.add_argument("--allow-train", action="store_true",
                        help="train the Beauty model if it is not cached")
    args = parser.parse_args()
    config = load_config(args.config or RECIPE, args.set)
    if not bq.SHARED.is_dir():
        raise SystemExit(f"bench_fleet needs Amazon Beauty for each rung's recall: {bq.SHARED} is absent")
    serving_load = json.loads(SERVING_LOAD.read_text())
    recall = rung_recall(config, args.recall_users, args.seed, args.allow_train)
    figures = run(config, recall, serving_load)
    figures["sensitivity"] = sensitivity(config, recall, serving_load)
    figures["recipe"] = str(Path(args.config or RECIPE).resolve().relative_to(bq.REPO))
    figures["config_overrides"] = list(args.set)
    save_result("fleet", figures, lambda: plot(figures))


if __name__ == "__main__":
    main()
