"""Prefix trie of the valid semantic IDs, for constrained beam search.

The trie has one child table per level: `children[d]` has one row per distinct prefix of length d
(a node) and one column per code of level d; an entry is the node reached by appending that code,
or -1 where no item has that prefix. At the last level the entry is the item's row in the
codebook. A batched decoder keeps one node id per beam and does

    rows = children[d][nodes]                 # (beams, K) next nodes, -1 where not allowed
    mask = rows >= 0                          # which codes may come next
    nodes = rows[beam, chosen_code]           # next nodes (item rows after the last level)

A table is dense, (distinct prefixes of length d) x (codes of level d), while that is small. The deep
levels of a large catalogue are nearly empty: a million items under 256^3 prefixes leave about one
child per node of the dedup level, whose dense table would be 4 x 256 bytes per item (1 GB). Such a
level is stored as `SparseChildren`, the (node, code) -> child pairs sorted, which gives the same
rows on indexing; `from_codes(..., layout="dense")` keeps the dense tables, the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

INVALID = -1
# A level is stored sparsely once that takes at most 1/SPARSE_MIN_SAVING of its dense table's bytes:
# the dense table is one gather per lookup, so it stays wherever it costs little.
SPARSE_MIN_SAVING = 4
TrieLayout = Literal["auto", "dense", "sparse"]


class SparseChildren:
    """One level's child table as its non-empty entries: `keys` (node * width + code, sorted) and
    `targets` (the child of each). Indexing gives what the dense table would: `table[nodes]` the
    rows (..., width), `table[nodes, codes]` the entries (-1 where empty)."""

    def __init__(self, keys: np.ndarray, targets: np.ndarray, nodes: int, width: int) -> None:
        self.keys = np.asarray(keys, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int32)
        if self.keys.shape != self.targets.shape or self.keys.ndim != 1:
            raise ValueError("sparse children need one target per key")
        if self.keys.size and (np.any(np.diff(self.keys) <= 0) or self.keys[0] < 0
                               or self.keys[-1] >= nodes * width):
            raise ValueError("sparse children keys must be sorted, unique and inside nodes x width")
        self.shape = (int(nodes), int(width))
        # Where each node's entries start in `keys` (nodes + 1 offsets), for whole rows.
        self.offsets = np.searchsorted(self.keys, np.arange(nodes + 1, dtype=np.int64) * width)

    @property
    def size(self) -> int:
        """Cells of the dense table it stands for."""
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.targets.nbytes + self.offsets.nbytes)

    def entries(self) -> int:
        return int(self.keys.size)

    def max(self) -> int:
        return int(self.targets.max()) if self.targets.size else INVALID

    def to_dense(self) -> np.ndarray:
        table = np.full(self.shape, INVALID, dtype=np.int32)
        table.reshape(-1)[self.keys] = self.targets
        return table

    def rows(self, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64)
        flat = nodes.reshape(-1)
        start = self.offsets[flat]
        count = self.offsets[flat + 1] - start
        out = np.full((flat.size, self.shape[1]), INVALID, dtype=np.int32)
        owner = np.repeat(np.arange(flat.size), count)
        first = np.repeat(np.cumsum(count) - count, count)
        entry = np.arange(int(count.sum())) - first + np.repeat(start, count)
        out[owner, self.keys[entry] - flat[owner] * self.shape[1]] = self.targets[entry]
        return out.reshape(*nodes.shape, self.shape[1])

    def lookup(self, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        wanted = np.asarray(nodes, dtype=np.int64) * self.shape[1] + np.asarray(codes, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, wanted), max(self.keys.size - 1, 0))
        found = self.keys[at] == wanted if self.keys.size else np.zeros(wanted.shape, dtype=bool)
        return np.where(found, self.targets[at] if self.keys.size else INVALID, INVALID).astype(np.int32)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            nodes, codes = key
            return self.lookup(nodes, codes)
        return self.rows(key)


ChildTable = np.ndarray | SparseChildren


def entries(table: ChildTable) -> int:
    """Non-empty cells of a child table, dense or sparse."""
    return table.entries() if isinstance(table, SparseChildren) else int((table >= 0).sum())


def dense(table: ChildTable) -> np.ndarray:
    return table.to_dense() if isinstance(table, SparseChildren) else table


def level_table(nodes: np.ndarray, codes: np.ndarray, children: np.ndarray, width: int,
                layout: TrieLayout) -> ChildTable:
    """The child table of one level from its (node, code) -> child pairs (repeats allowed), dense or
    sparse as `layout` asks; "auto" goes sparse where that takes 1/SPARSE_MIN_SAVING of the dense
    bytes. A sparse level never makes its dense table, not even for a moment."""
    count = int(nodes.max()) + 1 if nodes.size else 1
    keys, first = np.unique(nodes * width + codes, return_index=True)
    sparse = SparseChildren(keys, children[first], count, width)
    dense_bytes = count * width * np.dtype(np.int32).itemsize
    if layout == "sparse" or (layout == "auto" and sparse.nbytes * SPARSE_MIN_SAVING <= dense_bytes):
        return sparse
    return sparse.to_dense()


class SidTrie:
    def __init__(self, children: Sequence[ChildTable], level_sizes: Sequence[int]) -> None:
        if len(children) != len(level_sizes):
            raise ValueError("one child table per level is needed")
        self.children: list[ChildTable] = [
            c if isinstance(c, SparseChildren) else np.asarray(c, dtype=np.int32) for c in children]
        self.level_sizes = [int(s) for s in level_sizes]

    @classmethod
    def from_codes(cls, codes: np.ndarray, level_sizes: Sequence[int],
                   layout: TrieLayout = "auto") -> SidTrie:
        """Builds the trie of the rows of `codes` (n, depth); row i is item i. `layout` "dense" keeps
        every level dense (the reference), "sparse" none, "auto" chooses per level by size."""
        codes = np.asarray(codes, dtype=np.int64)
        n, depth = codes.shape
        if len(level_sizes) != depth:
            raise ValueError(f"{depth} code columns but {len(level_sizes)} level sizes")
        if n and (codes.min() < 0 or (codes >= np.asarray(level_sizes)[None, :]).any()):
            raise ValueError("a code lies outside its level's range")
        if n and len(np.unique(codes, axis=0)) < n:
            raise ValueError("two items share a full semantic ID: add the dedup level first")
        children = []
        nodes = np.zeros(n, dtype=np.int64)  # every item starts at the root
        for level in range(depth):
            if level + 1 < depth:
                _, next_nodes = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)
                next_nodes = next_nodes.ravel()
            else:
                next_nodes = np.arange(n)
            children.append(level_table(nodes, codes[:, level], next_nodes, level_sizes[level], layout))
            nodes = next_nodes
        return cls(children, level_sizes)

    @property
    def depth(self) -> int:
        return len(self.children)

    @property
    def num_items(self) -> int:
        return entries(self.children[-1])

    def node_of(self, prefix: Sequence[int]) -> int:
        """The node a prefix leads to (an item row for a full ID), or -1 if no item has it."""
        if len(prefix) > self.depth:
            return INVALID
        node = 0
        for level, code in enumerate(prefix):
            if not 0 <= int(code) < self.level_sizes[level]:
                return INVALID
            node = int(self.children[level][node, int(code)])
            if node == INVALID:
                return INVALID
        return node

    def allowed_next(self, prefix: Sequence[int]) -> np.ndarray:
        """The codes that may follow `prefix` (sorted); empty for an invalid or complete prefix."""
        if len(prefix) >= self.depth:
            return np.empty(0, dtype=np.int64)
        node = self.node_of(prefix)
        if node == INVALID:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.children[len(prefix)][node] >= 0)

    def contains(self, sid: Sequence[int]) -> bool:
        return len(sid) == self.depth and self.node_of(sid) != INVALID

    def item_row(self, sid: Sequence[int]) -> int:
        """Codebook row of the item with this full ID, or -1."""
        return self.node_of(sid) if len(sid) == self.depth else INVALID

    def step(self, level: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Batched transition: next node (or item row) per beam; -1 where the code is not allowed."""
        nodes = np.asarray(nodes)
        out = np.full(nodes.shape, INVALID, dtype=np.int32)
        live = nodes >= 0
        out[live] = self.children[level][nodes[live], np.asarray(codes)[live]]
        return out

    def masks(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """(beams, level size) boolean mask of allowed codes; all False for a dead beam (-1)."""
        nodes = np.asarray(nodes)
        out = np.zeros((*nodes.shape, self.level_sizes[level]), dtype=bool)
        live = nodes >= 0
        out[live] = self.children[level][nodes[live]] >= 0
        return out

    @property
    def nbytes(self) -> int:
        return sum(int(table.nbytes) for table in self.children)

    def save(self, path: str | Path) -> None:
        """One npz: a dense level as `level{i}`, a sparse one as its keys, targets and shape."""
        arrays: dict[str, Any] = {}
        for i, table in enumerate(self.children):
            if isinstance(table, SparseChildren):
                arrays.update({f"level{i}_keys": table.keys, f"level{i}_targets": table.targets,
                               f"level{i}_shape": np.asarray(table.shape)})
            else:
                arrays[f"level{i}"] = table
        with open(path, "wb") as handle:
            np.savez_compressed(handle, level_sizes=np.asarray(self.level_sizes), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SidTrie:
        with np.load(path) as data:
            sizes = data["level_sizes"].tolist()
            children: list[ChildTable] = []
            for i in range(len(sizes)):
                if f"level{i}" in data:
                    children.append(data[f"level{i}"])
                else:
                    nodes, width = data[f"level{i}_shape"].tolist()
                    children.append(SparseChildren(data[f"level{i}_keys"], data[f"level{i}_targets"],
                                                   nodes, width))
            return cls(children, sizes)
