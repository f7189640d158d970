"""Prefix trie of the valid semantic IDs, for constrained beam search.

The trie is stored densely, one table per level: `children[d]` has one row per distinct prefix of
length d (a node) and one column per code of level d; an entry is the node reached by appending
that code, or -1 where no item has that prefix. At the last level the entry is the item's row in
the codebook. A batched decoder keeps one node id per beam and does

    mask = children[d][nodes] >= 0            # (beams, K): which codes may come next
    nodes = children[d][nodes, chosen_codes]  # next nodes (item rows after the last level)

Table sizes are (distinct prefixes of length d) x (codes of level d): at most min(K^d, n) x K, i.e.
a few MB for catalogues of 10^4-10^5 items with K = 256.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

INVALID = -1


class SidTrie:
    def __init__(self, children: list[np.ndarray], level_sizes: Sequence[int]) -> None:
        if len(children) != len(level_sizes):
            raise ValueError("one child table per level is needed")
        self.children = [np.asarray(c, dtype=np.int32) for c in children]
        self.level_sizes = [int(s) for s in level_sizes]

    @classmethod
    def from_codes(cls, codes: np.ndarray, level_sizes: Sequence[int]) -> SidTrie:
        """Builds the trie of the rows of `codes` (n, depth); row i is item i."""
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
            table = np.full((int(nodes.max()) + 1 if n else 1, level_sizes[level]), INVALID, dtype=np.int32)
            table[nodes, codes[:, level]] = next_nodes
            children.append(table)
            nodes = next_nodes
        return cls(children, level_sizes)

    @property
    def depth(self) -> int:
        return len(self.children)

    @property
    def num_items(self) -> int:
        return int((self.children[-1] >= 0).sum())

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

    def to_torch(self, device: Any = "cpu") -> list[Any]:
        """The child tables as int64 tensors, for masking inside a batched torch beam search."""
        import torch

        return [torch.as_tensor(table, dtype=torch.long, device=device) for table in self.children]

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {f"level{i}": table for i, table in enumerate(self.children)}
        with open(path, "wb") as handle:
            np.savez_compressed(handle, level_sizes=np.asarray(self.level_sizes), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SidTrie:
        with np.load(path) as data:
            sizes = data["level_sizes"].tolist()
            return cls([data[f"level{i}"] for i in range(len(sizes))], sizes)
