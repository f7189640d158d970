"""Value-aware decoding: each request's final beam re-ranked by the expected value it brings.

A candidate y of probability p(y) and value v(y) scores p(y) * ((1 - w) + w * v(y) / mean value):
w = 0 is the likelihood ranking, w = 1 ranks by expected value p(y) v(y). For a calibrated model the
top K of this score is the list of highest expected Value@K among those of at least a given expected
Recall@K (its Lagrangian: sum of p(y) (v(y) + lambda) over the list, lambda = mean value (1 - w) / w),
so sweeping w traces the best Value/Recall trade-off the model's own probabilities allow. Training
with VSL (train.value_weight) instead bends the probabilities themselves. On Beauty's validation
targets that gave up more recall for the same value than the tilt did
(benchmarks/results/value_pareto_beauty.json), so the shipped default trains on the likelihood alone
and tilts at decoding (train.value_tilt).

An item's value is the mean value of its training interactions: the expected value of a hit on it.
Where values are simulated bids (every public data set here) all of an item's interactions carry
its bid, so this is the bid. An item with no training interaction gets the mean value, which leaves
its likelihood untilted rather than ranking it last for want of evidence.

The model artefact carries the weight and the table (`ValueTilt`), so the evaluate step, whose
figures the gate judges, and the predictor re-rank the same way: what is evaluated is what is served.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from genrec.data.partitioned import is_partitioned, iter_buckets

# The artefact's files: the weight and the mean in the manifest's "value_tilt", the table beside it.
VALUES_FILE = "item_values.npy"
TRAINING_SPLIT = "train"
VALUE_COLUMNS = ["item_id", "value", "split"]


class ItemValueSums:
    """Per codebook row, the sum and count of interaction values: a frame (or a bucket) at a time,
    so the table of a log of any size needs only two numbers per item."""

    def __init__(self, item_ids: np.ndarray) -> None:
        # genrec.train.data's item_lookup/item_rows, inlined: that module imports genrec.model.
        self.lookup = pd.Index(np.asarray(item_ids).astype(str))
        self.sums = np.zeros(len(item_ids))
        self.counts = np.zeros(len(item_ids), dtype=np.int64)

    def add(self, interactions: pd.DataFrame) -> None:
        if not len(interactions):
            return
        rows = self.lookup.get_indexer(interactions["item_id"].astype(str)).astype(np.int64)
        values = pd.to_numeric(interactions["value"], errors="coerce").to_numpy(float)
        known = (rows >= 0) & np.isfinite(values)
        self.sums += np.bincount(rows[known], weights=values[known], minlength=len(self.sums))
        self.counts += np.bincount(rows[known], minlength=len(self.counts))

    def table(self) -> np.ndarray:
        """Each row's mean value; rows without an interaction get the mean over those with a value."""
        seen = self.counts > 0
        values = np.zeros(len(self.sums))
        values[seen] = self.sums[seen] / self.counts[seen]
        values[~seen] = mean_positive(values[seen])
        return values


def item_value_table(interactions: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Each codebook row's value from these interactions (all of them: filter the split first)."""
    sums = ItemValueSums(item_ids)
    sums.add(interactions)
    return sums.table()


def training_item_values(splits: pd.DataFrame | str | Path, item_ids: np.ndarray) -> np.ndarray:
    """The table from the training rows of the splits: a frame, a parquet file, or a partitioned
    folder read a bucket at a time."""
    sums = ItemValueSums(item_ids)
    for frame in _split_frames(splits):
        sums.add(frame[frame["split"] == TRAINING_SPLIT])
    return sums.table()


def _split_frames(splits: pd.DataFrame | str | Path) -> Iterable[pd.DataFrame]:
    if isinstance(splits, pd.DataFrame):
        yield splits[VALUE_COLUMNS]
    elif is_partitioned(splits):
        for _, frame in iter_buckets(splits, VALUE_COLUMNS):
            yield frame
    else:
        yield pq.read_table(splits, columns=VALUE_COLUMNS).to_pandas()


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


@dataclass(frozen=True)
class ValueTilt:
    """The tilt a model is served and evaluated with: its weight and its item-value table."""

    weight: float
    # [items] float64, in codebook row order.
    item_values: np.ndarray
    mean_value: float

    @classmethod
    def from_values(cls, weight: float, item_values: np.ndarray) -> ValueTilt:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"train.value_tilt must be in [0, 1] (0: the likelihood ranking), got {weight}")
        values = np.asarray(item_values, dtype=np.float64)
        return cls(float(weight), values, mean_positive(values))

    @property
    def applies(self) -> bool:
        """Weight 0 is the likelihood ranking: no wider search, no re-ranking."""
        return self.weight > 0.0

    def pool(self, top_k: int, beam_widths: list[int] | tuple[int, ...]) -> int:
        """How many complete IDs the search must return for the re-ranking: the final beam."""
        return max(top_k, int(beam_widths[-1]))

    def rerank(self, items: np.ndarray, scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top_k of each row's candidates by tilted score. A row of fewer candidates than top_k
        (a narrow rung) is re-ordered and padded, never refused: a request must not fail for it."""
        pool = items.shape[1]
        if pool < top_k:
            items = np.pad(items, ((0, 0), (0, top_k - pool)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, top_k - pool)), constant_values=-np.inf)
        return tilted_top_k(items, scores, self.item_values, self.weight, self.mean_value, top_k)

    def manifest(self) -> dict[str, float]:
        return {"weight": self.weight, "mean_value": self.mean_value}

    def save(self, folder: Path) -> None:
        np.save(folder / VALUES_FILE, self.item_values)

    @classmethod
    def load(cls, folder: Path, entry: object, items: int) -> ValueTilt:
        """The tilt a model folder records; ValueError (one line: file, problem, fix) if damaged."""
        if not isinstance(entry, dict) or not isinstance(entry.get("weight"), (int, float)):
            raise ValueError(f"value_tilt {json.dumps(entry)[:100]} must be an object with a numeric weight")
        path = folder / VALUES_FILE
        if not path.is_file():
            raise ValueError(f"{path} is missing but the manifest names a value tilt: copy the folder again")
        values = np.load(path, allow_pickle=False)
        if values.shape != (items,) or not np.all(np.isfinite(values)):
            raise ValueError(f"{path} must hold one finite value per item ({items}); it holds shape "
                             f"{values.shape}: the folder mixes two models")
        return cls.from_values(float(entry["weight"]), values)


def in_force(value_tilt: ValueTilt | None) -> ValueTilt | None:
    """The tilt a ranking applies: None where there is none or its weight is 0 (the likelihood
    ranking, which needs neither a wider search nor a re-ranking)."""
    return value_tilt if value_tilt is not None and value_tilt.applies else None


def value_tilt_note(value_tilt: ValueTilt | None) -> str:
    """One line for a report: how the model's lists were ranked."""
    tilt = in_force(value_tilt)
    if tilt is None:
        return "Lists are ranked by the model's likelihood (no value tilt)."
    return (f"Lists are the final beam re-ranked by value tilt {tilt.weight:g} (train.value_tilt, "
            f"recorded in the model): p(y) x ((1 - w) + w x value / {tilt.mean_value:.3g}), as served.")
