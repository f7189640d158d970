"""The split step: leave-one-out over a partitioned interactions artefact, into a partitioned splits
artefact with the same buckets, and the data set's profile for its report.

On Ray, a task per bucket splits it, writes it and profiles it (interactions per user and per item,
the value column's sum and the first digit of its quantile search); the exact 95th percentile of
value then takes a pass or two over the buckets' value column (`genrec.data.quantile`). In memory,
the same on one frame. Both write the same artefact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from genrec.config import GenrecConfig
from genrec.data.partitioned import (
    Partitioning,
    bucket_file,
    read_all,
    read_bucket,
    read_partitioning,
    write_bucket,
    write_partitioned,
    write_partitioning,
)
from genrec.data.quantile import ROOT, Pass, Prefix, digit_histogram, exact_quantile, gather, sortable_keys
from genrec.data.schema import SPLITS_ARROW
from genrec.data.split import leave_one_out
from genrec.data.stats import VALUE_QUANTILE, DatasetProfile
from genrec.distributed import RaySession
from genrec.io import atomic_path


@dataclass
class SplitOutcome:
    profile: DatasetProfile
    partitioning: Partitioning


def split_to_artefact(config: GenrecConfig, interactions_dir: str | Path,
                      splits_dir: str | Path) -> SplitOutcome:
    source = read_partitioning(interactions_dir)
    if config.data.engine == "pandas":
        frame = leave_one_out(read_all(interactions_dir))
        with atomic_path(splits_dir) as folder:
            folder.mkdir()
            partitioning = write_partitioned(frame, folder, source.buckets, SPLITS_ARROW)
        return SplitOutcome(DatasetProfile.of(frame), partitioning)
    with RaySession.open(config.ray) as session:
        with atomic_path(splits_dir) as folder:
            folder.mkdir()
            parts, location = session.parts_folder(folder)
            tasks = [SplitTask(str(interactions_dir), b, str(parts)) for b in range(source.buckets)]
            results = session.map(split_bucket, tasks, "split: leave-one-out per bucket")
            partitioning = Partitioning(source.buckets, [r.profile.rows for r in results], location=location)
            write_partitioning(folder, partitioning)
        count = sum(r.profile.value_count for r in results)
        root = np.sum([r.value_histogram for r in results], axis=0)
        search = bucket_value_pass(session, splits_dir, source.buckets)
        p95 = exact_quantile(count, VALUE_QUANTILE, search, root)
    return SplitOutcome(DatasetProfile.combine([r.profile for r in results], p95), partitioning)


@dataclass(frozen=True)
class SplitTask:
    interactions: str
    bucket: int
    output: str


@dataclass
class SplitResult:
    profile: DatasetProfile
    # The first digit's histogram of the value column's sortable keys (genrec.data.quantile).
    value_histogram: np.ndarray


def split_bucket(task: SplitTask) -> SplitResult:
    frame = leave_one_out(read_bucket(task.interactions, task.bucket))
    write_bucket(task.output, task.bucket, frame, SPLITS_ARROW)
    keys = sortable_keys(frame["value"].to_numpy(dtype="float64"))
    return SplitResult(DatasetProfile.of(frame, value_p95=float("nan")), digit_histogram(keys, ROOT))


@dataclass(frozen=True)
class ValuePassTask:
    artefact: str
    bucket: int
    kind: str
    prefixes: tuple[Prefix, ...]


def value_pass_bucket(task: ValuePassTask) -> list[np.ndarray]:
    part = bucket_file(task.artefact, task.bucket)
    keys = sortable_keys(pq.read_table(part, columns=["value"]).column("value").to_numpy())
    if task.kind == "histogram":
        return [digit_histogram(keys, prefix) for prefix in task.prefixes]
    return [gather(keys, prefix) for prefix in task.prefixes]


def bucket_value_pass(session: RaySession, artefact: str | Path, buckets: int) -> Pass:
    """A quantile search pass over the value column of every bucket of an artefact, on Ray."""

    def run(kind: str, prefixes: Sequence[Prefix]) -> list[np.ndarray]:
        tasks = [ValuePassTask(str(artefact), b, kind, tuple(prefixes)) for b in range(buckets)]
        per_bucket = session.map(value_pass_bucket, tasks, f"split: value quantile ({kind})")
        if kind == "histogram":
            return [np.sum([parts[i] for parts in per_bucket], axis=0) for i in range(len(prefixes))]
        return [np.concatenate([parts[i] for parts in per_bucket]) for i in range(len(prefixes))]

    return run
