"""The pipeline step behind `materialize_summaries`: snapshots -> offline parquet -> online store,
all inside a new self-contained feature repo folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from genrec.config import GenrecConfig
from genrec.data.schema import SPLIT_COLUMN
from genrec.features.repo import FeatureRepo, MaterializeStats
from genrec.features.schema import ITEM_SID_VIEW, USER_SUMMARY_VIEW
from genrec.vista.snapshot import RefreshSchedule, SnapshotBuilder, latest_snapshots
from genrec.vista.train import TrainedSummarizer


@dataclass
class SummaryMaterialization:
    repo: FeatureRepo
    schedule: RefreshSchedule
    snapshots: pd.DataFrame
    snapshot_seconds: float
    online: list[MaterializeStats]

    @property
    def latest(self) -> pd.DataFrame:
        return latest_snapshots(self.snapshots)

    def metrics(self) -> dict[str, Any]:
        online = {s.view: s for s in self.online}
        summaries = online[USER_SUMMARY_VIEW]
        users = self.snapshots["user_id"].nunique()
        return {
            "users": users,
            "rows": len(self.snapshots),
            "rows_per_user": len(self.snapshots) / max(users, 1),
            "snapshot_seconds": self.snapshot_seconds,
            "materialize_seconds": summaries.seconds,
            "materialize_users_per_second": summaries.entities_per_second,
            "item_sids": online[ITEM_SID_VIEW].entities if ITEM_SID_VIEW in online else 0,
        }


def snapshot_rows(interactions: pd.DataFrame, config: GenrecConfig) -> pd.DataFrame:
    """The interactions snapshots may include (`vista.snapshot_splits`; all rows when unsplit)."""
    if SPLIT_COLUMN not in interactions.columns:
        return interactions
    return interactions[interactions[SPLIT_COLUMN].isin(config.vista.snapshot_splits)]


def materialize_user_summaries(config: GenrecConfig, interactions: pd.DataFrame, summarizer_path: str | Path,
                               repo_dir: str | Path,
                               item_sids: pd.DataFrame | None = None) -> SummaryMaterialization:
    """Builds every snapshot with the trained summariser, creates the feature repo at `repo_dir`,
    writes the offline parquet (summaries, item SIDs when given, the included interactions and a copy
    of the model), registers the definitions and loads the newest rows into the online store."""
    summarizer = TrainedSummarizer.load(summarizer_path)
    rows = snapshot_rows(interactions, config)
    schedule = RefreshSchedule.resolve(config.vista, rows, config.data.order_only_epoch)
    start = time.perf_counter()
    snapshots = SnapshotBuilder(summarizer, schedule, config.vista.snapshot_batch_users,
                                config.vista.threads).build(rows)
    snapshot_seconds = time.perf_counter() - start

    repo = FeatureRepo.create(repo_dir, config.features)
    repo.write_user_summaries(snapshots)
    repo.write_item_sids(item_sids, config.features.static_timestamp)
    repo.write_history(rows)
    repo.save_model(summarizer_path)
    repo.apply()
    views = (USER_SUMMARY_VIEW, ITEM_SID_VIEW) if item_sids is not None else (USER_SUMMARY_VIEW,)
    online = repo.materialize(views, config.features.online_write_batch_rows)
    result = SummaryMaterialization(repo, schedule, snapshots, snapshot_seconds, online)
    repo.update_manifest(schedule=schedule.describe(), snapshot_splits=list(config.vista.snapshot_splits),
                         summary_shape=[config.vista.summary_tokens, config.vista.dim],
                         dataset=config.data.dataset, **result.metrics())
    return result
