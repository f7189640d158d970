"""The data path at scale: synthetic ad logs of 1M, 10M and 100M events through ingest + validate,
the split, the codebook's collaborative features, the VISTA snapshots and their materialisation into
Redis, on Ray (embedded, bounded by the recipe's `ray` section), with the in-memory pandas path side
by side at the sizes where it fits.

    python -m benchmarks.bench_scale                                  # 1M, 10M, 100M (hours)
    python -m benchmarks.bench_scale --events 1000000 --pandas-up-to 1000000   # a few minutes

Each step runs in its own process, as a pipeline step does. The Ray path's steps join one embedded
Ray started by this process before them, as a local pipeline run's steps do (or a cluster's, which is
up before the run); its start is recorded apart. This process samples the resident memory of its
whole process tree (itself, the step, Ray's GCS, raylet and workers, redis-server) every half second.
Figures (benchmarks/results/scale.json + scale.png):

- per size, engine and step: seconds and peak RSS of the tree (the sum of its processes' RSS, which
  counts pages shared between processes, such as Ray's object store, once per process that maps
  them, so it overstates; PSS, which shares them out, is recorded too);
- the criteria of issue 22: peak RSS at the largest size <= 8 GiB; each step's time(100M) /
  time(10M) <= 12; at 10M the Ray path at least as fast as pandas (the five steps together, and
  each); Redis materialisation >= 20,000 users/s.

The summariser is trained once, on a sample of the smallest log's users, and used at every size: the
benchmark measures the data path, not the model. Logs are generated once per size and seed into
--work and reused (generation is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import save_result
from benchmarks.scaling import GIB, TreeMemory, engine_context, shown_path, synth_log
from genrec.config import GenrecConfig, load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipes" / "scale.yaml"
STEPS = ("ingest", "split", "codebook", "snapshots", "materialise")
ENGINES = ("ray", "pandas")
# Issue 22's acceptance figures.
MAX_PEAK_RSS_GIB = 8.0
MAX_STEP_GROWTH = 12.0
MIN_REDIS_USERS_PER_SECOND = 20_000
# Users of the smallest log the summariser is trained on (a sample: the benchmark measures the data
# path, not the model).
SAMPLE_USERS = 5_000
# The materialise step's write into Redis, again (see repeat_online_write).
ONLINE_REPEATS = 2


# ------------------------------------------------------------------------------------------------
# One step, in its own process
# ------------------------------------------------------------------------------------------------


def run_step(step: str, config: GenrecConfig, folder: Path, summarizer: Path,
             online_repeats: int = 0) -> dict[str, Any]:
    """Runs one step on the artefacts under `folder`; returns its own figures (the parent times it)."""
    import pandas as pd

    if step == "ingest":
        from genrec.data.ingest_step import ingest_to_artefacts

        outcome = ingest_to_artefacts(config, folder / "interactions", folder / "catalogue.parquet",
                                      folder / "docs")
        return {"rows": outcome.interactions, "users": outcome.users, "items": outcome.items,
                "buckets": outcome.partitioning.buckets, "valid": outcome.validation.success}
    if step == "split":
        from genrec.data.split_step import split_to_artefact

        split = split_to_artefact(config, folder / "interactions", folder / "splits")
        return {"rows": split.partitioning.total_rows}
    if step == "codebook":
        from genrec.sid.codebook import codebook_order
        from genrec.sid.cooccurrence import cooccurrence_of_splits
        from genrec.sid.features import collaborative_features

        items = codebook_order(pd.read_parquet(folder / "catalogue.parquet"))["item_id"].to_numpy()
        started = time.perf_counter()
        counts = cooccurrence_of_splits(config, folder / "splits", items)
        counted = time.perf_counter() - started
        vectors = collaborative_features(None, items, config.sid, counts)
        return {"items": len(items), "pairs": int(counts.nnz), "count_seconds": counted,
                "svd_seconds": time.perf_counter() - started - counted,
                "dim": 0 if vectors is None else int(vectors.shape[1])}
    if step == "materialise":
        from genrec.features.materialize import materialize_from_splits

        for stale in (folder / "repo", folder / "latest"):
            shutil.rmtree(stale, ignore_errors=True)
        materialized = materialize_from_splits(config, folder / "splits", summarizer, folder / "repo",
                                          folder / "latest")
        figures = {key: materialized.metrics[key] for key in ("users", "rows", "snapshot_seconds")}
        started = time.perf_counter()
        repeats = repeat_online_write(config, folder, online_repeats)
        runs = [materialized.metrics["materialize_seconds"], *repeats]
        figures["online_repeats_wall_seconds"] = time.perf_counter() - started
        figures["materialize_seconds_runs"] = runs
        figures["materialize_seconds"] = statistics.median(runs)
        figures["materialize_users_per_second"] = figures["users"] / figures["materialize_seconds"]
        return figures
    raise SystemExit(f"unknown step {step!r}: one of {', '.join(STEPS)}")


def repeat_online_write(config: GenrecConfig, folder: Path, repeats: int) -> list[float]:
    """The materialise step's write into Redis, `repeats` more times, each into an emptied Redis as
    the step's own was, with the same function the step uses: at 10M events the write takes about
    3 s, short enough for a busy second to move its ratio to 100M by a tenth, so the figure is the
    median of the runs."""
    from genrec.data.partitioned import read_partitioning
    from genrec.distributed import RaySession
    from genrec.features.materialize import write_latest_online
    from genrec.features.repo import FeatureRepo
    from genrec.features.schema import USER_SUMMARY_VIEW

    if repeats < 1:
        return []
    repo, latest = FeatureRepo(folder / "repo"), folder / "latest"
    port = int(config.features.redis_connection_string.rsplit(":", 1)[1])
    seconds = []
    if config.data.engine == "ray":
        with RaySession.open(config.ray) as session:
            for _ in range(repeats):
                redis_client_flush(port)
                seconds.append(write_latest_online(session, repo, latest, read_partitioning(latest).buckets,
                                                   config.features).seconds)
    else:
        for _ in range(repeats):
            redis_client_flush(port)
            stats = repo.materialize((USER_SUMMARY_VIEW,), config.features.online_write_batch_rows)
            seconds.append(stats[0].seconds)
    return seconds


def timed_step(step: str, engine: str, config_path: Path, overrides: list[str], folder: Path,
               summarizer: Path, log: Path, online_repeats: int = 0) -> dict[str, Any]:
    """Runs `step` in a child process; its wall time, the peak memory of this process's whole tree
    (the step, the embedded Ray's processes, redis-server, this process) and the step's figures."""
    figures_path = folder / f"{step}.{engine}.json"
    figures_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--step", step, "--folder", str(folder),
               "--summarizer", str(summarizer), "--figures", str(figures_path), "--config", str(config_path),
               "--online-repeats", str(online_repeats),
               "--set", f"data.engine={engine}", *[a for o in overrides for a in ("--set", o)]]
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n== {step} ({engine}) in {folder}\n")
        out.flush()
        with TreeMemory(os.getpid()) as memory:
            child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            code = child.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{step} ({engine}) failed with exit {code}: see {log}")
    figures = json.loads(figures_path.read_text())
    print(f"  {step:<12} {engine:<6} {seconds:8.1f} s   peak RSS {memory.peak_rss / GIB:5.2f} GiB "
          f"(PSS {memory.peak_pss / GIB:5.2f})", flush=True)
    return {"seconds": seconds, "peak_rss_gib": memory.peak_rss / GIB, "peak_pss_gib": memory.peak_pss / GIB,
            "processes": memory.peak_processes, **figures}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def train_sample_summarizer(config: GenrecConfig, splits: Path, path: Path) -> Path:
    """The summariser every size uses, trained on the first SAMPLE_USERS users of bucket 0."""
    from genrec.data.partitioned import read_bucket
    from genrec.vista.train import train_summarizer

    if not path.is_file():
        bucket = read_bucket(splits, 0)
        users = bucket["user_id"].drop_duplicates().head(SAMPLE_USERS)
        train_summarizer(bucket[bucket["user_id"].isin(users)], config).summarizer.save(path)
    return path


def split_snapshot_time(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The materialise step's process builds the snapshots, then writes the newest into Redis: its
    time is cut into the two steps the issue names (the process's start, Ray's included, goes to
    the snapshots; the repeated writes go to neither). The materialise figure is the median of its
    writes."""
    first_write = result["materialize_seconds_runs"][0]
    repeats = result["online_repeats_wall_seconds"]
    snapshots = {**result, "seconds": result["seconds"] - first_write - repeats}
    materialise = {**result, "seconds": result["materialize_seconds"]}
    return snapshots, materialise


def criteria(sizes: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    events = sorted(sizes)
    largest = events[-1]
    ray = {n: sizes[n]["ray"] for n in events}
    out: dict[str, Any] = {
        "largest_events": largest,
        "peak_rss_gib_at_largest": max(s["peak_rss_gib"] for s in ray[largest].values()),
        "peak_pss_gib_at_largest": max(s["peak_pss_gib"] for s in ray[largest].values()),
    }
    out["peak_rss_within_8_gib"] = out["peak_rss_gib_at_largest"] <= MAX_PEAK_RSS_GIB
    if len(events) >= 2:
        previous = events[-2]
        growth = {step: ray[largest][step]["seconds"] / ray[previous][step]["seconds"] for step in STEPS}
        out["time_growth"] = {"from_events": previous, "to_events": largest, "per_step": growth,
                              "events_ratio": largest / previous}
        out["time_growth_within_12"] = all(g <= MAX_STEP_GROWTH for g in growth.values())
    compared = [n for n in events if "pandas" in sizes[n]]
    if compared:
        n = compared[-1]
        ray_total = sum(sizes[n]["ray"][s]["seconds"] for s in STEPS)
        pandas_total = sum(sizes[n]["pandas"][s]["seconds"] for s in STEPS)
        out["ray_against_pandas"] = {
            "events": n, "ray_seconds": ray_total, "pandas_seconds": pandas_total,
            "speedup": pandas_total / ray_total,
            "per_step_speedup": {step: sizes[n]["pandas"][step]["seconds"] / sizes[n]["ray"][step]["seconds"]
                                 for step in STEPS},
        }
        out["ray_at_least_as_fast"] = ray_total <= pandas_total
    redis = min(ray[n]["materialise"]["materialize_users_per_second"] for n in events)
    out["redis_users_per_second_min"] = redis
    out["redis_at_least_20k_users_per_second"] = redis >= MIN_REDIS_USERS_PER_SECOND
    return out


def plot(sizes: dict[int, dict[str, dict[str, Any]]]):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    events = sorted(sizes)
    for engine, style in (("ray", "-"), ("pandas", "--")):
        shown = [n for n in events if engine in sizes[n]]
        if not shown:
            continue
        for step in STEPS:
            time_axis.plot(shown, [sizes[n][engine][step]["seconds"] for n in shown], style, marker="o",
                           label=f"{step} ({engine})")
            memory_axis.plot(shown, [sizes[n][engine][step]["peak_rss_gib"] for n in shown], style,
                             marker="o", label=f"{step} ({engine})")
    for axis, label in ((time_axis, "seconds"), (memory_axis, "peak RSS of the process tree (GiB)")):
        axis.set_xscale("log")
        axis.set_xlabel("events")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    time_axis.set_yscale("log")
    memory_axis.axhline(MAX_PEAK_RSS_GIB, color="red", linewidth=0.8)
    memory_axis.legend(fontsize=7, ncol=2)
    fig.suptitle("genrec data path per step, 2-core machine")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--pandas-up-to", type=int, default=10_000_000,
                        help="run the in-memory path side by side up to this many events")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "genrec-scale"),
                        help="logs and artefacts (kept between runs; logs are reused)")
    parser.add_argument("--config", default=str(RECIPE))
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    parser.add_argument("--name", default="scale")
    parser.add_argument("--online-repeats", type=int, default=ONLINE_REPEATS,
                        help="the materialise step's write into Redis again this many times (its figure "
                             "is the median)")
    # The child's arguments (one step).
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--train-summarizer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rerun", choices=STEPS[:3],
                        help="run this one step again (Ray) on the artefacts kept in --folder (a copy of a "
                             "run's splits and catalogue), against the figures of --against")
    parser.add_argument("--against", default="benchmarks/results/scale.json",
                        help="the full run whose figures --rerun compares with")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--summarizer", help=argparse.SUPPRESS)
    parser.add_argument("--figures", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)

    if args.train_summarizer:
        train_sample_summarizer(config, Path(args.folder) / "splits", Path(args.summarizer))
        return
    if args.rerun:
        rerun(args, config)
        return
    if args.step:
        figures = run_step(args.step, config, Path(args.folder), Path(args.summarizer), args.online_repeats)
        Path(args.figures).write_text(json.dumps(figures))
        return

    from testbed.binaries import require_binary
    from testbed.redis import RedisServer, free_port

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "steps.log"
    config_path = Path(args.config).resolve()
    redis_port = free_port()
    redis = RedisServer(require_binary("redis-server"), work, redis_port)
    redis.start()
    overrides = [*args.set, "features.online_store=redis",
                 f"features.redis_connection_string=127.0.0.1:{redis_port}"]
    sizes: dict[int, dict[str, dict[str, Any]]] = {}
    logs: dict[int, dict[str, Any]] = {}
    ray_starts: dict[int, float] = {}
    summarizer = work / f"summarizer-{args.seed}.pt"
    try:
        for events in sorted(args.events):
            log_dir = synth_log(events, args.seed, work)
            logs[events] = json.loads((log_dir / "synth.json").read_text())
            sizes[events] = {}
            step_overrides = [*overrides, f"data.dataset={log_dir}"]
            # pandas first, with no Ray up: its tree is this process, the step and redis-server.
            engines = [e for e in ("pandas", "ray") if e == "ray" or events <= args.pandas_up_to]
            for engine in engines:
                print(f"{events:,} events, {engine}", flush=True)
                with engine_context(engine, load_config(config_path, step_overrides)) as ray_start:
                    results = run_engine(engine, events, args.seed, work, config_path, step_overrides,
                                         summarizer, redis_port, log, args.online_repeats)
                if ray_start is not None:
                    ray_starts[events] = ray_start[0]
                sizes[events][engine] = results
                # What is measured so far survives a failure of a later (and longer) run.
                (work / f"{args.name}.partial.json").write_text(json.dumps(
                    {"sizes": sizes, "ray_start_seconds": ray_starts, "logs": logs}, indent=1))
    finally:
        redis.stop()
    figures = {
        "events": sorted(sizes), "logs": logs, "steps": list(STEPS), "sizes": sizes,
        "criteria": criteria(sizes), "ray_start_seconds": ray_starts,
        "recipe": shown_path(Path(args.config)), "config_overrides": args.set,
    }
    save_result(args.name, figures, lambda: plot(sizes))


def run_engine(engine: str, events: int, seed: int, work: Path, config_path: Path, overrides: list[str],
               summarizer: Path, redis_port: int, log: Path, online_repeats: int) -> dict[str, Any]:
    folder = work / f"run-{events}-{seed}-{engine}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    redis_client_flush(redis_port)
    results: dict[str, Any] = {}
    for step in ("ingest", "split", "codebook"):
        results[step] = timed_step(step, engine, config_path, overrides, folder, summarizer, log)
        if step == "split" and not summarizer.is_file():
            # In a child too, so that this process (part of the measured tree) stays small.
            subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--train-summarizer",
                            "--folder", str(folder), "--summarizer", str(summarizer),
                            "--config", str(config_path), *[a for o in overrides for a in ("--set", o)]],
                           cwd=REPO, check=True)
    both = timed_step("materialise", engine, config_path, overrides, folder, summarizer, log, online_repeats)
    results["snapshots"], results["materialise"] = split_snapshot_time(both)
    shutil.rmtree(folder, ignore_errors=True)  # the next run needs the disk
    return results


def rerun(args: argparse.Namespace, config: GenrecConfig) -> None:
    """One step again, on kept artefacts, beside the figures of the full run it replaces."""
    folder, events = Path(args.folder), max(args.events)
    before = json.loads((REPO / args.against).read_text())["figures"]["sizes"][str(events)]["ray"][args.rerun]
    log = folder / "steps.log"
    with engine_context("ray", config):
        after = timed_step(args.rerun, "ray", Path(args.config).resolve(), args.set, folder,
                           folder / "unused-summarizer.pt", log)

    def chart():  # type: ignore[no-untyped-def]
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(8, 3.5))
        labels = [f"{args.against}", "this run"]
        time_axis.bar(labels, [before["seconds"], after["seconds"]])
        time_axis.set_ylabel("seconds")
        memory_axis.bar(labels, [before["peak_rss_gib"], after["peak_rss_gib"]])
        memory_axis.axhline(MAX_PEAK_RSS_GIB, color="red", linewidth=0.8)
        memory_axis.set_ylabel("peak RSS of the process tree (GiB)")
        fig.suptitle(f"{args.rerun} at {events:,} events, before and after")
        return fig

    save_result(args.name, {"events": events, "step": args.rerun, "before": before, "after": after,
                            "against": args.against, "recipe": shown_path(Path(args.config)),
                            "config_overrides": args.set}, chart)


def redis_client_flush(port: int) -> None:
    """Each run starts from an empty online store."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        client.flushall()
    finally:
        client.close()


if __name__ == "__main__":
    main()
