"""The newest user summaries straight into Feast's Redis online store, in Feast's own layout.

`FeatureStore.write_to_online_store` turns a frame into Arrow, then into protos column by column,
then reads every user's stored timestamp before writing (two round trips), and skips a user whose
stored snapshot is as new as the one written: a re-run with a retrained summariser over the same
log would leave the old summaries in place. This writer builds the same hash per user (the key from
Feast's `_redis_key`, the fields from Feast's `_mmh3` names, the values as Feast's ValueProto and
Timestamp bytes) and writes it in one pipelined round trip per batch, always: the run's newest
snapshot is the one to serve. `tests/test_features_redis.py` holds the bytes it writes equal to
what Feast writes, and Feast reads them back.

It needs only the repo's feature_store.yaml (no registry load), so every Ray task opens one cheaply.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd

from genrec.features.schema import (
    EVENT_TIMESTAMP,
    N_ITEMS,
    SUMMARY,
    SUMMARY_SHAPE,
    USER_ID,
    USER_SUMMARY_VIEW,
)


class RedisSummaryWriter:
    """Writes rows of (user_id, event_timestamp, summary, summary_shape, n_items) into Redis."""

    def __init__(self, repo_path: str | Path, store_yaml: str = "feature_store.yaml") -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
        from feast.repo_config import load_repo_config

        path = Path(repo_path)
        self.config = load_repo_config(path, path / store_yaml)
        online = self.config.online_store
        if not isinstance(online, RedisOnlineStoreConfig):
            raise ValueError(f"{path / store_yaml} has a {type(online).__name__}, not Feast's Redis online "
                             "store: write it with FeatureStore.write_to_online_store")
        if getattr(self.config.registry, "enable_online_feature_view_versioning", False):
            raise ValueError(f"{path / store_yaml} versions its online feature views, which this writer "
                             "does not name: write it with FeatureStore.write_to_online_store")
        self.client = RedisOnlineStore()._get_client(online)
        self.ttl_seconds = online.key_ttl_seconds
        self.project = self.config.project
        self.key_version = self.config.entity_key_serialization_version

    def write(self, frame: pd.DataFrame, batch_rows: int) -> int:
        """Writes every row (one user each); returns how many."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Int64List, Value
        from google.protobuf.timestamp_pb2 import Timestamp

        fields = _field_keys()
        users = frame[USER_ID].astype(str).to_numpy()
        # Feast stores a timestamp to the microsecond of a timezone-aware datetime.
        times = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True).dt.tz_localize(None)
        micros = times.to_numpy().astype("datetime64[us]").astype("int64")
        summaries = frame[SUMMARY].to_numpy()
        shapes = frame[SUMMARY_SHAPE].to_numpy()
        n_items = frame[N_ITEMS].to_numpy()
        for first in range(0, len(frame), batch_rows):
            with self.client.pipeline(transaction=False) as pipe:
                for row in range(first, min(first + batch_rows, len(frame))):
                    entity = EntityKey(join_keys=[USER_ID], entity_values=[Value(string_val=users[row])])
                    key = _redis_key(self.project, entity, entity_key_serialization_version=self.key_version)
                    seconds, micro = divmod(int(micros[row]), 1_000_000)
                    mapping = {
                        fields["ts"]: Timestamp(seconds=seconds, nanos=micro * 1000).SerializeToString(),
                        fields[SUMMARY]: Value(bytes_val=summaries[row]).SerializeToString(),
                        fields[SUMMARY_SHAPE]: Value(int64_list_val=Int64List(
                            val=[int(v) for v in shapes[row]])).SerializeToString(),
                        fields[N_ITEMS]: Value(int64_val=int(n_items[row])).SerializeToString(),
                    }
                    pipe.hset(key, mapping=mapping)
                    if self.ttl_seconds:
                        pipe.expire(name=key, time=self.ttl_seconds)
                pipe.execute()
        return len(frame)


@functools.cache
def _field_keys() -> dict[str, Any]:
    """The hash field of each feature (Feast's murmur3 of "view:feature") and of the timestamp."""
    from feast.infra.online_stores.helpers import _mmh3

    keys: dict[str, Any] = {name: _mmh3(f"{USER_SUMMARY_VIEW}:{name}")
                            for name in (SUMMARY, SUMMARY_SHAPE, N_ITEMS)}
    keys["ts"] = f"_ts:{USER_SUMMARY_VIEW}"
    return keys
