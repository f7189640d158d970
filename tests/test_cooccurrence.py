"""The codebook's collaborative counts at scale, each fast path against its simple reference: the
buckets' counts summed pairwise (`sum_counts`) equal the plain running sum, and the blocked PPMI
(`ppmi`) equals the formula on the whole matrix (`ppmi_reference`) to the last bit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import genrec.sid.features as features
from genrec.sid.cooccurrence import sum_counts


def random_counts(rng: np.random.Generator, n: int, entries: int) -> sp.csr_matrix:
    rows, cols = rng.integers(0, n, entries), rng.integers(0, n, entries)
    counts = sp.csr_matrix((np.ones(entries), (rows, cols)), shape=(n, n))
    counts.sum_duplicates()
    return counts


@pytest.mark.parametrize("buckets", [1, 2, 3, 7, 16])
def test_pairwise_sum_equals_the_running_sum(buckets: int) -> None:
    rng = np.random.default_rng(buckets)
    parts = [random_counts(rng, 200, int(rng.integers(0, 3000))) for _ in range(buckets)]
    reference = sp.csr_matrix((200, 200))
    for part in parts:
        reference = reference + part
    total = sum_counts(iter(parts), 200)
    assert (total != reference).nnz == 0 and total.shape == (200, 200)


def test_no_parts_is_an_empty_matrix() -> None:
    total = sum_counts(iter([]), 5)
    assert total.shape == (5, 5) and total.nnz == 0


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
