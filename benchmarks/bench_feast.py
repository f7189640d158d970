"""Feast with Beauty users' summaries: online read latency of one user's summary, and materialisation.

Runs the real steps on Amazon Beauty (22,363 users): ingest, leave-one-out split, summariser training
(one epoch by default: the values do not change what storage costs), every snapshot, a run feature
repo, then measures
- materialisation rate (users/s) of genrec's path (newest row per user -> write_to_online_store)
  beside Feast's own `materialize` (dask) on the same repo;
- online read of ONE user's summary: p50/p99 of `get_online_features` alone, and of
  `online_summaries` (the same read plus decoding to a K x d array), on sqlite, and on Redis when
  redis-server is installed;
- the point-in-time join of every user's test target, through Feast (`historical_summaries`) and in
  pandas (`point_in_time_summaries`);
- the same summaries as an Array(Float32) view, to check the Bytes + shape choice, and a synthetic
  sweep of that comparison over summary sizes.
Targets: online p99 <= 10 ms on sqlite; materialisation >= 5,000 users/s.

    python -m benchmarks.bench_feast [--epochs 1] [--reads 2000] [--shared-data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import save_result
from genrec.config import GenrecConfig
from genrec.data.ingest import ingest
from genrec.data.split import leave_one_out
from genrec.features import (
    FeatureRepo,
    example_times,
    historical_summaries,
    materialize_user_summaries,
    point_in_time_summaries,
)
from genrec.features.read import online_summaries
from genrec.features.repo import quiet_feast, template_dir
from genrec.features.schema import USER_SUMMARY_FEATURES, USER_SUMMARY_VIEW
from genrec.vista.data import time_ordered
from genrec.vista.train import train_summarizer

WARMUP_READS = 50
# Summary sizes (floats) for the Bytes vs Array(Float32) sweep: K x d = 4x64, 16x128, 32x256.
SWEEP_SIZES = (256, 2048, 8192)
SWEEP_USERS = 2000
REDIS_STARTUP_SECONDS = 10.0


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "reads": len(ms)}


def read_latencies(repo: FeatureRepo, users: list[str]) -> dict[str, dict[str, float]]:
    store = repo.store
    raw, decoded = [], []
    with quiet_feast():
        for user in users[:WARMUP_READS]:
            online_summaries(store, [user])
        for user in users:
            start = time.perf_counter()
            store.get_online_features(features=USER_SUMMARY_FEATURES,
                                      entity_rows=[{"user_id": user}]).to_dict()
            raw.append(time.perf_counter() - start)
            start = time.perf_counter()
            summary = online_summaries(store, [user])[user]
            decoded.append(time.perf_counter() - start)
            assert summary is not None
    return {"get_online_features": percentiles(raw), "online_summaries_with_decode": percentiles(decoded)}


def feast_materialize_seconds(repo: FeatureRepo) -> float:
    """Feast's own materialisation of the same view over the whole time range (dask path)."""
    frame = pd.read_parquet(repo.offline_path(USER_SUMMARY_VIEW), columns=["event_timestamp"])
    start_date = frame["event_timestamp"].min().to_pydatetime()
    end_date = (frame["event_timestamp"].max() + pd.Timedelta(1, "s")).to_pydatetime()
    start = time.perf_counter()
    with quiet_feast():
        repo.store.materialize(start_date=start_date, end_date=end_date, feature_views=[USER_SUMMARY_VIEW])
    return time.perf_counter() - start


def float_array_comparison(repo: FeatureRepo, latest: pd.DataFrame, users: list[str]) -> dict[str, Any]:
    """The design choice checked: the same summaries as Array(Float32) in a second view. Both views
    are read alternately in one loop (so machine noise falls on both alike), each up to a K x d
    float32 array the model can use."""
    from feast import FeatureView, Field, FileSource
    from feast.types import Array, Float32

    floats = pd.DataFrame({
        "user_id": latest["user_id"].to_numpy(), "event_timestamp": latest["event_timestamp"].to_numpy(),
        "summary_floats": [np.frombuffer(b, dtype=np.float32) for b in latest["summary"]],
    })
    shape = tuple(latest["summary_shape"].iloc[0])
    path = repo.path / "data" / "user_summary_floats.parquet"
    floats.to_parquet(path)
    user = next(o for o in repo.definitions() if getattr(o, "name", "") == "user")
    view = FeatureView(name="user_summary_floats", entities=[user], ttl=pd.Timedelta(0).to_pytimedelta(),
                       schema=[Field(name="summary_floats", dtype=Array(Float32))],
                       source=FileSource(name="user_summary_floats_source", path=str(path),
                                         timestamp_field="event_timestamp"))
    store = repo.store

    def read_floats(user_id: str) -> np.ndarray:
        response = store.get_online_features(features=["user_summary_floats:summary_floats"],
                                             entity_rows=[{"user_id": user_id}]).to_dict()
        return np.asarray(response["summary_floats"][0], dtype=np.float32).reshape(shape)

    with quiet_feast():
        store.apply([view])
        start = time.perf_counter()
        store.write_to_online_store("user_summary_floats", floats)
        write_seconds = time.perf_counter() - start
        for user_id in users[:WARMUP_READS]:
            read_floats(user_id)
            online_summaries(store, [user_id])
        as_bytes, as_floats = [], []
        for user_id in users:
            start = time.perf_counter()
            online_summaries(store, [user_id])
            as_bytes.append(time.perf_counter() - start)
            start = time.perf_counter()
            read_floats(user_id)
            as_floats.append(time.perf_counter() - start)
    bytes_stats, float_stats = percentiles(as_bytes), percentiles(as_floats)
    return {"write_users_per_second": len(floats) / write_seconds, "bytes_read_with_decode": bytes_stats,
            "float32_array_read_with_decode": float_stats,
            "float32_over_bytes_p50": float_stats["p50_ms"] / bytes_stats["p50_ms"]}


def bytes_vs_float32_sweep(workdir: Path, sizes: tuple[int, ...], users: int,
                           reads: int) -> list[dict[str, Any]]:
    """Synthetic summaries of growing size stored both ways in one sqlite store; reads alternate
    between the two views, each decoded to a float32 array."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Bytes, Float32, Int64

    rng = np.random.default_rng(0)
    ids = [f"u{i}" for i in range(users)]
    rows = []
    for size in sizes:
        root = workdir / f"sweep_{size}"
        (root / "data").mkdir(parents=True)
        shutil.copy(template_dir(GenrecConfig().features) / "feature_store.yaml", root)
        arrays = [rng.standard_normal(size).astype(np.float32) for _ in ids]
        frame = pd.DataFrame({"user_id": ids, "event_timestamp": pd.Timestamp("2020-01-01", tz="UTC"),
                              "data": [a.tobytes() for a in arrays], "shape": [[size]] * users,
                              "floats": arrays})
        frame.to_parquet(root / "data" / "sweep.parquet")
        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
        source = FileSource(name="sweep", path="data/sweep.parquet", timestamp_field="event_timestamp")
        as_bytes = FeatureView(name="as_bytes", entities=[user], ttl=pd.Timedelta(0).to_pytimedelta(),
                               schema=[Field(name="data", dtype=Bytes),
                                       Field(name="shape", dtype=Array(Int64))], source=source)
        as_floats = FeatureView(name="as_floats", entities=[user], ttl=pd.Timedelta(0).to_pytimedelta(),
                                schema=[Field(name="floats", dtype=Array(Float32))], source=source)
        with quiet_feast():
            store = FeatureStore(repo_path=str(root))
            store.apply([user, source, as_bytes, as_floats])
            start = time.perf_counter()
            store.write_to_online_store("as_bytes", frame[["user_id", "event_timestamp", "data", "shape"]])
            bytes_write = time.perf_counter() - start
            start = time.perf_counter()
            store.write_to_online_store("as_floats", frame[["user_id", "event_timestamp", "floats"]])
            floats_write = time.perf_counter() - start
            bytes_reads, float_reads = [], []
            for read in range(WARMUP_READS + reads):
                entity = [{"user_id": ids[read % users]}]
                start = time.perf_counter()
                got = store.get_online_features(features=["as_bytes:data", "as_bytes:shape"],
                                                entity_rows=entity).to_dict()
                np.frombuffer(got["data"][0], dtype=np.float32).reshape(got["shape"][0])
                bytes_reads.append(time.perf_counter() - start)
                start = time.perf_counter()
                got = store.get_online_features(features=["as_floats:floats"], entity_rows=entity).to_dict()
                np.asarray(got["floats"][0], dtype=np.float32)
                float_reads.append(time.perf_counter() - start)
        bytes_stats = percentiles(bytes_reads[WARMUP_READS:])
        float_stats = percentiles(float_reads[WARMUP_READS:])
        rows.append({"floats": size, "bytes_read": bytes_stats, "float32_read": float_stats,
                     "float32_over_bytes_read_p50": float_stats["p50_ms"] / bytes_stats["p50_ms"],
                     "bytes_write_rows_per_second": users / bytes_write,
                     "float32_write_rows_per_second": users / floats_write,
                     "bytes_over_float32_write_rate": floats_write / bytes_write})
        print(rows[-1], flush=True)
    return rows


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + REDIS_STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            redis.Redis(host="127.0.0.1", port=port).ping()
            return server, port
        except redis.ConnectionError:
            time.sleep(0.05)
    server.terminate()
    return None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--reads", type=int, default=2000, help="single-user online reads to time")
    parser.add_argument("--shared-data", default="../shared/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)

    cfg = GenrecConfig()
    cfg.data.dataset = "amazon-beauty"
    cfg.data.shared_data_dir = args.shared_data
    cfg.vista.epochs = args.epochs
    work = Path(tempfile.mkdtemp(prefix="bench-feast-"))
    try:
        splits = leave_one_out(ingest(cfg).interactions)
        start = time.perf_counter()
        trained = train_summarizer(splits, cfg)
        train_seconds = time.perf_counter() - start
        trained.summarizer.save(work / "summarizer.pt")
        result = materialize_user_summaries(cfg, splits, work / "summarizer.pt", work / "repo")
        metrics = result.metrics()
        rng = np.random.default_rng(args.seed)
        users = rng.choice(result.snapshots["user_id"].unique(), size=args.reads).tolist()
        sqlite = read_latencies(result.repo, users)
        feast_seconds = feast_materialize_seconds(result.repo)

        ordered = time_ordered(splits)
        ordered["event_timestamp"] = example_times(ordered)
        test_rows = ordered[ordered["split"] == "test"][["user_id", "event_timestamp"]]
        start = time.perf_counter()
        joined = historical_summaries(result.repo, test_rows)
        historical_seconds = time.perf_counter() - start
        start = time.perf_counter()
        local = point_in_time_summaries(result.repo, test_rows)
        local_seconds = time.perf_counter() - start
        assert local["n_items"].equals(joined["n_items"])
        float_arrays = float_array_comparison(result.repo, result.latest, users)
        sweep = bytes_vs_float32_sweep(work, SWEEP_SIZES, SWEEP_USERS, args.reads)

        redis_figures: dict[str, Any] = {"skipped": "redis-server not installed or --no-redis"}
        server = None if args.no_redis else start_redis(work)
        if server is not None:
            process, port = server
            try:
                cfg.features.online_store = "redis"
                cfg.features.redis_connection_string = f"127.0.0.1:{port}"
                on_redis = materialize_user_summaries(cfg, splits, work / "summarizer.pt",
                                                      work / "redis_repo")
                rate = on_redis.metrics()["materialize_users_per_second"]
                redis_figures = {"materialize_users_per_second": rate, **read_latencies(on_redis.repo, users)}
            finally:
                process.terminate()
                process.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "dataset": "amazon-beauty",
        "users": metrics["users"], "snapshot_rows": metrics["rows"],
        "rows_per_user": metrics["rows_per_user"],
        "schedule": result.schedule.describe(),
        "summary_bytes": int(len(result.snapshots["summary"].iloc[0])),
        "summariser_epochs": args.epochs, "summariser_train_seconds": train_seconds,
        "snapshot_seconds": metrics["snapshot_seconds"],
        "materialize_users_per_second": metrics["materialize_users_per_second"],
        "materialize_seconds": metrics["materialize_seconds"],
        "feast_materialize_users_per_second": metrics["users"] / feast_seconds,
        "feast_materialize_seconds": feast_seconds,
        "sqlite_online_read": sqlite,
        "redis_online_read": redis_figures,
        "historical_rows": len(test_rows), "historical_seconds": historical_seconds,
        "historical_rows_with_summary": int(joined["summary"].notna().sum()),
        "point_in_time_summaries_seconds": local_seconds,
        "array_float32_view": float_arrays,
        "bytes_vs_float32_sweep": sweep,
        "targets": {"sqlite_p99_ms": 10.0, "materialize_users_per_second": 5000.0},
        "note": "one run on a shared 2-core machine (another benchmark may have been running)",
        "date_utc": datetime.utcnow().isoformat(timespec="seconds"),
    }

    def plot():  # type: ignore[no-untyped-def]
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.4))
        axis = fig.add_subplot(1, 1, 1)
        names = ["sqlite get_online_features", "sqlite + decode"]
        stats = [sqlite["get_online_features"], sqlite["online_summaries_with_decode"]]
        if "p50_ms" in redis_figures.get("get_online_features", {}):
            names += ["redis get_online_features", "redis + decode"]
            stats += [redis_figures["get_online_features"], redis_figures["online_summaries_with_decode"]]
        x = np.arange(len(names))
        axis.bar(x - 0.2, [s["p50_ms"] for s in stats], width=0.4, label="p50")
        axis.bar(x + 0.2, [s["p99_ms"] for s in stats], width=0.4, label="p99")
        axis.axhline(10.0, color="grey", linestyle="--", linewidth=1, label="p99 target")
        axis.set_xticks(x, names, rotation=15, fontsize=8)
        axis.set_ylabel("ms per single-user read")
        axis.legend(fontsize=8)
        return fig

    save_result("feast_beauty", figures, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
