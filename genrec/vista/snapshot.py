"""Summary snapshots on a refresh schedule, as production refreshes them.

A user's summary is recomputed at the end of every refresh segment: a calendar period (one UTC day by
default) on data with real timestamps, or a run of S interactions on order-only data. Each snapshot
row is (user_id, event_timestamp = (sequence) time of the LAST interaction it includes, summary
bytes, summary shape, n_items = how many of the user's earliest interactions it includes). The
last segment of a user may be partial: it stands for the refresh that runs at the end of the log.

Order-only sources (Amazon Beauty / Scientific) carry synthetic timestamps, one second per position
from `data.order_only_epoch`, so their "time" is a position and only the count schedule makes sense;
`refresh: auto` picks it when it recognises such timestamps.

A training example at time t, joined point in time, gets the latest snapshot strictly before t,
plus the raw items after that snapshot (index >= n_items) as its recent items. Storage is one row
per user per segment, never one per interaction.

Ties: many logs (MovieLens) hold several interactions of a user in the same second, in a defined
sequence order. Times are therefore made "sequence times" before they meet a point-in-time join:
the timestamp plus one microsecond per earlier interaction of the same user at the same timestamp
(`sequence_times`). Snapshots carry the sequence time of their last interaction; an example whose
entity row carries the sequence time of its target sees exactly the snapshots that precede the
target in sequence order. An entity row with the raw timestamp stays safe (never sees a snapshot
that includes its target) but skips snapshots that end in a tie with it.

Summaries are computed without re-reading history: per-segment attention sums (a fixed offset makes
them add) are accumulated across a user's segments, so building every snapshot costs O(history).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from genrec.config import VistaConfig
from genrec.vista.data import time_ordered
from genrec.vista.model import AttentionSums
from genrec.vista.train import TrainedSummarizer, torch_threads

SUMMARY_DTYPE = np.float32

USER_ID = "user_id"
EVENT_TIMESTAMP = "event_timestamp"
SUMMARY = "summary"
SUMMARY_SHAPE = "summary_shape"
N_ITEMS = "n_items"

SNAPSHOT_SCHEMA = pa.schema([
    pa.field(USER_ID, pa.string(), nullable=False),
    pa.field(EVENT_TIMESTAMP, pa.timestamp("ns", tz="UTC"), nullable=False),
    pa.field(SUMMARY, pa.binary(), nullable=False),
    pa.field(SUMMARY_SHAPE, pa.list_(pa.int64()), nullable=False),
    pa.field(N_ITEMS, pa.int64(), nullable=False),
])


# One step of a sequence time: ties in a second are spread by this much (see the module notes).
TIE_STEP = pd.Timedelta(1, "us")


def sequence_times(interactions: pd.DataFrame) -> pd.Series:
    """Timestamp + TIE_STEP x (earlier interactions of the same user at the same timestamp), for
    rows in sequence order within each user (as the data contract keeps them)."""
    rank = interactions.groupby([interactions["user_id"], interactions["timestamp"]], sort=False).cumcount()
    return interactions["timestamp"] + rank.to_numpy() * TIE_STEP


def encode_summary(summary: np.ndarray) -> tuple[bytes, list[int]]:
    """float32 bytes (C order) and shape: compact and fast in every online store."""
    array = np.ascontiguousarray(summary, dtype=SUMMARY_DTYPE)
    return array.tobytes(), list(array.shape)


def decode_summary(data: bytes, shape: list[int] | tuple[int, ...] | np.ndarray) -> np.ndarray:
    return np.frombuffer(data, dtype=SUMMARY_DTYPE).reshape(tuple(int(s) for s in shape))


def looks_order_only(interactions: pd.DataFrame, epoch: str) -> bool:
    """True when the timestamps are the synthetic ones of an order-only source: every user starts at
    `epoch` and advances exactly one second per interaction."""
    if interactions.empty:
        return False
    ordered = time_ordered(interactions)
    start = pd.Timestamp(epoch)
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    expected = start + pd.to_timedelta(position, unit="s")
    return bool((ordered["timestamp"].to_numpy() == expected.to_numpy()).all())


@dataclass(frozen=True)
class RefreshSchedule:
    """When a user's summary is refreshed: every `period` of time, or every `every` interactions."""

    kind: str  # "period" or "count"
    period: pd.Timedelta
    every: int

    @classmethod
    def resolve(cls, config: VistaConfig, interactions: pd.DataFrame | None,
                order_only_epoch: str, order_only: bool | None = None) -> RefreshSchedule:
        """The schedule `config` asks for; "auto" looks at the interactions, or takes `order_only` when
        it was decided elsewhere (bucket by bucket)."""
        try:
            period = pd.Timedelta(pd.tseries.frequencies.to_offset(config.refresh_period))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"vista.refresh_period {config.refresh_period!r} is not a fixed-length pandas "
                             "frequency such as 1D or 6h") from exc
        kind = config.refresh
        if kind == "auto":
            if order_only is None:
                order_only = interactions is not None and looks_order_only(interactions, order_only_epoch)
            kind = "count" if order_only else "period"
        return cls(kind, period, config.refresh_every_interactions)

    def describe(self) -> str:
        if self.kind == "count":
            return f"every {self.every} interactions"
        return f"every {self.period} (UTC)"

    def segment_keys(self, timestamps: pd.Series, positions: np.ndarray) -> np.ndarray:
        """A key per row (rows in time order within each user) that changes where a segment ends."""
        if self.kind == "count":
            return positions // self.every
        nanos = timestamps.astype("int64").to_numpy()
        return nanos // self.period.value


class SnapshotBuilder:
    """Builds every snapshot of every user from their interactions (already restricted to what the
    snapshots may include), in batches of users."""

    def __init__(self, summarizer: TrainedSummarizer, schedule: RefreshSchedule, batch_users: int,
                 threads: int = 0) -> None:
        self.summarizer = summarizer
        self.schedule = schedule
        self.batch_users = batch_users
        self.threads = threads

    def build(self, interactions: pd.DataFrame) -> pd.DataFrame:
        ordered = time_ordered(interactions)
        if ordered.empty:
            return SNAPSHOT_SCHEMA.empty_table().to_pandas()
        user_codes, user_ids = pd.factorize(ordered[USER_ID].astype(str), sort=True)
        positions = ordered.groupby(user_codes, sort=False).cumcount().to_numpy()
        keys = self.schedule.segment_keys(ordered["timestamp"], positions)
        starts_segment = np.r_[True, (user_codes[1:] != user_codes[:-1]) | (keys[1:] != keys[:-1])]
        segment_of_row = np.cumsum(starts_segment) - 1
        segment_end = np.flatnonzero(np.r_[starts_segment[1:], True])  # last row of each segment
        item_rows = self.summarizer.vocab.encode(ordered["item_id"])
        user_start = np.searchsorted(user_codes, np.arange(len(user_ids) + 1))

        summaries = []
        with torch_threads(self.threads), torch.no_grad():
            for first_user in range(0, len(user_ids), self.batch_users):
                last_user = min(first_user + self.batch_users, len(user_ids))
                rows = slice(user_start[first_user], user_start[last_user])
                summaries.append(self._batch(item_rows[rows], segment_of_row[rows], user_codes[rows]))
        summary = np.concatenate(summaries)
        shape = list(summary.shape[1:])
        return pd.DataFrame({
            USER_ID: np.asarray(user_ids)[user_codes[segment_end]],
            EVENT_TIMESTAMP: sequence_times(ordered).to_numpy()[segment_end],
            SUMMARY: [row.tobytes() for row in summary],
            SUMMARY_SHAPE: [shape] * len(summary),
            N_ITEMS: positions[segment_end] + 1,
        }).astype({EVENT_TIMESTAMP: "datetime64[ns, UTC]"})

    def _batch(self, item_rows: np.ndarray, segment_of_row: np.ndarray,
               user_of_row: np.ndarray) -> np.ndarray:
        """Summaries [segments, K, d] of one batch of users' segments, each covering everything up to
        its end: segment sums (float64) accumulated within each user."""
        model, chunk = self.summarizer.model, self.summarizer.config.chunk_size
        first = int(segment_of_row[0])
        segments = int(segment_of_row[-1]) - first + 1
        shape = model.shape
        numerator = torch.zeros(segments, shape.tokens, shape.heads, shape.head_dim, dtype=torch.float64)
        denominator = torch.zeros(segments, shape.tokens, shape.heads, dtype=torch.float64)
        for start in range(0, len(item_rows), chunk):
            sums = model.attention_sums(torch.from_numpy(item_rows[start:start + chunk]))
            index = torch.from_numpy(segment_of_row[start:start + chunk] - first)
            numerator.index_add_(0, index, sums.numerator.double())
            denominator.index_add_(0, index, sums.denominator.double())
        # Running totals across the batch, minus the total before each user's first segment.
        segment_user = np.zeros(segments, dtype=np.int64)
        segment_user[segment_of_row - first] = user_of_row
        new_user = np.r_[True, segment_user[1:] != segment_user[:-1]]
        before_user = np.maximum.accumulate(np.where(new_user, np.arange(segments), 0)) - 1
        numerator, denominator = numerator.cumsum(0), denominator.cumsum(0)
        has_before = torch.from_numpy(before_user >= 0)
        index = torch.from_numpy(np.maximum(before_user, 0))
        numerator = numerator - numerator[index] * has_before[:, None, None, None]
        denominator = denominator - denominator[index] * has_before[:, None, None]
        out = model.readout(AttentionSums(numerator, denominator))
        return out.numpy().astype(SUMMARY_DTYPE, copy=False)


def latest_snapshots(snapshots: pd.DataFrame) -> pd.DataFrame:
    """The newest snapshot of each user: what serving reads."""
    ordered = snapshots.sort_values([USER_ID, EVENT_TIMESTAMP], kind="stable")
    return ordered.drop_duplicates(USER_ID, keep="last").reset_index(drop=True)
