"""Figures and plots that describe a data set in the contract.

They are computed from a `DatasetProfile`: interactions per user and per item, the value column's
sum and 95th percentile, rows per split. A profile adds up bucket by bucket (each user in one
bucket), so the Ray engine never holds the log; the 95th percentile of value is exact either way
(`genrec.data.quantile`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from genrec.data.schema import SPLIT_COLUMN, DatasetInfo
from genrec.report import HtmlReport

VALUE_QUANTILE = 0.95


@dataclass
class DatasetProfile:
    history_lengths: np.ndarray  # interactions per user, one entry per user (any order)
    item_counts: pd.Series  # interactions per item id
    rows: int
    value_sum: float
    value_count: int
    value_p95: float = float("nan")
    split_rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, interactions: pd.DataFrame, value_p95: float | None = None) -> DatasetProfile:
        """The profile of a frame: a whole log, or one bucket (whose p95 the caller adds up)."""
        values = interactions["value"].to_numpy(dtype="float64")
        present = values[~np.isnan(values)]
        splits = ({str(k): int(v) for k, v in interactions[SPLIT_COLUMN].value_counts().items()}
                  if SPLIT_COLUMN in interactions.columns else {})
        if value_p95 is None:
            value_p95 = float(interactions["value"].quantile(VALUE_QUANTILE)) if len(present) else np.nan
        return cls(
            history_lengths=interactions.groupby("user_id", sort=False).size().to_numpy(),
            item_counts=interactions.groupby("item_id", sort=False).size(),
            rows=len(interactions),
            value_sum=float(present.sum()),
            value_count=len(present),
            value_p95=value_p95,
            split_rows=splits,
        )

    @classmethod
    def combine(cls, parts: list[DatasetProfile], value_p95: float) -> DatasetProfile:
        """The profile of a log from its buckets' (users never span two buckets)."""
        counts = [p.item_counts for p in parts if len(p.item_counts)]
        splits: dict[str, int] = {}
        for part in parts:
            for name, rows in part.split_rows.items():
                splits[name] = splits.get(name, 0) + rows
        lengths = [p.history_lengths for p in parts] or [np.array([], dtype=np.int64)]
        return cls(
            history_lengths=np.concatenate(lengths),
            item_counts=(pd.concat(counts).groupby(level=0, sort=False).sum() if counts
                         else pd.Series(dtype=np.int64)),
            rows=sum(p.rows for p in parts),
            value_sum=float(sum(p.value_sum for p in parts)),
            value_count=sum(p.value_count for p in parts),
            value_p95=value_p95,
            split_rows=splits,
        )


def dataset_stats(profile: DatasetProfile, catalogue: pd.DataFrame) -> dict[str, float | int]:
    per_user = pd.Series(profile.history_lengths)
    users, items = int(per_user.size), int(len(catalogue))
    stats: dict[str, float | int] = {
        "users": users,
        "items": items,
        "interactions": profile.rows,
        "density": float(profile.rows / max(users * items, 1)),
        "history_mean": float(per_user.mean()) if users else 0.0,
        "history_p50": float(per_user.median()) if users else 0.0,
        "history_p95": float(per_user.quantile(0.95)) if users else 0.0,
        "history_max": int(per_user.max()) if users else 0,
        "items_never_seen": int(items - profile.item_counts.size),
        "value_mean": profile.value_sum / profile.value_count if profile.value_count else 0.0,
        "value_p95": profile.value_p95 if profile.value_count else 0.0,
    }
    if "title" in catalogue.columns:
        stats["items_with_text"] = int((catalogue["title"].notna() | catalogue["description"].notna()).sum())
        stats["items_with_brand"] = int(catalogue["brand"].notna().sum())
    return stats


def stats_report(profile: DatasetProfile, catalogue: pd.DataFrame, info: DatasetInfo,
                 stats: dict[str, Any]) -> HtmlReport:
    report = HtmlReport(f"genrec data set: {info.name}")
    report.note(f"source: {info.source}; value: {info.value_source}; timestamps: "
                f"{'real' if info.has_timestamps else 'sequence order'}")
    for note in info.notes:
        report.note(note)
    report.heading("Figures").figures(stats)
    per_item = np.sort(profile.item_counts.to_numpy())[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].hist(profile.history_lengths, bins=50, color="#4c72b0")
    axes[0].set(title="history length per user", xlabel="interactions", ylabel="users", yscale="log")
    axes[1].loglog(np.arange(1, per_item.size + 1), per_item, color="#dd8452")
    axes[1].set(title="item popularity (rank vs count)", xlabel="rank", ylabel="interactions")
    axes[2].hist(np.log1p(catalogue["value"].to_numpy()), bins=50, color="#55a868")
    axes[2].set(title=f"item value, log1p ({info.value_source})", xlabel="log(1+value)", ylabel="items")
    report.heading("Distributions").plot(fig)
    if profile.split_rows:
        rows = [[name, count] for name, count in sorted(profile.split_rows.items(), key=lambda kv: -kv[1])]
        report.heading("Leave-one-out split").table(["split", "rows"], rows)
    return report
