"""The artefacts between data steps: parquet cut into buckets of users by a stable hash of user_id.

A partitioned artefact is a folder:

    _partitioning.json     {"key": "user_id", "buckets": B, "rows": [...], "location": ...}
    part-00000.parquet     every row whose user hashes to bucket 0, in the artefact's row order
    ...
    part-{B-1}.parquet     (every bucket has a file, empty or not)

A user's rows all sit in one bucket, so every per-user rule (order in time, duplicates, rows per
user), the leave-one-out split and each user's snapshots are computed one bucket at a time, and a
Ray task holds one bucket in memory, never the log. The hash is pandas' SipHash of the id with a
fixed key (`pd.util.hash_array`), the same in every process and run.

A single parquet file reads as an artefact of one bucket, so that a table prepared elsewhere (or a
test's fixture) can be imported into a step as it is.

`location` is where the parts live when they are not in the folder itself: on a cluster, a folder
that every Ray worker and the step's pod mount at the same path (`ray.shared_dir`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PARTITIONING_FILE = "_partitioning.json"
PART_NAME = "part-{:05d}.parquet"
USER_KEY = "user_id"


class PartitionError(ValueError):
    """A partitioned artefact is missing, incomplete or not what a step expected."""


def bucket_count(rows: int, bucket_rows: int) -> int:
    """Buckets of about `bucket_rows` rows for a log of `rows` rows (at least one)."""
    return max(1, math.ceil(rows / bucket_rows))


def user_buckets(user_ids: np.ndarray | pd.Series, buckets: int) -> np.ndarray:
    """A stable bucket per user id (the same in every run and process); a null id goes to bucket 0,
    where validation reports it."""
    ids = np.asarray(user_ids, dtype=object)
    missing = pd.isna(ids)
    if missing.any():
        ids = np.where(missing, "", ids)
    hashed = pd.util.hash_array(ids, categorize=False)
    out = (hashed % np.uint64(buckets)).astype(np.int64)
    out[missing] = 0
    return out


@dataclass
class Partitioning:
    """What `_partitioning.json` records."""

    buckets: int
    rows: list[int] = field(default_factory=list)
    key: str = USER_KEY
    # Absolute folder of the parts when they are not beside this file (a shared volume).
    location: str = ""

    @property
    def total_rows(self) -> int:
        return int(sum(self.rows))


def is_partitioned(path: str | Path) -> bool:
    return (Path(path) / PARTITIONING_FILE).is_file()


def _is_single_file(path: Path) -> bool:
    return path.is_file() and path.suffix == ".parquet"


def read_partitioning(path: str | Path) -> Partitioning:
    folder = Path(path)
    if _is_single_file(folder):
        return Partitioning(buckets=1, rows=[pq.ParquetFile(folder).metadata.num_rows])
    marker = folder / PARTITIONING_FILE
    if not marker.is_file():
        raise PartitionError(f"{folder} is not a partitioned artefact: it has no {PARTITIONING_FILE} "
                             "(pass the folder a data step wrote, or one .parquet file)")
    try:
        raw = json.loads(marker.read_text())
        partitioning = Partitioning(**raw)
    except (ValueError, TypeError) as exc:
        raise PartitionError(f"{marker} is not a valid partitioning record: {exc}") from exc
    if partitioning.buckets < 1 or len(partitioning.rows) != partitioning.buckets:
        raise PartitionError(f"{marker}: {partitioning.buckets} buckets but {len(partitioning.rows)} row "
                             "counts; the artefact is incomplete, re-run the step that wrote it")
    return partitioning


def write_partitioning(path: str | Path, partitioning: Partitioning) -> None:
    (Path(path) / PARTITIONING_FILE).write_text(json.dumps(asdict(partitioning), indent=2))


def parts_folder(path: str | Path, partitioning: Partitioning | None = None) -> Path:
    partitioning = partitioning or read_partitioning(path)
    return Path(partitioning.location) if partitioning.location else Path(path)


def part_path(folder: str | Path, bucket: int) -> Path:
    return Path(folder) / PART_NAME.format(bucket)


def bucket_file(path: str | Path, bucket: int, partitioning: Partitioning | None = None) -> Path:
    """The parquet file that holds one bucket of an artefact."""
    if _is_single_file(Path(path)):
        return Path(path)
    return part_path(parts_folder(path, partitioning), bucket)


def read_bucket(path: str | Path, bucket: int, columns: list[str] | None = None,
                partitioning: Partitioning | None = None) -> pd.DataFrame:
    """One bucket of a partitioned artefact as a frame."""
    partitioning = partitioning or read_partitioning(path)
    if not 0 <= bucket < partitioning.buckets:
        raise PartitionError(f"{path} has buckets 0..{partitioning.buckets - 1}, not {bucket}")
    file = bucket_file(path, bucket, partitioning)
    if not file.is_file():
        raise PartitionError(f"{file} is missing: the artefact is incomplete, re-run the step that wrote it")
    return pq.read_table(file, columns=columns).to_pandas()


def iter_buckets(path: str | Path, columns: list[str] | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
    partitioning = read_partitioning(path)
    for bucket in range(partitioning.buckets):
        yield bucket, read_bucket(path, bucket, columns, partitioning)


def read_all(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every bucket, in bucket order, as one frame: for steps whose input fits in memory."""
    frames = [frame for _, frame in iter_buckets(path, columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def write_bucket(folder: str | Path, bucket: int, frame: pd.DataFrame, schema: pa.Schema | None) -> int:
    """Writes one bucket's part (an empty frame writes an empty part); returns its rows."""
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, part_path(folder, bucket))
    return table.num_rows


def write_partitioned(frame: pd.DataFrame, folder: str | Path, buckets: int,
                      schema: pa.Schema | None = None, key: str = USER_KEY) -> Partitioning:
    """Cuts an in-memory frame into buckets by `key` (rows keep their order within each bucket) and
    writes them into `folder`, which must exist: what the in-memory engine writes, the same as the
    Ray engine's bucket tasks write."""
    target = Path(folder)
    bucket_of_row = user_buckets(frame[key].to_numpy(), buckets)
    order = np.argsort(bucket_of_row, kind="stable")
    bounds = np.searchsorted(bucket_of_row[order], np.arange(buckets + 1))
    rows = []
    for bucket in range(buckets):
        rows.append(write_bucket(target, bucket, frame.iloc[order[bounds[bucket]:bounds[bucket + 1]]],
                                 schema))
    partitioning = Partitioning(buckets=buckets, rows=rows, key=key)
    write_partitioning(target, partitioning)
    return partitioning
