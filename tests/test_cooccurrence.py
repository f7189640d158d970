"""The codebook's collaborative counts at scale, each fast path against its simple reference: the
Ray path's shuffle (a count per bucket, a sum per row block, the blocks laid end to end) equals the
counts of the whole log at once, and the blocked PPMI (`ppmi`) equals the formula on the whole
matrix (`ppmi_reference`) to the last bit. The shuffle's functions run here in-process, as the Ray
tasks run them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genrec.sid.cooccurrence as cooccurrence
import genrec.sid.features as features
from genrec.data.partitioned import write_partitioned


def random_counts(rng: np.random.Generator, n: int, entries: int) -> sp.csr_matrix:
    rows, cols = rng.integers(0, n, entries), rng.integers(0, n, entries)
    counts = sp.csr_matrix((np.ones(entries), (rows, cols)), shape=(n, n))
    counts.sum_duplicates()
    return counts


def random_log(rng: np.random.Generator, users: int, items: int, rows: int) -> pd.DataFrame:
    """Training rows with popular items (a few long rows of the counts) and users of every length."""
    popularity = 1.0 / np.arange(1, items + 1)
    return pd.DataFrame({
        "user_id": rng.integers(0, users, rows).astype(str),
        "item_id": rng.choice(items, rows, p=popularity / popularity.sum()).astype(str),
        "timestamp": rng.permutation(rows),
        "split": "train"})


def shuffled_counts(log: pd.DataFrame, item_ids: np.ndarray, buckets: int, root: Path) -> sp.csr_matrix:
    """What `cooccurrence_of_splits` does on Ray, with the tasks called here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = root / "splits"
    splits.mkdir()
    write_partitioned(log, splits, buckets)
    ids = root / "item_ids.parquet"
    pq.write_table(pa.table({"item_id": pa.array(item_ids.astype(str))}), ids)
    counted = [cooccurrence.count_bucket(cooccurrence.CountTask(str(splits), b, str(ids), 5,
                                                                str(root / "buckets" / str(b))))
               for b in range(buckets)]
    histogram = np.sum([c.histogram for c in counted], axis=0)
    edges = cooccurrence.row_block_edges(histogram, len(item_ids))
    blocks = [cooccurrence.sum_row_block(cooccurrence.RowBlockTask(
        [c.folder for c in counted if c.entries], first, last, len(item_ids), str(root / "rows" / str(k))))
        for k, (first, last) in enumerate(zip(edges[:-1], edges[1:], strict=True))]
    return cooccurrence.assemble_row_blocks([b.folder for b in blocks], [b.entries for b in blocks],
                                            len(item_ids))


@pytest.mark.parametrize(("buckets", "block_entries", "histogram_rows"),
                         [(1, 10_000_000, 1024), (3, 50, 7), (7, 1, 1), (4, 400, 64)])
def test_the_shuffle_equals_the_counts_of_the_whole_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        buckets: int, block_entries: int,
                                                        histogram_rows: int) -> None:
    monkeypatch.setattr(cooccurrence, "REDUCE_BLOCK_ENTRIES", block_entries)
    monkeypatch.setattr(cooccurrence, "HISTOGRAM_ROWS", histogram_rows)
    rng = np.random.default_rng(buckets)
    log = random_log(rng, users=60, items=300, rows=4_000)
    item_ids = np.array(sorted(map(str, range(310))), dtype=object)  # ten items nobody saw
    reference = features.cooccurrence_counts(features.training_sequences(log), item_ids, 5)
    total = shuffled_counts(log, item_ids, buckets, tmp_path)
    assert total.shape == reference.shape and total.dtype == np.float64
    assert total.has_sorted_indices
    assert np.array_equal(total.indptr, reference.indptr)
    assert np.array_equal(total.indices, reference.indices)
    assert np.array_equal(total.data, reference.data)
    assert reference.nnz > 0


def test_row_blocks_hold_at_most_the_target_unless_one_chunk_exceeds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cooccurrence, "REDUCE_BLOCK_ENTRIES", 10)
    monkeypatch.setattr(cooccurrence, "HISTOGRAM_ROWS", 4)
    histogram = np.array([3, 3, 3, 25, 0, 0, 9, 1])  # 30 rows: the last chunk is short
    edges = cooccurrence.row_block_edges(histogram, 30)
    assert edges == [0, 12, 16, 30]  # 9 entries, the chunk of 25 alone, then 0+0+9+1 = 10
    assert cooccurrence.row_block_edges(np.zeros(0, np.int64), 0) == [0, 0]


def test_a_log_with_no_pairs_gives_an_empty_matrix(tmp_path: Path) -> None:
    log = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["1", "2"], "timestamp": [1, 2], "split": "train"})
    total = shuffled_counts(log, np.array(["1", "2", "3"], dtype=object), 2, tmp_path)
    assert total.shape == (3, 3) and total.nnz == 0


@pytest.mark.parametrize("block", [1, 7, 1000, 10_000_000])
@pytest.mark.parametrize(("n", "entries"), [(50, 400), (400, 30_000), (3, 2)])
def test_blocked_ppmi_equals_the_whole_matrix_formula(monkeypatch: pytest.MonkeyPatch, block: int, n: int,
                                                      entries: int) -> None:
    monkeypatch.setattr(features, "PPMI_BLOCK_ENTRIES", block)
    counts = random_counts(np.random.default_rng(n + block), n, entries)
    blocked, reference = features.ppmi(counts, 0.75), features.ppmi_reference(counts, 0.75)
    blocked.sort_indices()
    reference.sort_indices()
    assert np.array_equal(blocked.indptr, reference.indptr)
    assert np.array_equal(blocked.indices, reference.indices)
    assert np.array_equal(blocked.data, reference.data)  # bit for bit
    assert blocked.nnz > 0 or n < 10  # the tiny case may have no positive PMI at all


def test_in_place_ppmi_equals_the_reference_and_takes_over_the_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "PPMI_BLOCK_ENTRIES", 500)
    counts = random_counts(np.random.default_rng(9), 300, 20_000)
    reference = features.ppmi_reference(counts.copy(), 0.75)
    buffer = counts.data
    result = features.ppmi(counts, 0.75, in_place=True)
    result.sort_indices()
    reference.sort_indices()
    assert np.shares_memory(result.data, buffer)
    assert np.array_equal(result.indptr, reference.indptr) and np.array_equal(result.indices, reference.indices)
    assert np.array_equal(result.data, reference.data)
