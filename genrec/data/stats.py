"""Figures and plots that describe a data set in the contract."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from genrec.data.schema import DatasetInfo
from genrec.report import HtmlReport


def dataset_stats(interactions: pd.DataFrame, catalogue: pd.DataFrame) -> dict[str, float | int]:
    per_user = interactions.groupby("user_id", sort=False).size()
    per_item = interactions.groupby("item_id", sort=False).size()
    users, items = int(per_user.size), int(len(catalogue))
    stats: dict[str, float | int] = {
        "users": users,
        "items": items,
        "interactions": int(len(interactions)),
        "density": float(len(interactions) / max(users * items, 1)),
        "history_mean": float(per_user.mean()) if users else 0.0,
        "history_p50": float(per_user.median()) if users else 0.0,
        "history_p95": float(per_user.quantile(0.95)) if users else 0.0,
        "history_max": int(per_user.max()) if users else 0,
        "items_never_seen": int(items - per_item.size),
        "value_mean": float(interactions["value"].mean()) if len(interactions) else 0.0,
        "value_p95": float(interactions["value"].quantile(0.95)) if len(interactions) else 0.0,
    }
    if "title" in catalogue.columns:
        stats["items_with_text"] = int((catalogue["title"].notna() | catalogue["description"].notna()).sum())
        stats["items_with_brand"] = int(catalogue["brand"].notna().sum())
    return stats


def stats_report(
    interactions: pd.DataFrame, catalogue: pd.DataFrame, info: DatasetInfo, stats: dict[str, Any]
) -> HtmlReport:
    report = HtmlReport(f"genrec data set: {info.name}")
    report.note(f"source: {info.source}; value: {info.value_source}; timestamps: "
                f"{'real' if info.has_timestamps else 'sequence order'}")
    for note in info.notes:
        report.note(note)
    report.heading("Figures").figures(stats)
    per_user = interactions.groupby("user_id", sort=False).size().to_numpy()
    per_item = np.sort(interactions.groupby("item_id", sort=False).size().to_numpy())[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].hist(per_user, bins=50, color="#4c72b0")
    axes[0].set(title="history length per user", xlabel="interactions", ylabel="users", yscale="log")
    axes[1].loglog(np.arange(1, per_item.size + 1), per_item, color="#dd8452")
    axes[1].set(title="item popularity (rank vs count)", xlabel="rank", ylabel="interactions")
    axes[2].hist(np.log1p(catalogue["value"].to_numpy()), bins=50, color="#55a868")
    axes[2].set(title=f"item value, log1p ({info.value_source})", xlabel="log(1+value)", ylabel="items")
    report.heading("Distributions").plot(fig)
    if "split" in interactions.columns:
        counts = interactions["split"].value_counts()
        rows = [[name, int(count)] for name, count in counts.items()]
        report.heading("Leave-one-out split").table(["split", "rows"], rows)
    return report
