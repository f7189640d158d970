"""Residual quantisation of item vectors into L levels of K codes, plus the dedup level.

The default is residual k-means with *balanced* levels: every level's k-means assigns items under
a capacity of ceil(slack * n / K) per code. Plain k-means on skewed item vectors piles most items
into a few codes, which wastes the decoder's vocabulary and makes long collision lists; a capacity
keeps codes used evenly. Everything is seeded: a fixed seed and input give the same codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import kmeans_plusplus

from genrec.config import SidConfig


@dataclass
class Quantised:
    """Codes (n, L) and what it takes to reproduce them: the per-level centroids."""

    codes: np.ndarray
    # One (K, dim) array per level; a level may hold fewer than K rows when there are fewer items.
    centroids: list[np.ndarray]
    # Squared norm of what no level explained, per item (used to order items within a collision).
    residual_sq: np.ndarray


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    dist = (points**2).sum(axis=1)[:, None] - 2.0 * points @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    return np.maximum(dist, 0.0)


def balanced_assign(dist: np.ndarray, capacity: int) -> np.ndarray:
    """Assigns each row to a column so that no column takes more than `capacity` rows.

    Rounds of proposals, all vectorised: every unplaced item proposes to its nearest code that still
    has room, and each code accepts the proposers that would lose the most by going elsewhere
    (smallest best-minus-second-best distance, the regret heuristic) up to its room. Rejected items
    propose again next round; each round with a rejection fills a code, so it ends within K rounds.
    """
    n, k = dist.shape
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} codes cannot hold {n} items")
    labels = np.full(n, -1, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        open_codes = np.flatnonzero(load < capacity)
        sub = dist[np.ix_(pending, open_codes)]
        if open_codes.size > 1:
            two = np.partition(sub, 1, axis=1)[:, :2]
            regret = two[:, 0] - two[:, 1]
        else:
            regret = np.zeros(pending.size)
        choice = open_codes[sub.argmin(axis=1)]
        # Sort by code, then by regret (most to lose first), then by item index for determinism.
        order = np.lexsort((pending, regret, choice))
        sorted_choice = choice[order]
        group_start = np.searchsorted(sorted_choice, sorted_choice, side="left")
        rank = np.arange(order.size) - group_start
        accept = rank < (capacity - load)[sorted_choice]
        winners = pending[order[accept]]
        labels[winners] = sorted_choice[accept]
        load += np.bincount(sorted_choice[accept], minlength=k)
        pending = np.sort(pending[order[~accept]])
    return labels


def kmeans(points: np.ndarray, k: int, iters: int, seed: int, balanced: bool, slack: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """(Balanced) Lloyd k-means from a k-means++ start. Returns (centroids (k', d), labels)."""
    n = len(points)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    centroids, _ = kmeans_plusplus(points, n_clusters=k, random_state=int(rng.integers(2**31 - 1)))
    capacity = max(1, math.ceil(slack * n / k))
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        dist = squared_distances(points, centroids)
        new_labels = balanced_assign(dist, capacity) if balanced else dist.argmin(axis=1)
        converged = np.array_equal(new_labels, labels)
        labels = new_labels
        centroids = _centroid_means(points, labels, centroids, dist)
        if converged:
            break
    return centroids, labels


def _centroid_means(points: np.ndarray, labels: np.ndarray, previous: np.ndarray, dist: np.ndarray
                    ) -> np.ndarray:
    k, n = len(previous), len(points)
    counts = np.bincount(labels, minlength=k)
    # Per-code sums as one sparse product: far faster than np.add.at on (n, dim) rows.
    sums = sp.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n)) @ points
    centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], previous)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        # Reseed an unused code at the items worst served by their code, so it can take work.
        own = dist[np.arange(len(points)), labels]
        worst = np.argsort(-own, kind="stable")[: empty.size]
        centroids[empty] = points[worst]
    return centroids


def minibatch_kmeans(points: np.ndarray, k: int, config: SidConfig, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(Balanced) mini-batch k-means (Sculley 2010) for catalogues too large for `kmeans`.

    The start is k-means++ on a random `kmeans_init_items` items. Each of `kmeans_batch_iters`
    updates assigns a random batch (under the batch's share of the capacity when balanced) and moves
    each code towards its batch mean with a step of batch count / all counts so far, so a code
    settles as it sees more items. The final assignment walks the items in a random order, a batch
    at a time, each batch balanced under its own share of the capacity: a code then holds at most
    ceil(slack * batch / k) items per batch, and memory is one batch's distances.
    Returns (centroids (k', d), labels)."""
    n = len(points)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    start = rng.choice(n, size=min(n, config.kmeans_init_items), replace=False)
    centroids, _ = kmeans_plusplus(points[np.sort(start)], n_clusters=k,
                                   random_state=int(rng.integers(2**31 - 1)))
    seen = np.zeros(k, dtype=np.int64)
    batch = min(n, config.kmeans_batch_items)
    for _ in range(config.kmeans_batch_iters):
        rows = np.sort(rng.choice(n, size=batch, replace=False))
        sample = points[rows]
        dist = squared_distances(sample, centroids)
        labels = _assign(dist, batch, k, config)
        counts = np.bincount(labels, minlength=k)
        sums = sp.csr_matrix((np.ones(batch), (labels, np.arange(batch))), shape=(k, batch)) @ sample
        seen += counts
        hit = counts > 0
        step = counts[hit] / seen[hit]
        centroids[hit] += step[:, None] * (sums[hit] / counts[hit][:, None] - centroids[hit])
        never = np.flatnonzero(seen == 0)
        if never.size:
            # A code no batch has chosen yet restarts at the batch's items worst served by theirs.
            own = dist[np.arange(batch), labels]
            centroids[never] = sample[np.argsort(-own, kind="stable")[: never.size]]
    labels = np.empty(n, dtype=np.int64)
    order = rng.permutation(n)
    for first in range(0, n, batch):
        rows = order[first:first + batch]
        labels[rows] = _assign(squared_distances(points[rows], centroids), len(rows), k, config)
    return centroids, labels


def _assign(dist: np.ndarray, rows: int, k: int, config: SidConfig) -> np.ndarray:
    if not config.balanced:
        return np.asarray(dist.argmin(axis=1), dtype=np.int64)
    return balanced_assign(dist, max(1, math.ceil(config.balance_slack * rows / k)))


def uses_minibatch(items: int, config: SidConfig) -> bool:
    """Whether `rq_kmeans` fits a catalogue of `items` items in mini-batches."""
    if config.kmeans_mode == "auto":
        return items > config.kmeans_full_max_items
    return config.kmeans_mode == "minibatch"


def rq_kmeans(features: np.ndarray, config: SidConfig) -> Quantised:
    """Residual k-means: level l clusters what levels < l left unexplained."""
    residual = np.asarray(features, dtype=np.float64).copy()
    codes = np.zeros((len(residual), config.levels), dtype=np.int64)
    centroids = []
    minibatch = uses_minibatch(len(residual), config)
    for level in range(config.levels):
        if minibatch:
            level_centroids, labels = minibatch_kmeans(residual, config.codes_per_level, config,
                                                       config.seed + level)
        else:
            level_centroids, labels = kmeans(residual, config.codes_per_level, config.kmeans_iters,
                                             config.seed + level, config.balanced, config.balance_slack)
        codes[:, level] = labels
        centroids.append(level_centroids)
        residual -= level_centroids[labels]
    return Quantised(codes, centroids, (residual**2).sum(axis=1))


def encode_greedy(features: np.ndarray, centroids: list[np.ndarray]) -> np.ndarray:
    """Codes of new vectors under fitted centroids: the nearest code at each level, no capacity."""
    residual = np.asarray(features, dtype=np.float64).copy()
    codes = np.zeros((len(residual), len(centroids)), dtype=np.int64)
    for level, level_centroids in enumerate(centroids):
        codes[:, level] = squared_distances(residual, level_centroids).argmin(axis=1)
        residual -= level_centroids[codes[:, level]]
    return codes


def add_dedup_level(codes: np.ndarray, tiebreak: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Appends a last level that numbers the items sharing an L-prefix 0, 1, 2, ...

    Within a prefix, the item best explained by the codes (smallest `tiebreak`) gets 0; item id
    breaks exact ties, so the numbering does not depend on catalogue row order.
    """
    n, levels = codes.shape
    order = np.lexsort((item_ids, tiebreak, *codes.T[::-1]))
    sorted_codes = codes[order]
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    dedup = np.empty(n, dtype=np.int64)
    dedup[order] = np.arange(n) - group_start
    return np.column_stack([codes, dedup])


# ------------------------------------------------------------------------------------------------
# Quality figures
# ------------------------------------------------------------------------------------------------


def collision_figures(codes: np.ndarray) -> dict[str, float]:
    """How many items share their full L-level code (before dedup) with another item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    per_item = counts[inverse.ravel()]
    return {
        # Share of items whose L-prefix is not unique: the figure our prototypes quoted.
        "collision_rate": float((per_item > 1).mean()),
        # Share of items that need a dedup index above 0 (1 - distinct prefixes / items).
        "duplicate_rate": float(1.0 - len(counts) / len(codes)),
        "max_items_per_prefix": float(counts.max()),
        "distinct_prefixes": float(len(counts)),
    }


def level_usage(codes: np.ndarray, codes_per_level: int) -> list[dict[str, float]]:
    """Per level: share of the K codes used, entropy of the code distribution (bits), and that
    entropy over its maximum log2(min(K, n)), which is 1.0 for perfectly even use."""
    out = []
    n = len(codes)
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codes_per_level)
        p = counts[counts > 0] / n
        entropy = float(-(p * np.log2(p)).sum())
        ceiling = math.log2(min(codes_per_level, n)) if min(codes_per_level, n) > 1 else 1.0
        out.append({
            "utilisation": float((counts > 0).sum() / codes_per_level),
            "entropy_bits": entropy,
            "entropy_ratio": entropy / ceiling,
            "max_items_per_code": float(counts.max()),
        })
    return out


def prefix_coherence(first_codes: np.ndarray, categories: list[list[str]], leaf_only: bool) -> float:
    """Share of items (with categories) that carry the most common category of their level-1 code.

    With `leaf_only`, an item's category is its last (most specific) one; otherwise any of its
    categories counts, which a category shared by the whole catalogue makes trivially 1.
    """
    pair_codes: list[int] = []
    pair_labels: list[str] = []
    for code, cats in zip(first_codes, categories, strict=True):
        labels = [cats[-1]] if leaf_only and len(cats) else list(dict.fromkeys(cats))
        pair_codes.extend([int(code)] * len(labels))
        pair_labels.extend(labels)
    has_category = sum(1 for cats in categories if len(cats))
    if not has_category:
        return float("nan")
    codes = np.asarray(pair_codes, dtype=np.int64)
    # For each code, the count of its most common label = items under it carrying that label.
    _, label_idx = np.unique(np.asarray(pair_labels, dtype=str), return_inverse=True)
    key = codes * (label_idx.max() + 1) + label_idx
    unique_keys, key_counts = np.unique(key, return_counts=True)
    key_codes = unique_keys // (label_idx.max() + 1)
    best = np.zeros(codes.max() + 1, dtype=np.int64)
    np.maximum.at(best, key_codes, key_counts)
    return float(best.sum() / has_category)
