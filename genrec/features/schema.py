"""Names and table schemas of genrec's Feast feature views, as feature_repo/features.py declares them."""

from __future__ import annotations

import pyarrow as pa

from genrec.vista.snapshot import (
    EVENT_TIMESTAMP,
    N_ITEMS,
    SNAPSHOT_SCHEMA,
    SUMMARY,
    SUMMARY_SHAPE,
    USER_ID,
)

USER_ENTITY = "user"
ITEM_ENTITY = "item"
ITEM_ID = "item_id"

USER_SUMMARY_VIEW = "user_summary"
USER_SUMMARY_FIELDS = (SUMMARY, SUMMARY_SHAPE, N_ITEMS)
USER_SUMMARY_FEATURES = [f"{USER_SUMMARY_VIEW}:{name}" for name in USER_SUMMARY_FIELDS]
USER_SUMMARY_SCHEMA = SNAPSHOT_SCHEMA

ITEM_SID_VIEW = "item_sid"
SID = "sid"
ITEM_SID_FEATURES = [f"{ITEM_SID_VIEW}:{SID}"]
ITEM_SID_SCHEMA = pa.schema([
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(EVENT_TIMESTAMP, pa.timestamp("ns", tz="UTC"), nullable=False),
    pa.field(SID, pa.list_(pa.int64()), nullable=False),
])

# Where each view's offline parquet lives, relative to the repo folder (the FileSource paths). The
# summaries are a partitioned folder (user buckets, genrec.data.partitioned): a log of 100M events
# has some 10M snapshots of 1 KB, written by the bucket tasks that make them.
OFFLINE_PATHS = {
    USER_SUMMARY_VIEW: "data/user_summaries",
    ITEM_SID_VIEW: "data/item_sids.parquet",
}
ENTITY_KEYS = {USER_SUMMARY_VIEW: USER_ID, ITEM_SID_VIEW: ITEM_ID}

__all__ = [
    "EVENT_TIMESTAMP",
    "ITEM_ENTITY",
    "ITEM_ID",
    "ITEM_SID_FEATURES",
    "ITEM_SID_SCHEMA",
    "ITEM_SID_VIEW",
    "N_ITEMS",
    "OFFLINE_PATHS",
    "SID",
    "SUMMARY",
    "SUMMARY_SHAPE",
    "USER_ENTITY",
    "USER_ID",
    "USER_SUMMARY_FEATURES",
    "USER_SUMMARY_SCHEMA",
    "USER_SUMMARY_VIEW",
]
