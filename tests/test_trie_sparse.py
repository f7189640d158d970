"""Sparse child tables (a large catalogue's deep trie levels) against the dense tables they replace:
the same rows, transitions, masks and files, the same beam search and DARE results, and a build
that never holds the dense table of a sparse level."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.model.beam import SparseChildTensor, TrieTables, beam_search
from genrec.sid.trie import SidTrie, SparseChildren, dense
from testbed.serving import one_torch_thread


def unique_codes(items: int, sizes: list[int], seed: int) -> np.ndarray:
    """`items` distinct IDs: random codes on the first levels, then the dedup index per prefix."""
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(0, sizes[:-1], size=(items, len(sizes) - 1))
    _, group = np.unique(prefixes, axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    dedup = np.empty(items, dtype=np.int64)
    dedup[order] = np.arange(items) - np.repeat(starts, np.diff(np.r_[starts, items]))
    keep = dedup < sizes[-1]
    return np.c_[prefixes, dedup][keep]


@pytest.mark.parametrize(("items", "sizes"), [(60, [4, 4, 4]), (500, [8, 8, 6, 3]), (1, [5, 2]), (0, [3, 3])])
def test_sparse_levels_walk_exactly_as_the_dense_ones(items: int, sizes: list[int]) -> None:
    codes = unique_codes(items, sizes, seed=items) if items else np.empty((0, len(sizes)), dtype=np.int64)
    reference = SidTrie.from_codes(codes, sizes, layout="dense")
    sparse = SidTrie.from_codes(codes, sizes, layout="sparse")
    assert all(isinstance(table, SparseChildren) for table in sparse.children)
    for a, b in zip(reference.children, sparse.children, strict=True):
        assert np.array_equal(dense(b), a) and b.shape == a.shape
        nodes = np.arange(a.shape[0]).repeat(2).reshape(-1, 2)  # any shape of node ids
        assert np.array_equal(b[nodes], a[nodes])
        every = np.indices(a.shape).reshape(2, -1)
        assert np.array_equal(b[every[0], every[1]], a[every[0], every[1]])
    assert sparse.num_items == reference.num_items == len(codes)
    for prefix in [(), *map(tuple, codes[:, :1]), *map(tuple, codes[:, :2]), *map(tuple, codes), (0,) * len(sizes)]:
        assert sparse.node_of(prefix) == reference.node_of(prefix)
        assert sparse.allowed_next(prefix).tolist() == reference.allowed_next(prefix).tolist()
    nodes = np.array([0, -1, 0])
    for level in range(len(sizes)):
        assert np.array_equal(sparse.masks(level, nodes), reference.masks(level, nodes))
        step_codes = np.zeros(3, dtype=np.int64)
        assert np.array_equal(sparse.step(level, nodes, step_codes), reference.step(level, nodes, step_codes))
        nodes = reference.step(level, nodes, step_codes).clip(min=0)


def test_sparse_rows_on_torch_equal_the_dense_gather() -> None:
    codes = unique_codes(400, [8, 8, 8, 4], seed=3)
    reference = TrieTables(SidTrie.from_codes(codes, [8, 8, 8, 4], layout="dense"))
    sparse = TrieTables(SidTrie.from_codes(codes, [8, 8, 8, 4], layout="sparse"))
    assert sparse.items == reference.items == len(codes)
    for a, b in zip(reference.children, sparse.children, strict=True):
        assert isinstance(b, SparseChildTensor)
        nodes = torch.randint(0, a.shape[0], (5, 7))
        assert torch.equal(b[nodes], a[nodes])


def test_auto_layout_keeps_small_levels_dense_and_builds_deep_ones_sparse_without_the_dense_table() -> None:
    # 200k items under 64^3 prefixes: the dedup level has ~140k nodes with 1.4 children each, of
    # 256 codes (as the default config's levels).
    sizes = [64, 64, 64, 256]
    codes = unique_codes(200_000, sizes, seed=7)
    tracemalloc.start()
    try:
        trie = SidTrie.from_codes(codes, sizes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(trie.children[0], np.ndarray)  # one node: dense costs less
    assert isinstance(trie.children[-1], SparseChildren)
    dense_bytes = sum(table.shape[0] * table.shape[1] * 4 for table in trie.children)
    assert trie.nbytes * 20 < dense_bytes
    # The dedup level's dense table alone is ~140k x 256 x 4 bytes; the build stays well under it.
    assert peak < trie.children[-1].size * 4 / 4, (peak, trie.children[-1].size * 4)


def test_sparse_trie_file_round_trip(tmp_path: Path) -> None:
    codes = unique_codes(300, [8, 8, 5], seed=1)
    for layout in ("auto", "sparse", "dense"):
        trie = SidTrie.from_codes(codes, [8, 8, 5], layout=layout)
        trie.save(tmp_path / f"{layout}.npz")
        loaded = SidTrie.load(tmp_path / f"{layout}.npz")
        assert [type(t) for t in loaded.children] == [type(t) for t in trie.children]
        assert all(np.array_equal(dense(a), dense(b)) for a, b in zip(loaded.children, trie.children, strict=True))


def test_beam_search_and_strict_dare_on_sparse_tables_equal_dense() -> None:
    import pandas as pd

    from genrec.config import GenrecConfig
    from genrec.model.artefact import load_model
    from genrec.serving.model import build_pool_from_frame
    from genrec.serving.speculative import dare_beam_search
    from testbed.serving import HISTORY_FILE, cached_tiny_model

    with one_torch_thread():
        trained = load_model(cached_tiny_model())
        history = pd.read_parquet(cached_tiny_model().parent / HISTORY_FILE)
        decoder = trained.decoder
        codes = decoder.item_codes.cpu().numpy()
        reference = TrieTables(SidTrie.from_codes(codes, decoder.level_sizes, layout="dense"))
        sparse = TrieTables(SidTrie.from_codes(codes, decoder.level_sizes, layout="sparse"))
        groups = list(history.groupby("user_id", sort=True))[:12]
        recent = trained.history_rows([g["item_id"].tolist()[:-1] for _, g in groups])
        context = decoder.embed_context(recent)
        exclude = recent[:, :3]
        for widths in ([4], [16, 8]):
            exact = beam_search(decoder, context, reference, widths, 10, exclude=exclude)
            got = beam_search(decoder, context, sparse, widths, 10, exclude=exclude)
            assert torch.equal(got.items, exact.items) and torch.equal(got.scores, exact.scores)
        config = GenrecConfig()
        config.serving.dare_clusters = 4
        pool = build_pool_from_frame(trained, history, config)
        clusters = (np.arange(len(groups)) % (pool.clusters + 1) - 1).tolist()
        exact = beam_search(decoder, context, reference, [8], 10)
        dare, _ = dare_beam_search(decoder, context, sparse, [8], 10, pool, clusters, 4, 2, 0.1, strict=True)
        assert torch.equal(dare.items, exact.items)
