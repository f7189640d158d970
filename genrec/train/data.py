"""Examples for training and requests for evaluation, built from the leave-one-out split.

An example is (the last R items before a target, most recent first; the target item; its value;
the user; the target's time). Training examples come from the `train` rows only: every training
position after a user's first predicts its item from the ones before it. Evaluation requests
predict the `valid` target from the train history and the `test` target from train + valid, so no
model ever trains on a validation or test target.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from genrec.data.schema import SPLIT_COLUMN
from genrec.model.decoder import PAD_ITEM
from genrec.train.summaries import SummaryProvider

# Which splits form the history when predicting the target of a split.
HISTORY_SPLITS = {"valid": ("train",), "test": ("train", "valid")}
# Batches are sorted by history length within pools of this many batches, then the batches are
# shuffled: padding falls without making batch contents depend on length.
LENGTH_POOL_BATCHES = 50


@dataclass
class ExampleSet:
    recent: np.ndarray  # [n, R] item rows, most recent first, PAD_ITEM after the history ends
    lengths: np.ndarray  # [n] history length (<= R)
    targets: np.ndarray  # [n] item row of the target; -1 if the item has no semantic ID
    values: np.ndarray  # [n] value of the target interaction
    users: np.ndarray  # [n] user ids
    cutoffs: np.ndarray  # [n] datetime64[ns] UTC time of the target: summaries must be older

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> ExampleSet:
        return ExampleSet(self.recent[index], self.lengths[index], self.targets[index], self.values[index],
                          self.users[index], self.cutoffs[index])

    @classmethod
    def concat(cls, parts: list[ExampleSet]) -> ExampleSet:
        """The sets one after the other."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(part, field.name) for part in parts])
                     for field in dataclasses.fields(cls)))


def item_lookup(codebook_item_ids: np.ndarray) -> pd.Index:
    """The codebook's item ids as a hashed index: build it once and pass it where many frames are
    looked up (a streamed run reads every bucket against a catalogue of up to millions of items)."""
    return pd.Index(np.asarray(codebook_item_ids).astype(str))


def item_rows(item_ids: pd.Series, codebook_item_ids: np.ndarray | pd.Index) -> np.ndarray:
    """Codebook row of each item id; -1 where the item has no semantic ID."""
    lookup = codebook_item_ids if isinstance(codebook_item_ids, pd.Index) else item_lookup(codebook_item_ids)
    return lookup.get_indexer(item_ids.astype(str)).astype(np.int64)


def _windows(frame: pd.DataFrame, rows: np.ndarray, recent_items: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row of a user-grouped, time-ordered frame: the rows before it (same user), most
    recent first, up to `recent_items`, and how many there are."""
    users = frame["user_id"].to_numpy()
    starts = np.r_[True, users[1:] != users[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(users)), 0))
    position = np.arange(len(users)) - group_start
    recent = np.full((len(users), recent_items), PAD_ITEM, dtype=np.int64)
    for back in range(1, recent_items + 1):
        has = position >= back
        recent[has, back - 1] = rows[np.flatnonzero(has) - back]
    return recent, np.minimum(position, recent_items)


def _grouped(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by user (first-appearance order) keeping each user's time order."""
    codes, _ = pd.factorize(frame["user_id"])
    return frame.iloc[np.argsort(codes, kind="stable")].reset_index(drop=True)


def _example_set(frame: pd.DataFrame, rows: np.ndarray, recent: np.ndarray, lengths: np.ndarray,
                 pick: np.ndarray) -> ExampleSet:
    cutoffs = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")
    return ExampleSet(recent[pick], lengths[pick], rows[pick], frame["value"].to_numpy(float)[pick],
                      frame["user_id"].to_numpy(dtype=object)[pick], cutoffs[pick])


def training_examples(splits: pd.DataFrame, codebook_item_ids: np.ndarray | pd.Index, recent_items: int,
                      max_per_user: int = 0, skip_latest: int = 0) -> ExampleSet:
    """One example per training interaction that has at least one earlier training interaction
    (only each user's latest `max_per_user` of them when that is above 0, after leaving out each
    user's latest `skip_latest`). Items without a semantic ID are dropped from the sequences."""
    frame = splits[splits[SPLIT_COLUMN] == "train"]
    rows = item_rows(frame["item_id"], codebook_item_ids)
    frame = _grouped(frame[rows >= 0])
    rows = item_rows(frame["item_id"], codebook_item_ids)
    recent, lengths = _windows(frame, rows, recent_items)
    keep = lengths > 0
    if max_per_user or skip_latest:
        from_end = frame.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
        keep &= from_end >= skip_latest
        if max_per_user:
            keep &= from_end < skip_latest + max_per_user
    return _example_set(frame, rows, recent, lengths, np.flatnonzero(keep))


def evaluation_requests(splits: pd.DataFrame, codebook_item_ids: np.ndarray | pd.Index, recent_items: int,
                        split: str) -> ExampleSet:
    """One request per user with a `split` target ("valid" or "test"), its history from the splits
    before it. A target without a semantic ID stays in (it counts as a miss)."""
    if split not in HISTORY_SPLITS:
        raise ValueError(f"split must be one of {sorted(HISTORY_SPLITS)}, got {split!r}")
    is_target = (splits[SPLIT_COLUMN] == split).to_numpy()
    in_history = splits[SPLIT_COLUMN].isin(HISTORY_SPLITS[split]).to_numpy()
    rows = item_rows(splits["item_id"], codebook_item_ids)
    frame = _grouped(splits[is_target | (in_history & (rows >= 0))])
    rows = item_rows(frame["item_id"], codebook_item_ids)
    recent, lengths = _windows(frame, rows, recent_items)
    targets = np.flatnonzero((frame[SPLIT_COLUMN] == split).to_numpy())
    return _example_set(frame, rows, recent, lengths, targets)


def transform_values(values: np.ndarray, transform: str) -> np.ndarray:
    """"log1p" or "linear" of the (non-negative) values: the scale VSL weights and RSPO gains use."""
    values = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
    if transform == "log1p":
        return np.log1p(values)
    if transform == "linear":
        return values
    raise ValueError(f"unknown value transform {transform!r}: use log1p or linear")


def example_weights(values: np.ndarray, transform: str, reference: np.ndarray | None = None) -> np.ndarray:
    """VSL weights: transform(value) divided by its mean over `reference` (the training examples),
    so the average weight is 1 and the learning rate means the same with VSL on or off."""
    mean = transform_values(values if reference is None else reference, transform).mean()
    return weights_over_mean(values, transform, mean)


def weights_over_mean(values: np.ndarray, transform: str, mean: float) -> np.ndarray:
    """transform(value) / mean: `example_weights` with the mean already known (a streamed run knows
    it from its plan); all ones where the mean is not a positive number."""
    if not np.isfinite(mean) or mean <= 0:
        return np.ones(len(values))
    return transform_values(values, transform) / mean


def vsl_weights(value_weights: np.ndarray, value_weight: float) -> np.ndarray:
    """VSL's example weights at strength `value_weight` (train.value_weight): the mix
    (1 - w) + w * value_weights of plain cross-entropy and full VSL. Value weights of mean 1 keep
    mean 1, so the learning rate means the same along the whole curve."""
    return (1.0 - value_weight) + value_weight * np.asarray(value_weights, dtype=np.float64)


def sorted_in_pools(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """`order` cut into pools of about LENGTH_POOL_BATCHES batches, each pool sorted longest history
    first: a batch cut from it holds histories of similar length, so less of it is padding, while
    which examples share a pool stays random."""
    if not len(order):
        return order
    pools = max(1, -(-len(order) // (batch_size * LENGTH_POOL_BATCHES)))
    return np.concatenate([pool[np.argsort(-lengths[pool], kind="stable")]
                           for pool in np.array_split(order, pools)])


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool,
                rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This rank's batches of example indices for one epoch; the same (seed, epoch) always gives
    the same batches, which is what makes a resumed run repeat an uninterrupted one. Every rank
    gets the same number of batches (DDP steps in lockstep)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        order = sorted_in_pools(order, lengths, batch_size)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    per_rank = len(batches) // world if world > 1 else len(batches)
    return batches[rank::world][:per_rank]


@dataclass
class Batch:
    recent: Tensor  # [B, R'] trimmed to the longest history in the batch
    codes: Tensor  # [B, L] target codes
    targets: Tensor  # [B] target item rows
    weights: Tensor  # [B] loss weights
    value_targets: Tensor  # [B] transformed, normalised target values (for the value head)
    summaries: Tensor | None  # [B, K, d_s]


def make_batch(examples: ExampleSet, index: np.ndarray, item_codes: np.ndarray, weights: np.ndarray,
               value_targets: np.ndarray, summaries: SummaryProvider | None = None,
               device: torch.device | str = "cpu") -> Batch:
    longest = max(1, int(examples.lengths[index].max()))
    targets = examples.targets[index]
    summary = None
    if summaries is not None:
        summary = torch.as_tensor(summaries(examples.users[index], examples.cutoffs[index]),
                                  dtype=torch.float32, device=device)
    return Batch(
        recent=torch.as_tensor(examples.recent[index, :longest], device=device),
        codes=torch.as_tensor(item_codes[np.maximum(targets, 0)], device=device),
        targets=torch.as_tensor(targets, device=device),
        weights=torch.as_tensor(weights[index], dtype=torch.float32, device=device),
        value_targets=torch.as_tensor(value_targets[index], dtype=torch.float32, device=device),
        summaries=summary,
    )
