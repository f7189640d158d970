"""The pipeline step behind `materialize_summaries`: snapshots -> offline parquet -> online store,
all inside a new self-contained feature repo folder.

`materialize_user_summaries` does it for a log in memory. `materialize_from_splits` does it for a
partitioned splits artefact with `data.engine`: in memory, or on Ray, where a task per user bucket
runs the summariser over its users (batch inference), writes their snapshots and history into the
repo's partitioned offline tables and their newest snapshot into the `latest` artefact, and loads the
newest snapshots into the online store: from the tasks in parallel for Redis, one bucket at a time
for sqlite (a single file). Both engines write the same repo and the same online state.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from genrec.config import FeatureStoreConfig, GenrecConfig
from genrec.data.partitioned import (
    Partitioning,
    part_path,
    read_all,
    read_bucket,
    read_partitioning,
    write_bucket,
    write_partitioned,
    write_partitioning,
)
from genrec.data.schema import SPLIT_COLUMN
from genrec.distributed import RaySession
from genrec.features.repo import HISTORY_COLUMNS, HISTORY_FILE, FeatureRepo, MaterializeStats
from genrec.features.schema import ITEM_SID_VIEW, USER_SUMMARY_VIEW
from genrec.io import atomic_path
from genrec.progress import LineProgress
from genrec.vista.snapshot import (
    EVENT_TIMESTAMP,
    SNAPSHOT_SCHEMA,
    RefreshSchedule,
    SnapshotBuilder,
    latest_snapshots,
    looks_order_only,
)
from genrec.vista.train import TrainedSummarizer


@dataclass
class SummaryMaterialization:
    repo: FeatureRepo
    schedule: RefreshSchedule
    snapshots: pd.DataFrame
    snapshot_seconds: float
    online: list[MaterializeStats]

    @property
    def latest(self) -> pd.DataFrame:
        return latest_snapshots(self.snapshots)

    def metrics(self) -> dict[str, Any]:
        users = self.snapshots["user_id"].nunique()
        return summary_metrics(users, len(self.snapshots), self.snapshot_seconds, self.online)


def summary_metrics(users: int, rows: int, snapshot_seconds: float,
                    online: list[MaterializeStats]) -> dict[str, Any]:
    by_view = {s.view: s for s in online}
    summaries = by_view[USER_SUMMARY_VIEW]
    return {
        "users": users,
        "rows": rows,
        "rows_per_user": rows / max(users, 1),
        "snapshot_seconds": snapshot_seconds,
        "materialize_seconds": summaries.seconds,
        "materialize_users_per_second": summaries.entities_per_second,
        "item_sids": by_view[ITEM_SID_VIEW].entities if ITEM_SID_VIEW in by_view else 0,
    }


def snapshot_rows(interactions: pd.DataFrame, config: GenrecConfig) -> pd.DataFrame:
    """The interactions snapshots may include (`vista.snapshot_splits`; all rows when unsplit)."""
    if SPLIT_COLUMN not in interactions.columns:
        return interactions
    return interactions[interactions[SPLIT_COLUMN].isin(config.vista.snapshot_splits)]


def materialize_user_summaries(config: GenrecConfig, interactions: pd.DataFrame, summarizer_path: str | Path,
                               repo_dir: str | Path, item_sids: pd.DataFrame | None = None,
                               buckets: int = 1) -> SummaryMaterialization:
    """Builds every snapshot with the trained summariser, creates the feature repo at `repo_dir`,
    writes the offline parquet (summaries, item SIDs when given, the included interactions and a copy
    of the model; the partitioned ones in `buckets` user buckets), registers the definitions and loads
    the newest rows into the online store."""
    summarizer = TrainedSummarizer.load(summarizer_path)
    rows = snapshot_rows(interactions, config)
    schedule = RefreshSchedule.resolve(config.vista, rows, config.data.order_only_epoch)
    start = time.perf_counter()
    snapshots = SnapshotBuilder(summarizer, schedule, config.vista.snapshot_batch_users,
                                config.vista.threads).build(rows)
    snapshot_seconds = time.perf_counter() - start

    repo = FeatureRepo.create(repo_dir, config.features)
    repo.write_user_summaries(snapshots, buckets)
    repo.write_item_sids(item_sids, config.features.static_timestamp)
    repo.write_history(rows, buckets)
    repo.save_model(summarizer_path)
    repo.apply()
    views = (USER_SUMMARY_VIEW, ITEM_SID_VIEW) if item_sids is not None else (USER_SUMMARY_VIEW,)
    online = repo.materialize(views, config.features.online_write_batch_rows)
    result = SummaryMaterialization(repo, schedule, snapshots, snapshot_seconds, online)
    repo.update_manifest(schedule=schedule.describe(), snapshot_splits=list(config.vista.snapshot_splits),
                         summary_shape=[config.vista.summary_tokens, config.vista.dim],
                         dataset=config.data.dataset, **result.metrics())
    return result


@dataclass
class MaterializeOutcome:
    """What `materialize_from_splits` wrote."""

    repo: FeatureRepo
    schedule: RefreshSchedule
    metrics: dict[str, Any]
    latest: Partitioning


def materialize_from_splits(config: GenrecConfig, splits_dir: str | Path, summarizer_path: str | Path,
                            repo_dir: str | Path, latest_dir: str | Path,
                            item_sids: pd.DataFrame | None = None) -> MaterializeOutcome:
    """The step: the repo at `repo_dir`, each user's newest snapshot as a partitioned artefact at
    `latest_dir`, with `data.engine`."""
    buckets = read_partitioning(splits_dir).buckets
    if config.data.engine == "pandas":
        result = materialize_user_summaries(config, read_all(splits_dir), summarizer_path, repo_dir,
                                            item_sids, buckets)
        with atomic_path(latest_dir) as folder:
            folder.mkdir()
            latest = write_partitioned(result.latest, folder, buckets, SNAPSHOT_SCHEMA)
        return MaterializeOutcome(result.repo, result.schedule, result.metrics(), latest)
    return _materialize_on_ray(config, splits_dir, buckets, summarizer_path, repo_dir, latest_dir, item_sids)


# --- on Ray ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketSpec:
    splits: str
    bucket: int
    snapshot_splits: tuple[str, ...]


@dataclass(frozen=True)
class SnapshotTask:
    source: BucketSpec
    summarizer: str
    schedule: RefreshSchedule
    batch_users: int
    threads: int
    summaries: str
    history: str
    latest: str


@dataclass
class SnapshotResult:
    rows: int
    users: int
    history_rows: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    snapshot_seconds: float


def _bucket_rows(spec: BucketSpec) -> pd.DataFrame:
    frame = read_bucket(spec.splits, spec.bucket)
    if SPLIT_COLUMN in frame.columns:
        frame = frame[frame[SPLIT_COLUMN].isin(spec.snapshot_splits)]
    return frame


def bucket_looks_order_only(task: tuple[BucketSpec, str]) -> bool | None:
    """None for a bucket with no rows (it has no say)."""
    spec, epoch = task
    rows = _bucket_rows(spec)
    return looks_order_only(rows, epoch) if len(rows) else None


def snapshot_bucket(task: SnapshotTask) -> SnapshotResult:
    rows = _bucket_rows(task.source)
    started = time.perf_counter()
    builder = SnapshotBuilder(_summarizer(task.summarizer), task.schedule, task.batch_users, task.threads)
    snapshots = builder.build(rows)
    snapshot_seconds = time.perf_counter() - started
    bucket = task.source.bucket
    write_bucket(task.summaries, bucket, snapshots, SNAPSHOT_SCHEMA)
    write_bucket(task.history, bucket, rows[HISTORY_COLUMNS], None)
    latest = latest_snapshots(snapshots)
    write_bucket(task.latest, bucket, latest, SNAPSHOT_SCHEMA)
    times = snapshots[EVENT_TIMESTAMP]
    return SnapshotResult(len(snapshots), len(latest), len(rows), times.min() if len(times) else None,
                          times.max() if len(times) else None, snapshot_seconds)


@dataclass(frozen=True)
class OnlineTask:
    repo: str
    latest: str
    bucket: int
    batch_rows: int


def write_online_bucket(task: OnlineTask) -> int:
    """Writes one bucket's newest snapshots into the repo's online store; returns its users."""
    latest = pq.read_table(part_path(task.latest, task.bucket)).to_pandas()
    return _repo(task.repo).write_online_summaries(latest, task.batch_rows)


def write_latest_online(session: RaySession, repo: FeatureRepo, latest_dir: str | Path, buckets: int,
                        store: FeatureStoreConfig) -> MaterializeStats:
    """Writes every bucket of the newest snapshots at `latest_dir` into the repo's online store: as
    parallel Ray tasks into Redis, which takes many writers; one bucket at a time from this process
    into sqlite, which is one file."""
    online_tasks = [OnlineTask(str(repo.path), str(latest_dir), b, store.online_write_batch_rows)
                    for b in range(buckets)]
    started = time.perf_counter()
    what = f"materialise: newest snapshots into {store.online_store}"
    if store.online_store == "redis":
        users = sum(session.map(write_online_bucket, online_tasks, what))
    else:
        progress = LineProgress(what)
        users = 0
        for done, task in enumerate(online_tasks, start=1):
            users += write_online_bucket(task)
            progress(done, len(online_tasks))
    return MaterializeStats(USER_SUMMARY_VIEW, users, time.perf_counter() - started)


# A worker runs many bucket tasks: the model and the store are loaded once per worker.
@functools.lru_cache(maxsize=1)
def _summarizer(path: str) -> TrainedSummarizer:
    return TrainedSummarizer.load(path)


@functools.lru_cache(maxsize=1)
def _repo(path: str) -> FeatureRepo:
    return FeatureRepo(path)


@dataclass
class _Totals:
    results: list[SnapshotResult] = field(default_factory=list)

    def sum(self, name: str) -> Any:
        return sum(getattr(r, name) for r in self.results)

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        firsts = [r.first for r in self.results if r.first is not None]
        lasts = [r.last for r in self.results if r.last is not None]
        return (min(firsts), max(lasts)) if firsts else None


def _materialize_on_ray(config: GenrecConfig, splits_dir: str | Path, buckets: int,
                        summarizer_path: str | Path, repo_dir: str | Path, latest_dir: str | Path,
                        item_sids: pd.DataFrame | None) -> MaterializeOutcome:
    vista, store = config.vista, config.features
    specs = [BucketSpec(str(splits_dir), b, tuple(vista.snapshot_splits)) for b in range(buckets)]
    repo = FeatureRepo.create(repo_dir, store, "ray", config.ray)
    repo.write_item_sids(item_sids, store.static_timestamp)
    repo.save_model(summarizer_path)
    summaries_dir, history_dir = repo.offline_path(USER_SUMMARY_VIEW), repo.path / HISTORY_FILE
    with RaySession.open(config.ray) as session:
        repo.apply()
        order_only = None
        if vista.refresh == "auto":
            votes = session.map(bucket_looks_order_only, [(s, config.data.order_only_epoch) for s in specs],
                                "materialise: refresh schedule")
            present = [v for v in votes if v is not None]
            order_only = bool(present) and all(present)
        schedule = RefreshSchedule.resolve(vista, None, config.data.order_only_epoch, order_only)
        with atomic_path(latest_dir) as latest_folder:
            latest_folder.mkdir()
            for folder in (summaries_dir, history_dir):
                _empty(folder)
            model = str(Path(summarizer_path).resolve())
            tasks = [SnapshotTask(spec, model, schedule, vista.snapshot_batch_users, vista.threads,
                                  str(summaries_dir), str(history_dir), str(latest_folder)) for spec in specs]
            totals = _Totals(session.map(snapshot_bucket, tasks, "snapshots: summarise user buckets"))
            latest = Partitioning(buckets, [r.users for r in totals.results])
            write_partitioning(latest_folder, latest)
            write_partitioning(summaries_dir, Partitioning(buckets, [r.rows for r in totals.results]))
            write_partitioning(history_dir, Partitioning(buckets, [r.history_rows for r in totals.results]))
            online = [write_latest_online(session, repo, latest_folder, buckets, store)]
        span = totals.span()
        if span is not None:
            repo._record_materialization(USER_SUMMARY_VIEW, *span)
        if item_sids is not None:
            online += repo.materialize((ITEM_SID_VIEW,), store.online_write_batch_rows)
    metrics = summary_metrics(online[0].entities, int(totals.sum("rows")), totals.sum("snapshot_seconds"),
                              online)
    repo.update_manifest(schedule=schedule.describe(), snapshot_splits=list(vista.snapshot_splits),
                         summary_shape=[vista.summary_tokens, vista.dim], dataset=config.data.dataset,
                         **metrics)
    return MaterializeOutcome(repo, schedule, metrics, latest)


def _empty(folder: Path) -> None:
    """A partitioned table's folder with no parts yet (the bucket tasks write them)."""
    for path in folder.glob("*"):
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)

