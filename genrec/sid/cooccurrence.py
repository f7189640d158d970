"""The collaborative part's co-occurrence counts from a partitioned splits artefact.

Item pairs at most `sid.collab_window` positions apart in a user's training sequence: a user's
rows sit in one bucket, so a bucket's counts are final for its users and the log's counts are their
sum. On Ray, a task per bucket counts its pairs into a sparse matrix over the catalogue (in
`codebook_order`); the driver adds them up. In memory, the whole splits frame at once. The counts are
integers, so the two sums are equal to the last bit (`tests/test_data_engines.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from genrec.config import GenrecConfig
from genrec.data.partitioned import read_all, read_bucket, read_partitioning
from genrec.distributed import RaySession
from genrec.sid.features import cooccurrence_counts, training_sequences

# The columns the counts read.
COLUMNS = ["user_id", "item_id", "timestamp", "split"]


def cooccurrence_of_splits(config: GenrecConfig, splits_dir: str | Path,
                           item_ids: np.ndarray) -> sp.csr_matrix:
    """Counts over `item_ids` (rows and columns in that order) of the training rows of `splits_dir`."""
    window = config.sid.collab_window
    if config.data.engine == "pandas":
        return cooccurrence_counts(training_sequences(read_all(splits_dir, COLUMNS)), item_ids, window)
    buckets = read_partitioning(splits_dir).buckets
    with RaySession.open(config.ray) as session, session.staging(splits_dir, "cooccurrence") as staging:
        ids_path = staging / "item_ids.parquet"
        pq.write_table(pa.table({"item_id": pa.array(item_ids.astype(str), pa.string())}), ids_path)
        tasks = [CountTask(str(splits_dir), b, str(ids_path), window) for b in range(buckets)]
        parts = (part for _, part in session.imap(count_bucket, tasks, "codebook: co-occurrence per bucket"))
        return sum_counts(parts, len(item_ids))


def sum_counts(parts: Iterable[sp.csr_matrix], size: int) -> sp.csr_matrix:
    """The sum of the buckets' counts, added pairwise like a binary counter: each entry is copied
    about log2(buckets) times, not once per bucket, and at most two large sums are alive at once.
    Integer counts add up exactly in any order."""
    stack: list[tuple[int, sp.csr_matrix]] = []
    for part in parts:
        level, matrix = 0, part.tocsr()
        while stack and stack[-1][0] == level:
            matrix = stack.pop()[1] + matrix
            level += 1
        stack.append((level, matrix))
    total = sp.csr_matrix((size, size))
    while stack:
        total = stack.pop()[1] + total
    return total.tocsr()


@dataclass(frozen=True)
class CountTask:
    splits: str
    bucket: int
    item_ids: str
    window: int


def count_bucket(task: CountTask) -> sp.csr_matrix:
    frame = read_bucket(task.splits, task.bucket, COLUMNS)
    return cooccurrence_counts(training_sequences(frame), _item_ids(task.item_ids), task.window)


@functools.lru_cache(maxsize=2)
def _item_ids(path: str) -> np.ndarray:
    return pq.read_table(path).column("item_id").to_numpy(zero_copy_only=False).astype(object)
