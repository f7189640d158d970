"""How summary tokens reach the model: a provider maps (users, cutoff times) to [B, K, d_s].

The point-in-time rule: a request at time t may only use a summary snapshot taken strictly before
t, so a training example never sees a summary that includes the item it predicts. The Feast-backed
provider (offline `get_historical_features` for training, online store for serving) implements the
same call; `SnapshotSummaries` is the in-memory version used by tests and by anyone who already
holds the snapshot table.
"""

from __future__ import annotations

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


def summary_provider_for(config: GenrecConfig, feature_repo: str | Path | None) -> SummaryProvider | None:
    """The provider a component uses: none unless `model.use_summary` is on, else the snapshots of
    the run's Feast feature repo."""
    if not config.model.use_summary:
        return None
    if feature_repo is None:
        raise ValueError("model.use_summary is on: pass the Feast feature repo artefact (feature_repo)")
    return feature_repo_summaries(feature_repo)
