"""How summary tokens reach the model: a provider maps (users, cutoff times) to [B, K, d_s].

The point-in-time rule: a request at time t may only use a summary snapshot taken strictly before
t, so a training example never sees a summary that includes the item it predicts.

- `FeastSummaries` is what training and evaluation use: one Feast `get_historical_features` call
  (point-in-time join on the run's feature repo) for every (user, cutoff) the caller will ask for,
  done once up front, then an in-memory lookup per batch.
- `SnapshotSummaries` is the reference: the same strictly-before rule in numpy over a snapshot table
  (`feature_repo_summaries` fills it from the repo's offline parquet, bypassing Feast). Tests hold
  the Feast path to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from genrec.config import GenrecConfig


@runtime_checkable
class SummaryProvider(Protocol):
    tokens: int  # K
    dim: int  # d_s

    def __call__(self, users: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
        """[B, K, d_s] float32: each user's newest snapshot strictly older than its cutoff (zeros
        where there is none)."""
        ...


class SnapshotSummaries:
    """Point-in-time lookup over a table of snapshots: user_id, event_timestamp, and a [K, d_s]
    array per row."""

    def __init__(self, users: np.ndarray, times: np.ndarray, summaries: np.ndarray) -> None:
        summaries = np.asarray(summaries, dtype=np.float32)
        if summaries.ndim != 3 or len(summaries) != len(users) or len(times) != len(users):
            raise ValueError("need one [K, d_s] summary per (user, time) row")
        self.tokens, self.dim = int(summaries.shape[1]), int(summaries.shape[2])
        times = _as_ns(times)
        order = np.lexsort((times, np.asarray(users, dtype=str)))
        self._users = np.asarray(users, dtype=str)[order]
        self._times = times[order]
        self._summaries = summaries[order]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, column: str = "summary") -> SnapshotSummaries:
        return cls(frame["user_id"].to_numpy(), frame["event_timestamp"].to_numpy(),
                   np.stack(frame[column].to_list()))

    def __call__(self, users: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=str)
        cutoffs = _as_ns(cutoffs)
        out = np.zeros((len(users), self.tokens, self.dim), dtype=np.float32)
        first = np.searchsorted(self._users, users, side="left")
        end = np.searchsorted(self._users, users, side="right")
        for i in range(len(users)):
            times = self._times[first[i]:end[i]]
            position = np.searchsorted(times, cutoffs[i], side="left") - 1  # strictly before
            if position >= 0:
                out[i] = self._summaries[first[i] + position]
        return out


def _as_ns(times: np.ndarray) -> np.ndarray:
    series = pd.to_datetime(pd.Series(np.asarray(times)), utc=True)
    return series.dt.tz_localize(None).to_numpy("datetime64[ns]").astype(np.int64)


def feature_repo_summaries(feature_repo: str | Path) -> SnapshotSummaries:
    """Every snapshot in a run's Feast repo (the offline store of the user summary view), decoded
    once into memory for point-in-time lookups: the same strictly-before join as
    `genrec.features.read.point_in_time_summaries`, but per batch without re-reading the store.

    A snapshot covers the user's first `n_items` interactions; the decoder's recent items are the
    last R items before the target whatever the snapshot covers (they may overlap it, never leak)."""
    from genrec.features.repo import FeatureRepo
    from genrec.features.schema import EVENT_TIMESTAMP, SUMMARY, SUMMARY_SHAPE, USER_ID, USER_SUMMARY_VIEW
    from genrec.vista.snapshot import decode_summary

    frame = pd.read_parquet(FeatureRepo.open(feature_repo).offline_path(USER_SUMMARY_VIEW))
    if frame.empty:
        raise ValueError(f"feature repo {feature_repo} holds no user summaries: materialise them first")
    summaries = np.stack([decode_summary(data, shape)
                          for data, shape in zip(frame[SUMMARY], frame[SUMMARY_SHAPE])])
    return SnapshotSummaries(frame[USER_ID].astype(str).to_numpy(), frame[EVENT_TIMESTAMP].to_numpy(),
                             summaries)


class FeastSummaries:
    """Summaries of a fixed set of (user, cutoff) requests, joined through Feast up front.

    One `get_historical_features` call covers every request (Feast's file offline store costs about
    a millisecond a row, mostly hashing the summary bytes, so per-batch calls would dominate a
    training step); the joined snapshots are decoded once (each distinct snapshot once) and batches
    are answered from memory. Asking for a (user, cutoff) outside the set raises a KeyError rather
    than returning zeros: a silent zero summary would look like a user without history.

    Strictly before: Feast joins the newest feature row with event_timestamp <= the entity row's
    time, but a snapshot stamped exactly at a target's time includes that target. The entity times
    are therefore moved back by one microsecond (`genrec.features.read.STRICTLY_BEFORE`), the
    smallest step that survives the join: Feast hands entity times through Python datetimes, whose
    resolution is a microsecond, and every time genrec stores (source timestamps in seconds, sequence
    times whose ties are spread by one microsecond) is a whole number of microseconds, so
    "<= t - 1 us" is exactly "< t". A cutoff with a sub-microsecond part would only skip a snapshot
    less than a microsecond older than it: more conservative, never a leak.
    """

    def __init__(self, repo: str | Path, users: np.ndarray, cutoffs: np.ndarray) -> None:
        from genrec.features.read import historical_summaries
        from genrec.features.schema import EVENT_TIMESTAMP, N_ITEMS, SUMMARY, SUMMARY_SHAPE, USER_ID
        from genrec.vista.snapshot import decode_summary

        users = np.asarray(users, dtype=str)
        if len(users) != len(cutoffs):
            raise ValueError("need one cutoff per user")
        keys = pd.DataFrame({USER_ID: users, "_ns": _as_ns(cutoffs)}).drop_duplicates(ignore_index=True)
        entity_df = pd.DataFrame({USER_ID: keys[USER_ID],
                                  EVENT_TIMESTAMP: pd.to_datetime(keys["_ns"].to_numpy(), utc=True)})
        joined = historical_summaries(repo, entity_df)
        self.rows = len(joined)
        self._index = pd.MultiIndex.from_arrays([keys[USER_ID].to_numpy(), keys["_ns"].to_numpy()])

        # A snapshot is identified by (user, n_items): decode each distinct one once.
        present = joined[SUMMARY].notna().to_numpy()
        self.joined_rows = int(present.sum())
        snapshot_keys = pd.MultiIndex.from_arrays([joined[USER_ID].to_numpy()[present],
                                                   joined[N_ITEMS].to_numpy()[present].astype(np.int64)])
        codes, distinct = pd.factorize(snapshot_keys)
        self._snapshot_of_row = np.full(len(joined), -1, dtype=np.int64)
        self._snapshot_of_row[present] = codes
        first_row = np.flatnonzero(present)[np.unique(codes, return_index=True)[1]]
        if len(first_row):
            self._summaries = np.stack([decode_summary(joined[SUMMARY].iat[row],
                                                       joined[SUMMARY_SHAPE].iat[row]) for row in first_row])
        else:
            self._summaries = np.zeros((0, *_repo_summary_shape(repo)), dtype=np.float32)
        self.snapshots = len(distinct)
        self.tokens, self.dim = int(self._summaries.shape[1]), int(self._summaries.shape[2])

    def __call__(self, users: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
        position = self._index.get_indexer(pd.MultiIndex.from_arrays([np.asarray(users, dtype=str),
                                                                      _as_ns(cutoffs)]))
        if (position < 0).any():
            missing = int((position < 0).sum())
            raise KeyError(f"{missing} (user, cutoff) requests were not in the set joined through Feast up "
                           "front: build FeastSummaries with every request the caller will make")
        snapshot = self._snapshot_of_row[position]
        out = np.zeros((len(position), self.tokens, self.dim), dtype=np.float32)
        found = snapshot >= 0
        out[found] = self._summaries[snapshot[found]]
        return out


def _repo_summary_shape(repo: str | Path) -> tuple[int, int]:
    """[K, d] from the repo's manifest, for a join in which no request has an older snapshot."""
    from genrec.features.repo import FeatureRepo

    shape = FeatureRepo.open(repo).manifest.get("summary_shape")
    if not shape:
        raise ValueError(f"feature repo {repo}: no request has an earlier snapshot and the manifest "
                         "records no summary_shape, so the summary size is unknown")
    return int(shape[0]), int(shape[1])


# The rows whose times are the cutoffs a step asks summaries for. Training: every training target
# (train rows) and the validation requests (valid rows). Evaluation: the valid and test targets.
TRAINING_TARGETS = ("train", "valid")
EVALUATION_TARGETS = ("valid", "test")


def summary_requests(splits: pd.DataFrame, targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(users, cutoffs) of every row of `splits` in the `targets` splits: each is a possible
    prediction target, and `genrec.train.data` gives an example or request its target's timestamp
    as cutoff. A superset of what a step asks (a user's first row predicts nothing) costs a few
    extra join rows, never a miss."""
    from genrec.data.schema import SPLIT_COLUMN

    rows = splits[splits[SPLIT_COLUMN].isin(list(targets))]
    cutoffs = _as_ns(rows["timestamp"].to_numpy()).astype("datetime64[ns]")
    return rows["user_id"].astype(str).to_numpy(), cutoffs


def summary_provider_for(config: GenrecConfig, feature_repo: str | Path | None, splits: pd.DataFrame,
                         targets: Sequence[str] = TRAINING_TARGETS) -> SummaryProvider | None:
    """The provider a component uses: none unless `model.use_summary` is on, else the run's Feast
    feature repo joined (`get_historical_features`) for every target row of `targets` in `splits`."""
    if not config.model.use_summary:
        return None
    if feature_repo is None:
        raise ValueError("model.use_summary is on: pass the Feast feature repo artefact (feature_repo)")
    users, cutoffs = summary_requests(splits, targets)
    return FeastSummaries(feature_repo, users, cutoffs)
