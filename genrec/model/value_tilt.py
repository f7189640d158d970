"""Value-aware decoding: each request's final beam re-ranked by the expected value it brings.

A candidate y of probability p(y) and value v(y) scores p(y) * ((1 - w) + w * v(y) / mean value):
w = 0 is the likelihood ranking, w = 1 ranks by expected value p(y) v(y). For a calibrated model the
top K of this score is the list of highest expected Value@K among those of at least a given expected
Recall@K (its Lagrangian: sum of p(y) (v(y) + lambda) over the list, lambda = mean value (1 - w) / w),
so sweeping w traces the best Value/Recall trade-off the model's own probabilities allow. Training
with VSL (train.value_weight) instead bends the probabilities themselves. On Beauty's validation
targets that gave up more recall for the same value than the tilt did; on its test targets a light
VSL weight plus a tilt did best (benchmarks/results/value_pareto_beauty.json).

An item's value is its bid, a catalogue attribute known before any request (`item_value_table`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from genrec.train.data import item_rows


def item_value_table(interactions: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Each codebook row's value: the median value of its interactions (its bid), 0 for an item no
    interaction names."""
    rows = item_rows(interactions["item_id"], item_ids)
    known = rows >= 0
    values = np.zeros(len(item_ids))
    median = interactions[known].assign(row=rows[known]).groupby("row")["value"].median()
    values[median.index.to_numpy()] = median.to_numpy(float)
    return values


def mean_positive(values: np.ndarray) -> float:
    """The mean over items that have a value: the scale w's mix is relative to."""
    positive = values[values > 0]
    return float(positive.mean()) if len(positive) else 1.0


def tilt(item_values: np.ndarray, weight: float, mean_value: float) -> np.ndarray:
    """log((1 - w) + w * v / mean): what the tilt adds to a candidate's log-probability."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"value tilt weight {weight} must be in [0, 1]")
    mix = (1.0 - weight) + weight * np.maximum(item_values, 0.0) / mean_value
    # A valueless item under w = 1 gets -inf only if nothing else is left; keep it last, not lost.
    return np.log(np.maximum(mix, np.finfo(np.float64).tiny))


def tilted_top_k(items: np.ndarray, scores: np.ndarray, item_values: np.ndarray, weight: float,
                 mean_value: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each row of `items` ([n, P] codebook rows, -1 padding, with their log-probs
    `scores`) by log p + tilt; padding stays last. Returns the items and their tilted scores."""
    if k > items.shape[1]:
        raise ValueError(f"cannot pick the top {k} of {items.shape[1]} candidates: widen the final beam")
    key = np.where(items >= 0, scores + tilt(item_values[np.maximum(items, 0)], weight, mean_value), -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(key, order, axis=1)
