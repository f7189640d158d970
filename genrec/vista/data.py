"""Item vocabularies and per-user sequences: the integer form the summariser works on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from genrec.vista.model import PADDING_INDEX


@dataclass
class ItemVocab:
    """item_id (string) <-> row of the item table; row 0 is padding, unknown items map to it."""

    item_ids: list[str]

    def __post_init__(self) -> None:
        self._index = {item: row for row, item in enumerate(self.item_ids, start=PADDING_INDEX + 1)}

    @classmethod
    def from_items(cls, items: pd.Series) -> ItemVocab:
        return cls(sorted(pd.unique(items.astype(str))))

    def __len__(self) -> int:
        return len(self.item_ids)

    def encode(self, items: pd.Series | list[str]) -> np.ndarray:
        index = self._index
        rows = (index.get(str(i), PADDING_INDEX) for i in items)
        return np.fromiter(rows, dtype=np.int64, count=len(items))

    def decode(self, rows: np.ndarray | list[int]) -> list[str]:
        return [self.item_ids[int(r) - PADDING_INDEX - 1] if int(r) > PADDING_INDEX else "" for r in rows]


def time_ordered(interactions: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by user and in time order within each user; ties keep their file order."""
    order = np.lexsort((np.arange(len(interactions)), interactions["timestamp"].to_numpy(),
                        pd.factorize(interactions["user_id"].astype(str), sort=True)[0]))
    return interactions.iloc[order].reset_index(drop=True)


@dataclass
class UserSequences:
    """Each user's items in time order, stored flat: items[offsets[u]:offsets[u + 1]]."""

    user_ids: np.ndarray  # [U] of str
    offsets: np.ndarray  # [U + 1]
    items: np.ndarray  # [sum of lengths], item-table rows

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, vocab: ItemVocab) -> UserSequences:
        ordered = time_ordered(interactions)
        users, starts = np.unique(ordered["user_id"].to_numpy().astype(str), return_index=True)
        offsets = np.append(starts, len(ordered)).astype(np.int64)
        return cls(users, offsets, vocab.encode(ordered["item_id"]))

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]

    def padded(self, users: np.ndarray, max_length: int = 0) -> np.ndarray:
        """[len(users), T] item rows, left-aligned and right-padded; only the last `max_length` items
        of a sequence are kept when max_length > 0."""
        lengths = self.lengths[users]
        if max_length > 0:
            lengths = np.minimum(lengths, max_length)
        out = np.full((len(users), int(lengths.max(initial=0))), PADDING_INDEX, dtype=np.int64)
        for row, (user, length) in enumerate(zip(users, lengths, strict=True)):
            end = self.offsets[user + 1]
            out[row, :length] = self.items[end - length:end]
        return out
