"""Popularity: every user gets the items with the most training interactions, most first (ties by
item row). The floor any learned recommender has to clear."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genrec.data.schema import SPLIT_COLUMN
from genrec.train.data import ExampleSet, item_rows


class PopularityBaseline:
    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        # Most interactions first; a stable sort keeps the lower item row first among ties.
        self.order = np.argsort(-self.counts, kind="stable")

    @classmethod
    def fit(cls, splits: pd.DataFrame, item_ids: np.ndarray | pd.Index) -> PopularityBaseline:
        """Counts of each item's interactions in the training split (items without a row ignored)."""
        rows = item_rows(splits.loc[splits[SPLIT_COLUMN] == "train", "item_id"], item_ids)
        return cls(np.bincount(rows[rows >= 0], minlength=len(item_ids)))

    def recommend(self, requests: ExampleSet, top_k: int, exclude_last: int = 0) -> np.ndarray:
        """[n, top_k] item rows. With `exclude_last` > 0 a request's last that many context items are
        skipped (the generator's R, so both leave out the same items)."""
        if not exclude_last:
            return np.tile(self.order[:top_k], (len(requests), 1))
        recent = requests.recent[:, :exclude_last]  # most recent first
        # The top top_k + (excluded items) always leave top_k.
        head = self.order[:top_k + recent.shape[1]]
        out = np.full((len(requests), top_k), -1, dtype=np.int64)  # -1 where the catalogue runs out
        for index, own in enumerate(recent):
            picked = head[~np.isin(head, own)][:top_k]
            out[index, :len(picked)] = picked
        return out
