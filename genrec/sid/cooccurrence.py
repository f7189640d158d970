"""The collaborative part's co-occurrence counts from a partitioned splits artefact.

Item pairs at most `sid.collab_window` positions apart in a user's training sequence: a user's
rows sit in one bucket, so a bucket's counts are final for its users and the log's counts are their
sum. In memory, the whole splits frame is counted at once. On Ray, the sum is a shuffle, so that no
process adds up the whole matrix and each entry is added once:

1. a task per bucket counts its pairs into a sparse matrix over the catalogue (in `codebook_order`)
   and writes it to the staging folder as CSR arrays, with its entries per chunk of rows;
2. the driver cuts the rows into blocks of about `REDUCE_BLOCK_ENTRIES` bucket entries each (popular
   items have long rows, so the blocks are cut by entries, not by rows);
3. a task per row block reads that block's rows of every bucket (memory-mapped slices) and sums them;
4. the driver lays the row blocks end to end into the result.

The counts are integers, so every order of summation gives the same matrix to the last bit
(`tests/test_data_engines.py` holds the Ray path equal to the in-memory one,
`tests/test_cooccurrence.py` the shuffle equal to the plain sum).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
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
# Bucket entries one reduce task sums at most (one row excepted, which may exceed it alone): about
# 16 bytes each while summed, so a task holds a few hundred MB whatever the log's size.
REDUCE_BLOCK_ENTRIES = 8_000_000
# Rows per chunk of a bucket's entry histogram, the grain at which row blocks are cut.
HISTOGRAM_ROWS = 1024
# A bucket's counts (integers of one bucket's pairs) fit 32 bits; the sum is float64 for the PPMI.
BUCKET_COUNT_TYPE = np.int32
CSR_FILES = ("indptr", "indices", "data")


def cooccurrence_of_splits(config: GenrecConfig, splits_dir: str | Path,
                           item_ids: np.ndarray) -> sp.csr_matrix:
    """Counts over `item_ids` (rows and columns in that order) of the training rows of `splits_dir`."""
    window = config.sid.collab_window
    if config.data.engine == "pandas":
        return cooccurrence_counts(training_sequences(read_all(splits_dir, COLUMNS)), item_ids, window)
    buckets = read_partitioning(splits_dir).buckets
    size = len(item_ids)
    with RaySession.open(config.ray) as session, session.staging(splits_dir, "cooccurrence") as staging:
        ids_path = staging / "item_ids.parquet"
        pq.write_table(pa.table({"item_id": pa.array(item_ids.astype(str), pa.string())}), ids_path)
        counted = session.map(count_bucket, [
            CountTask(str(splits_dir), b, str(ids_path), window, str(staging / "buckets" / f"{b:05d}"))
            for b in range(buckets)], "codebook: co-occurrence per bucket")
        parts = [c.folder for c in counted if c.entries]
        histogram = np.sum([c.histogram for c in counted], axis=0) if counted else np.zeros(0, np.int64)
        edges = row_block_edges(histogram, size)
        blocks = session.map(sum_row_block, [
            RowBlockTask(parts, first, last, size, str(staging / "rows" / f"{k:05d}"))
            for k, (first, last) in enumerate(zip(edges[:-1], edges[1:], strict=True))],
            "codebook: co-occurrence per row block")
        return assemble_row_blocks([b.folder for b in blocks], [b.entries for b in blocks], size)


def row_block_edges(histogram: np.ndarray, size: int) -> list[int]:
    """Row boundaries [0, ..., size] cutting `histogram` (entries per chunk of HISTOGRAM_ROWS rows)
    into blocks of at most REDUCE_BLOCK_ENTRIES entries, or of one chunk where a chunk alone holds
    more."""
    edges, block = [0], 0
    for chunk, entries in enumerate(histogram):
        if block and block + entries > REDUCE_BLOCK_ENTRIES:
            edges.append(chunk * HISTOGRAM_ROWS)
            block = 0
        block += int(entries)
    if edges[-1] != size or size == 0:
        edges.append(size)
    return edges


@dataclass(frozen=True)
class CountTask:
    splits: str
    bucket: int
    item_ids: str
    window: int
    folder: str


@dataclass(frozen=True)
class Counted:
    folder: str
    entries: int
    histogram: np.ndarray  # entries per chunk of HISTOGRAM_ROWS rows


def count_bucket(task: CountTask) -> Counted:
    """One bucket's counts, written to `task.folder` as CSR arrays (sorted, no duplicates)."""
    frame = read_bucket(task.splits, task.bucket, COLUMNS)
    item_ids = _item_ids(task.item_ids)
    counts = cooccurrence_counts(training_sequences(frame), item_ids, task.window)
    counts.sort_indices()
    save_csr(Path(task.folder), counts, BUCKET_COUNT_TYPE)
    chunk_ends = np.minimum(np.arange(HISTOGRAM_ROWS, len(item_ids) + HISTOGRAM_ROWS, HISTOGRAM_ROWS),
                            len(item_ids))
    histogram = np.diff(np.concatenate([[0], counts.indptr[chunk_ends]])).astype(np.int64)
    return Counted(task.folder, int(counts.nnz), histogram)


@dataclass(frozen=True)
class RowBlockTask:
    parts: Sequence[str]
    first: int
    last: int
    size: int
    folder: str


@dataclass(frozen=True)
class RowBlock:
    folder: str
    entries: int


def sum_row_block(task: RowBlockTask) -> RowBlock:
    """Rows [first, last) of the sum of every bucket's counts, written as CSR arrays (float64)."""
    rows, columns, values = [], [], []
    block_rows = task.last - task.first
    for part in task.parts:
        indptr, indices, data = load_csr_arrays(Path(part))
        start, end = int(indptr[task.first]), int(indptr[task.last])
        if end == start:
            continue
        row_lengths = np.diff(indptr[task.first:task.last + 1])
        rows.append(np.repeat(np.arange(block_rows, dtype=np.int32), row_lengths))
        columns.append(np.asarray(indices[start:end]))
        values.append(np.asarray(data[start:end], dtype=np.int64))
    if rows:
        block = sp.coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
                              shape=(block_rows, task.size)).tocsr()  # sums duplicates
        block.sort_indices()
    else:
        block = sp.csr_matrix((block_rows, task.size), dtype=np.int64)
    save_csr(Path(task.folder), block, np.float64)
    return RowBlock(task.folder, int(block.nnz))


def assemble_row_blocks(folders: Sequence[str], entries: Sequence[int], size: int) -> sp.csr_matrix:
    """The row blocks end to end, read straight into the result's buffers (no second copy)."""
    total = int(sum(entries))
    index_type = np.int32 if max(total, size) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(size + 1, dtype=index_type)
    indices = np.empty(total, dtype=index_type)
    data = np.empty(total, dtype=np.float64)
    row, entry = 0, 0
    for folder in folders:
        block_indptr, block_indices, block_data = load_csr_arrays(Path(folder))
        rows, count = len(block_indptr) - 1, int(block_indptr[-1])
        indptr[row + 1:row + rows + 1] = block_indptr[1:] + entry
        indices[entry:entry + count] = block_indices
        data[entry:entry + count] = block_data
        row, entry = row + rows, entry + count
    if row != size or entry != total:
        raise RuntimeError(f"co-occurrence row blocks cover {row} rows and {entry} entries, "
                           f"not {size} and {total}: a reduce task's output is incomplete")
    counts = sp.csr_matrix((data, indices, indptr), shape=(size, size), copy=False)
    counts.has_sorted_indices = True  # each block is sorted, and blocks are whole rows
    return counts


def save_csr(folder: Path, matrix: sp.csr_matrix, value_type: type) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(CSR_FILES, (matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32),
                                       matrix.data.astype(value_type)), strict=True):
        np.save(folder / f"{name}.npy", array)


def load_csr_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """indptr, indices and data of a saved CSR, memory-mapped (a task reads only its slices)."""
    indptr, indices, data = (np.load(folder / f"{name}.npy", mmap_mode="r") for name in CSR_FILES)
    return indptr, indices, data


@functools.lru_cache(maxsize=2)
def _item_ids(path: str) -> np.ndarray:
    return pq.read_table(path).column("item_id").to_numpy(zero_copy_only=False).astype(object)
