"""The beam controller under a load ramp: offered load from 20% to 300% of the capacity at the widest
rung and back, in one run, for three set-ups on the same real stack (`genrec serve` with a trained
model, a real Prometheus scraping it every second):

- fixed widest beam (the top rung, pinned);
- fixed narrowest beam (rung 0, pinned);
- the controller (`genrec controller` as a subprocess, reading that Prometheus, pushing rungs), with
  the feed-forward on (`controller.rung_capacity_rps` = the capacities measured at the start of this
  run, as an operator would take them from a load test) and the predictor's local in-flight guard on;
- with `--ablations`, the same controller without the guard, and the reactive law alone (no
  capacity table, no guard), to show what each part contributes.

    python -m benchmarks.bench_controller_ramp              # ~11 min on the 2-core machine
    python -m benchmarks.bench_controller_ramp --ablations  # ~17 min

Figures (benchmarks/results/controller_ramp.json + .png over time: offered load, p99, rung, recall
proxy):

- per set-up, the share of 10-s windows whose p99 meets the SLO (client-side latency from each
  request's scheduled start, open loop; a failed or timed-out request counts as an SLO miss), and
  the same over the overload windows alone (offered load above the widest rung's capacity);
- recall proxy: offline Recall@10 of each rung, measured once per rung on test users; over time, the
  recall of the rung in force. Under light load (offered <= LIGHT_FRACTION of the widest capacity),
  the controller's average against the widest rung's recall;
- no oscillation: after the ramp the controller alone gets a constant-load segment; rung changes per
  minute once it has settled.

Capacity at each rung is measured first, closed loop, in this same run, so that the ramp is
relative to the machine as it is now (it is shared: the load average is recorded at start and end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import yaml

from benchmarks import common as bq
from benchmarks.harness import save_result
from genrec.config import GenrecConfig, load_config
from genrec.serving.policy import BeamLadder
from genrec.train.data import evaluation_requests
from testbed.prometheus import LocalPrometheus, free_port
from testbed.serving import ServerHandle, start_server

TOKEN = "bench-controller-token"
JSON = {"Content-Type": "application/json"}
JOB = "genrec-predictor"
WINDOW_SECONDS = 10.0  # the windows in which the SLO is judged
LIGHT_FRACTION = 0.5  # "light load": offered at most this share of the widest rung's capacity
OVERLOAD_FRACTION = 1.0  # "overload": offered above the widest rung's capacity
SETTLE_SECONDS = 30.0  # the constant-load segment's first part, before the no-oscillation count

# The experiment's configuration is configs/recipes/controller_ramp.yaml (more `--set` on the command
# line go after it). Measured on this machine before choosing (aiohttp client, closed loop at 32):
#
#   width                   2      4      8      16     32     64     128    256
#   capacity (requests/s)   259    243    216    179    149    93     58     33
#   offline Recall@10 (Beauty, 3,000 test users): 4: 0.038, 8: 0.050, 16: 0.053, 32: 0.0533,
#   64..256: 0.0537
#
# - Ladder [4] [16] [64] [256]: the top rung is the widest beam this deployment allows and by far
#   the most expensive (decode cost grows past width 64 while a fixed ~4 ms of HTTP/KServe work
#   per request dominates below it); the narrowest has ~7x its capacity, so 300% of the widest
#   capacity is servable at all. On this model recall saturates by width 32-64, so the top rung
#   buys no recall here: the experiment tests the control loop, not the ladder. With [128] on top
#   (4.2x) the narrowest rung itself missed the SLO at the peak; the default
#   ladder [4]..[32] spans only 1.6x here.
# - SLO 0.2 s: the cluster's 0.1 s puts the step-up threshold (0.6 x SLO = 60 ms) below the widest
#   rung's light-load p99 on this shared CPU (62 ms measured, with spikes past 0.25 s while other
#   jobs run), so the controller could never use the widest rung.
# - The predictor's local in-flight guard is set out of reach for the fixed set-ups (it would step
#   them down under overload, and they would not be fixed) and for the ablations without it. With
#   the controller it is on, at GUARD_SLO_SHARE of the requests the widest rung completes in one
#   SLO: more in flight than that and the widest rung's queue alone outlasts the SLO. The client
#   caps in-flight requests at --max-connections (256).
# - Controller timing for a ramp measured in tens of seconds (the cluster default is 5 s / 30 s):
#   Prometheus scrapes every second, the rate window holds 5 scrapes, the cool-down lets the
#   window see only the new rung before the next change; learned capacities last 2 minutes (the
#   ramp's scale) instead of 10. The feed-forward's fast window holds 3 scrapes.
GUARD_SLO_SHARE = 0.75
NO_GUARD = "serving.inflight_guard=100000"
RECIPE = "configs/recipes/controller_ramp.yaml"


@dataclass(frozen=True)
class Setup:
    name: str
    pinned: int | None = None  # a rung held fixed; None: the controller moves it
    feed_forward: bool = False  # the controller gets the measured capacities
    guard: bool = False  # the predictor's local in-flight guard is on


@dataclass
class Segment:
    seconds: float
    start: float  # fraction of the widest capacity
    end: float
    phase: str


def ramp_profile(ramp: float, peak_hold: float, light: float) -> list[Segment]:
    return [Segment(light / 2, 0.2, 0.2, "light"), Segment(ramp, 0.2, 3.0, "ramp up"),
            Segment(peak_hold, 3.0, 3.0, "peak"), Segment(ramp, 3.0, 0.2, "ramp down"),
            Segment(light, 0.2, 0.2, "light")]


def fraction_at(profile: list[Segment], t: float) -> tuple[float, str]:
    for seg in profile:
        if t < seg.seconds:
            return seg.start + (seg.end - seg.start) * t / seg.seconds, seg.phase
        t -= seg.seconds
    return profile[-1].end, profile[-1].phase


# ------------------------------------------------------------------------------------------------
# Load
# ------------------------------------------------------------------------------------------------


@dataclass
class RampRecord:
    scheduled: np.ndarray  # seconds from the start
    latency: np.ndarray  # seconds; inf for an error or timeout
    client_lag: np.ndarray  # seconds this client started the request after it was due
    rungs: list[tuple[float, int]] = field(default_factory=list)  # (t, rung in force on the replica)


async def _closed_loop(url: str, payloads: list[bytes], concurrency: int, seconds: float) -> float:
    """Completed requests per second with `concurrency` clients sending back to back."""
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        stop = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal done
            n = i
            while time.perf_counter() < stop:
                async with session.post(url, data=payloads[n % len(payloads)], headers=JSON) as response:
                    await response.read()
                    response.raise_for_status()
                done += 1
                n += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done / (time.perf_counter() - started)


async def _ramp(url: str, admin: str, payloads: list[bytes], rate_at: Any, seconds: float, timeout: float,
                max_connections: int) -> RampRecord:
    """Open loop: request i is due at its scheduled time whatever the server does, and its latency
    runs from that time (a wait for a pooled connection counts, and so does any lag of this client,
    which is recorded apart so that a client that cannot keep up is seen, not mistaken for the
    server). aiohttp, not httpx: on a shared 2-core machine the client's own CPU per request matters."""
    schedule = []
    t = 0.0
    while t < seconds:
        schedule.append(t)
        t += 1.0 / rate_at(t)
    latencies = np.full(len(schedule), np.inf)
    lags = np.zeros(len(schedule))
    record = RampRecord(np.array(schedule), latencies, lags)
    connector = aiohttp.TCPConnector(limit=max_connections)
    limit = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limit) as session, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as side:
        start = time.perf_counter()

        async def one(index: int) -> None:
            due = start + schedule[index]
            lags[index] = time.perf_counter() - due
            try:
                async with session.post(url, data=payloads[index % len(payloads)], headers=JSON) as response:
                    await response.read()
                    if response.status == 200:
                        latencies[index] = time.perf_counter() - due
            except (aiohttp.ClientError, TimeoutError):
                pass  # stays inf: an SLO miss

        async def watch() -> None:
            while (now := time.perf_counter() - start) < seconds:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    async with side.get(admin) as response:
                        record.rungs.append((now, int((await response.json())["rung"])))
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch())
        tasks = []
        for index, at in enumerate(schedule):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
        await watcher
    return record


# ------------------------------------------------------------------------------------------------
# Analysis
# ------------------------------------------------------------------------------------------------


def windows(record: RampRecord, capacity: float, slo: float, profile: list[Segment]) -> list[dict[str, Any]]:
    out = []
    total = sum(s.seconds for s in profile)
    for w0 in np.arange(0.0, total - 1e-9, WINDOW_SECONDS):
        mask = (record.scheduled >= w0) & (record.scheduled < w0 + WINDOW_SECONDS)
        lat = record.latency[mask]
        if not len(lat):
            continue
        p99 = float(np.quantile(lat, 0.99, method="higher"))
        fractions = [fraction_at(profile, t)[0] for t in np.arange(w0, w0 + WINDOW_SECONDS, 1.0)]
        out.append({"start_s": float(w0), "offered_fraction": float(np.mean(fractions)),
                    "offered_rps": float(len(lat) / WINDOW_SECONDS),
                    "completed_rps": float(np.isfinite(lat).sum() / WINDOW_SECONDS),
                    "p99_s": p99, "meets_slo": bool(p99 <= slo),
                    "errors": int((~np.isfinite(lat)).sum()), "requests": int(len(lat)),
                    "client_lag_p99_s": float(np.quantile(record.client_lag[mask], 0.99)),
                    "phase": fraction_at(profile, w0 + WINDOW_SECONDS / 2)[1]})
    return out


def rung_series(record: RampRecord, seconds: float, default: int) -> np.ndarray:
    """Rung in force at each whole second (last observation before it)."""
    series = np.full(int(math.ceil(seconds)), default)
    times = [t for t, _ in record.rungs]
    rungs = [r for _, r in record.rungs]
    for s in range(len(series)):
        i = int(np.searchsorted(times, s + 1e-9, side="right")) - 1
        if i >= 0:
            series[s] = rungs[i]
    return series


def summarise(name: str, record: RampRecord, profile: list[Segment], capacity: float, slo: float,
              recall: list[float], top: int, pinned: int | None) -> dict[str, Any]:
    total = sum(s.seconds for s in profile)
    wins = windows(record, capacity, slo, profile)
    rungs = rung_series(record, total, pinned if pinned is not None else top)
    fractions = np.array([fraction_at(profile, s + 0.5)[0] for s in range(len(rungs))])
    recall_t = np.array([recall[r] for r in rungs])
    light = fractions <= LIGHT_FRACTION
    overload = [w for w in wins if w["offered_fraction"] > OVERLOAD_FRACTION]
    lat = record.latency
    return {
        "setup": name,
        "requests": int(len(lat)), "errors": int((~np.isfinite(lat)).sum()),
        "windows": len(wins),
        "windows_meeting_slo": sum(w["meets_slo"] for w in wins),
        "share_windows_meeting_slo": sum(w["meets_slo"] for w in wins) / max(1, len(wins)),
        "overload_windows": len(overload),
        "overload_windows_meeting_slo": sum(w["meets_slo"] for w in overload),
        "light_load_mean_recall@10": float(recall_t[light].mean()),
        "light_load_recall_vs_widest": float(recall_t[light].mean() / recall[top] - 1.0),
        "mean_recall@10": float(recall_t.mean()),
        "rung_changes": int((np.diff(rungs) != 0).sum()),
        "window_detail": wins,
        "rung_per_second": rungs.tolist(),
    }


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def request_bodies(model: Any, requests: Any, count: int, seed: int) -> list[bytes]:
    """v1 bodies of test users: their latest items (oldest first) as recent_items, k=10."""
    rng = np.random.default_rng(seed + 1)
    index = rng.choice(len(requests), min(count, len(requests)), replace=False)
    bodies = []
    for i in index:
        rows = requests.recent[i][: requests.lengths[i]][::-1]
        items = [str(model.item_ids[r]) for r in rows]
        bodies.append(json.dumps({"instances": [{"user_id": str(requests.users[i]), "recent_items": items,
                                                 "k": 10}]}).encode())
    return bodies


def set_rung(url: str, rung: int) -> None:
    response = httpx.put(f"{url}/admin/beam-policy", json={"rung": rung},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    response.raise_for_status()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="beauty", choices=sorted(bq.DATASETS))
    parser.add_argument("--config", default=RECIPE, help="the experiment's config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override section.key=value, after the experiment's own (repeatable)")
    parser.add_argument("--recall-users", type=int, default=2000)
    parser.add_argument("--ramp-seconds", type=float, default=45.0)
    parser.add_argument("--peak-seconds", type=float, default=15.0)
    parser.add_argument("--light-seconds", type=float, default=30.0)
    parser.add_argument("--constant-seconds", type=float, default=100.0)
    parser.add_argument("--constant-fraction", type=float, default=1.5,
                        help="constant-load segment (controller only), share of the widest capacity")
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--capacity-concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout per request")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--drain-seconds", type=float, default=300.0,
                        help="longest wait for the predictor to finish abandoned requests between set-ups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true",
                        help="also run the controller without the guard and the reactive law alone")
    parser.add_argument("--name", default="controller_ramp")
    return parser.parse_args()


@dataclass
class Experiment:
    """What every set-up shares: the config, the ladder, the served model and its request bodies,
    and the recall of each rung."""

    args: argparse.Namespace
    cfg: GenrecConfig
    ladder: BeamLadder
    model_dir: Path
    payloads: list[bytes]
    recall: list[float]
    work: Path

    @property
    def slo(self) -> float:
        return self.cfg.controller.slo_p99_seconds

    @property
    def config_path(self) -> Path:
        return bq.REPO / self.args.config

    @property
    def serving_overrides(self) -> list[str]:
        return [o for o in self.args.overrides if o.startswith("serving.")]


def prepare_experiment(args: argparse.Namespace) -> Experiment:
    """Phase 1: the model (bench_quality's, cached), each rung's offline recall, the request bodies."""
    cfg = load_config(bq.REPO / args.config, args.overrides)
    serving = cfg.serving
    ladder = BeamLadder.from_config(serving.beam_ladder, serving.default_rung, serving.max_beam_width)
    config = bq.run_config(args.dataset, [])
    prepared = bq.prepare(args.dataset, config)
    model = bq.train_cached(prepared, config, f"[{args.dataset}] ")
    model_dir = _model_dir(config, prepared)
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    recall = [bq.recall_of(model, model_dir, requests, ladder.policy(r).for_levels(model.decoder.levels),
                        args.recall_users, args.seed) for r in range(len(ladder))]
    payloads = request_bodies(model, requests, 1000, args.seed)
    return Experiment(args, cfg, ladder, model_dir, payloads, recall,
                      Path(tempfile.mkdtemp(prefix="genrec-ramp-")))


def measure_capacities(exp: Experiment, server: ServerHandle) -> list[float]:
    """Phase 2: each rung's capacity, closed loop at the batcher's size; the ramp is relative to the
    widest rung's."""
    args = exp.args
    capacities = []
    for rung in range(len(exp.ladder)):
        set_rung(server.url, rung)
        asyncio.run(_closed_loop(server.predict_url, exp.payloads, args.capacity_concurrency, 2.0))  # warm-up
        capacities.append(asyncio.run(_closed_loop(server.predict_url, exp.payloads,
                                                   args.capacity_concurrency, args.capacity_seconds)))
        print(f"rung {rung}: capacity {capacities[-1]:.1f} requests/s", flush=True)
    return capacities


def setups_of(args: argparse.Namespace, top: int) -> list[Setup]:
    setups = [Setup("fixed_widest", pinned=top), Setup("fixed_narrowest", pinned=0)]
    if args.ablations:
        setups += [Setup("controller_reactive_only"), Setup("controller_without_guard", feed_forward=True)]
    setups.append(Setup("controller", feed_forward=True, guard=True))  # last: one server restart
    return setups


@dataclass
class Stack:
    """The predictor (restarted when its guard setting changes), Prometheus, and the controller of the
    set-up in progress."""

    server: ServerHandle
    port: int
    prometheus: LocalPrometheus
    guard_on: bool = False
    controller: subprocess.Popen[bytes] | None = None


def run_setup(exp: Experiment, stack: Stack, setup: Setup, profile: list[Segment], capacities: list[float],
              guard: int) -> tuple[RampRecord, float]:
    """Phase 3, once per set-up: an idle server with the set-up's guard, the rung pinned or the
    controller started, then the ramp. Returns the record and the seconds spent draining first."""
    args, top = exp.args, exp.ladder.top
    capacity = capacities[top]
    name, pinned = setup.name, setup.pinned
    seconds = sum(s.seconds for s in profile)
    # The predictor keeps working on requests whose client gave up (timed out): after an overload it
    # can be busy for minutes. Each set-up starts on an idle server.
    drained = _drain(stack.server.url, args.drain_seconds)
    if setup.guard != stack.guard_on:
        # The guard bound is a start-up setting: same port, so Prometheus keeps scraping it.
        stack.server.stop()
        bound = f"serving.inflight_guard={guard}" if setup.guard else NO_GUARD
        stack.server = start_server(exp.model_dir, env={"GENREC_ADMIN_TOKEN": TOKEN}, port=stack.port,
                                    config=exp.config_path, overrides=[*exp.serving_overrides, bound],
                                    log_path=exp.work / f"server-{name}.log")
        stack.guard_on = setup.guard
        for rung in range(len(exp.ladder)):  # warm every rung's shapes again
            set_rung(stack.server.url, rung)
            asyncio.run(_closed_loop(stack.server.predict_url, exp.payloads, args.capacity_concurrency, 2.0))
        drained += _drain(stack.server.url, args.drain_seconds)
    set_rung(stack.server.url, pinned if pinned is not None else top)
    if pinned is None:
        # Started (and its imports done) before the settling pause: its start-up must not share the
        # CPU with the first seconds of the ramp.
        stack.controller = _start_controller(exp.work, exp.cfg, stack.prometheus.url, stack.server.url,
                                             capacities if setup.feed_forward else [])
    # Let the previous run's requests leave the rate window before this one starts.
    time.sleep(2 * _seconds(exp.cfg.controller.window))
    print(f"{name}: {seconds:.0f}s ramp", flush=True)
    admin = f"{stack.server.url}/admin/beam-policy"
    record = asyncio.run(_ramp(stack.server.predict_url, admin, exp.payloads,
                               lambda t, p=profile: max(0.5, capacity * fraction_at(p, t)[0]),
                               seconds, args.timeout, args.max_connections))
    if stack.controller is not None:
        stack.controller.terminate()
        stack.controller.wait(timeout=30)
        stack.controller = None
    return record, drained


def figures_of(exp: Experiment, setups: list[Setup], results: dict[str, Any], capacities: list[float],
               guard: int, ramp: list[Segment], drain_seconds: dict[str, float], load_start: list[float],
               started_at: float) -> dict[str, Any]:
    """Phase 4: the result's figures, the targets among them."""
    args = exp.args
    capacity = capacities[exp.ladder.top]
    ctl = results["controller"][2]
    ramp_seconds = sum(s.seconds for s in ramp)
    constant = np.array(ctl["rung_per_second"][int(ramp_seconds + SETTLE_SECONDS):])
    changes_after_settle = int((np.diff(constant) != 0).sum()) if len(constant) > 1 else 0
    minutes = max(len(constant) / 60.0, 1e-9)
    return {
        "dataset": bq.DATASETS[args.dataset],
        "ladder": exp.cfg.serving.beam_ladder,
        "slo_p99_seconds": exp.slo,
        "recipe": args.config,
        "config_overrides": args.overrides,
        # Each set-up's controller gets a fresh state file in the run's temporary folder.
        "controller_config": bq.recorded_controller(exp.cfg.controller),
        "capacity_rps_per_rung": capacities,
        "capacity_ratio_narrowest_to_widest": capacities[0] / capacity,
        "controller_inflight_guard": guard,
        "setup_parts": {s.name: dataclasses.asdict(s) for s in setups},
        "offline_recall@10_per_rung": exp.recall,
        "recall_users": args.recall_users,
        "profile": [s.__dict__ for s in ramp],
        "constant_segment": {"fraction_of_widest_capacity": args.constant_fraction,
                             "seconds": args.constant_seconds, "settle_seconds": SETTLE_SECONDS,
                             "rung_changes_after_settling": changes_after_settle,
                             "rung_changes_per_minute_after_settling": changes_after_settle / minutes,
                             "rungs_after_settling": sorted(set(constant.tolist()))},
        "setups": {name: {k: v for k, v in r[2].items() if k not in ("window_detail", "rung_per_second")}
                   for name, r in results.items()},
        "windows": {name: r[2]["window_detail"] for name, r in results.items()},
        "targets": {
            "controller_share_windows_meeting_slo": ctl["share_windows_meeting_slo"],
            "controller_meets_95pct": ctl["share_windows_meeting_slo"] >= 0.95,
            "fixed_widest_breaks_slo_in_overload": results["fixed_widest"][2]["overload_windows_meeting_slo"]
            < results["fixed_widest"][2]["overload_windows"],
            "controller_light_load_recall_within_2pct": ctl["light_load_recall_vs_widest"] >= -0.02,
            "controller_at_most_one_change_per_minute_at_constant_load":
                changes_after_settle / minutes <= 1.0,
        },
        "seconds_waiting_for_an_idle_server_before_each_setup": drain_seconds,
        "load_average_start": load_start,
        "load_average_end": bq.load_average(),
        "wall_minutes": (time.time() - started_at) / 60,
    }


def main() -> None:
    args = parse_args()
    started_at = time.time()
    load_start = bq.load_average()
    prometheus_bin = shutil.which("prometheus")
    if not prometheus_bin:
        sys.exit("prometheus is not installed (apt-get install prometheus)")
    exp = prepare_experiment(args)
    top = exp.ladder.top
    server = start_server(exp.model_dir, config=exp.config_path, overrides=exp.serving_overrides,
                          env={"GENREC_ADMIN_TOKEN": TOKEN},
                          log_path=exp.work / "server.log")
    stack = Stack(server, int(server.url.rsplit(":", 1)[1]),
                  LocalPrometheus(prometheus_bin, exp.work / "prometheus",
                                  {JOB: [server.url.removeprefix("http://")]}, scrape_interval="1s"))
    setups = setups_of(args, top)
    ramp = ramp_profile(args.ramp_seconds, args.peak_seconds, args.light_seconds)
    with_constant = ramp + [Segment(args.constant_seconds, args.constant_fraction, args.constant_fraction,
                                    "constant")]
    results: dict[str, Any] = {}
    drain_seconds: dict[str, float] = {}
    try:
        stack.prometheus.start()
        capacities = measure_capacities(exp, stack.server)
        capacity = capacities[top]
        guard = max(1, math.ceil(GUARD_SLO_SHARE * exp.slo * capacity))
        stack.prometheus.wait_for_scrapes(JOB, scrapes=2)
        for setup in setups:
            profile = with_constant if setup.name == "controller" else ramp
            record, drain_seconds[setup.name] = run_setup(exp, stack, setup, profile, capacities, guard)
            summary = summarise(setup.name, record, profile, capacity, exp.slo, exp.recall, top, setup.pinned)
            results[setup.name] = (record, profile, summary)
            met, total = summary["windows_meeting_slo"], summary["windows"]
            print(f"{setup.name}: {met}/{total} windows meet the SLO; "
                  f"overload {summary['overload_windows_meeting_slo']}/{summary['overload_windows']}; "
                  f"light-load recall {summary['light_load_recall_vs_widest']:+.2%} vs widest; "
                  f"errors {summary['errors']}", flush=True)
    finally:
        if stack.controller is not None:
            stack.controller.kill()
        stack.prometheus.stop()
        stack.server.stop()
    figures = figures_of(exp, setups, results, capacities, guard, ramp, drain_seconds, load_start, started_at)
    save_result(args.name, figures, plot=lambda: _plot(results, capacity, exp.slo, exp.recall))
    shutil.rmtree(exp.work, ignore_errors=True)


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number = duration.rstrip("smh")
    return float(number) * units[duration[len(number):]]


def _drain(url: str, limit: float) -> float:
    """Waits until the predictor has no request in flight (its own gauge); returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        values = [float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("genrec_inflight_requests ")]
        if values and values[0] <= 0:
            break
        time.sleep(1.0)
    return time.monotonic() - started


def _model_dir(config: GenrecConfig, prepared: Any) -> Path:
    """The cached model folder bench_quality trained (same key as train_cached)."""
    return bq.model_folder(prepared, config) / "model"


def _start_controller(work: Path, cfg: GenrecConfig, prometheus_url: str, replica: str,
                      capacities: list[float]) -> subprocess.Popen[bytes]:
    """`genrec controller` on the experiment's config, a fresh state file, this Prometheus and replica,
    with `capacities` as its feed-forward table (empty: reactive law only)."""
    state = work / "controller-state.json"
    state.unlink(missing_ok=True)
    port = free_port()
    controller = {**dataclasses.asdict(cfg.controller), "prometheus_url": prometheus_url,
                  "selector": f'job="{JOB}"', "replicas": [replica], "state_file": str(state),
                  "metrics_port": port, "rung_capacity_rps": [float(c) for c in capacities]}
    serving = {k: getattr(cfg.serving, k) for k in ("beam_ladder", "default_rung", "max_beam_width")}
    path = work / "controller.yaml"
    path.write_text(yaml.safe_dump({"serving": serving, "controller": controller}))
    log = (work / "controller.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "genrec.cli", "controller", "--config", str(path)],
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "GENREC_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # ready once it serves its metrics (imports done, loop up)
        if process.poll() is not None:
            raise RuntimeError(f"genrec controller exited: {(work / 'controller.log').read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200:
                return process
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("genrec controller did not serve its metrics within 120 s")


def _plot(results: dict[str, Any], capacity: float, slo: float, recall: list[float]) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    colours = {"fixed_widest": "tab:red", "fixed_narrowest": "tab:blue", "controller": "tab:green",
               "controller_without_guard": "tab:olive", "controller_reactive_only": "tab:purple"}
    for name, (record, profile, summary) in results.items():
        c = colours[name]
        seconds = len(summary["rung_per_second"])
        t = np.arange(seconds) + 0.5
        offered = [capacity * fraction_at(profile, x)[0] for x in t]
        if name == "controller":
            axes[0].plot(t, offered, color="black", lw=1.5, label="offered load")
        done = np.histogram(record.scheduled[np.isfinite(record.latency)], bins=np.arange(seconds + 1))[0]
        axes[0].plot(t, done, color=c, lw=0.8, alpha=0.8, label=f"{name} completed")
        wins = summary["window_detail"]
        axes[1].step([w["start_s"] for w in wins] + [wins[-1]["start_s"] + WINDOW_SECONDS],
                     [min(w["p99_s"], 30.0) for w in wins] + [min(wins[-1]["p99_s"], 30.0)],
                     where="post", color=c, label=name)
        axes[2].step(t, summary["rung_per_second"], where="mid", color=c, label=name)
        axes[3].step(t, [recall[r] for r in summary["rung_per_second"]], where="mid", color=c, label=name)
    axes[0].axhline(capacity, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("requests/s")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].axhline(slo, color="black", ls="--", lw=1, label="SLO")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("p99 per 10-s window (s)")
    axes[1].legend(fontsize=7)
    axes[2].set_ylabel("rung in force")
    axes[2].set_yticks(range(len(recall)))
    axes[3].set_ylabel("recall proxy (R@10 of rung)")
    axes[3].set_xlabel("seconds")
    fig.suptitle("Beam controller under a 20% -> 300% -> 20% load ramp (capacity = widest rung)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
