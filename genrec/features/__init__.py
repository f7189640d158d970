"""Feast for genrec: a self-contained feature repo per run (file offline store, sqlite or Redis
online store), user-summary snapshots in and out of it, and the analyst CLI (`features_app`).

Feast itself is imported lazily, inside the functions that use it."""

from genrec.features.materialize import SummaryMaterialization, materialize_user_summaries
from genrec.features.read import (
    decode_summaries,
    example_times,
    historical_summaries,
    online_summaries,
    online_summary_records,
    point_in_time_summaries,
)
from genrec.features.repo import FeatureRepo, FeatureRepoError, MaterializeStats

__all__ = [
    "FeatureRepo",
    "FeatureRepoError",
    "MaterializeStats",
    "SummaryMaterialization",
    "decode_summaries",
    "example_times",
    "historical_summaries",
    "materialize_user_summaries",
    "online_summaries",
    "online_summary_records",
    "point_in_time_summaries",
]
