"""genrec's Feast definitions: the user and item entities, and the feature views served from them.

Declarative only (no genrec imports), so that `feast apply` works in any copy of this folder.
genrec.features.schema repeats these names for the library; a test keeps the two in step.

user_summary: VISTA snapshots of a user's history, one row per user per refresh, with
  event_timestamp = the time of the last interaction a snapshot includes. The K x d float32 summary is
  stored as raw bytes plus its shape: Array(Float32) of K x d floats is about 10x slower to read from
  the sqlite online store. n_items = how many of the user's earliest interactions it covers, so that
  a consumer knows which raw items came after it.
item_sid: an item's semantic ID (one code per level), valid for the whole run (event_timestamp early).
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bytes, Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A user (advertising audience member).")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="An item (ad).")

user_summaries_source = FileSource(
    name="user_summaries_source",
    # A folder of parquet parts, one per bucket of users (a _partitioning.json beside them).
    path="data/user_summaries",
    timestamp_field="event_timestamp",
    description="Every snapshot of every user's summary.",
)

item_sids_source = FileSource(
    name="item_sids_source",
    path="data/item_sids.parquet",
    timestamp_field="event_timestamp",
    description="Semantic-ID codes of every item.",
)

user_summary = FeatureView(
    name="user_summary",
    entities=[user],
    # No TTL: a summary stays valid until the next refresh replaces it, however long that takes.
    ttl=timedelta(0),
    schema=[
        Field(name="summary", dtype=Bytes, description="K x d float32, C order"),
        Field(name="summary_shape", dtype=Array(Int64), description="[K, d]"),
        Field(name="n_items", dtype=Int64, description="interactions the summary includes"),
    ],
    source=user_summaries_source,
    online=True,
    tags={"producer": "genrec.vista"},
)

item_sid = FeatureView(
    name="item_sid",
    entities=[item],
    ttl=timedelta(0),
    schema=[Field(name="sid", dtype=Array(Int64), description="semantic-ID codes c0, c1, ... per level")],
    source=item_sids_source,
    online=True,
    tags={"producer": "genrec.sid"},
)
