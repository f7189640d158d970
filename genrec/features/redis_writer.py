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
import struct
from collections.abc import Callable
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
        fields = _field_keys()
        users = frame[USER_ID].astype(str).tolist()
        # Feast stores a timestamp to the microsecond of a timezone-aware datetime.
        micros = (pd.DatetimeIndex(pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)).asi8 // 1000).tolist()
        summaries = frame[SUMMARY].tolist()
        shapes = [tuple(int(v) for v in shape) for shape in frame[SUMMARY_SHAPE].tolist()]
        n_items = [int(n) for n in frame[N_ITEMS].tolist()]
        key_of = self._key_function()
        encoded_shapes = {shape: _int64_list(shape) for shape in set(shapes)}
        for first in range(0, len(frame), batch_rows):
            with self.client.pipeline(transaction=False) as pipe:
                for row in range(first, min(first + batch_rows, len(frame))):
                    key = key_of(users[row])
                    pipe.hset(key, mapping={
                        fields["ts"]: _timestamp(micros[row]),
                        fields[SUMMARY]: _bytes_value(summaries[row]),
                        fields[SUMMARY_SHAPE]: encoded_shapes[shapes[row]],
                        fields[N_ITEMS]: _int64(n_items[row]),
                    })
                    if self.ttl_seconds:
                        pipe.expire(name=key, time=self.ttl_seconds)
                pipe.execute()
        return len(frame)

    def _key_function(self) -> Callable[[str], bytes]:
        """user id -> Redis key: Feast's `_redis_key` of the entity key {user_id: id}. For Feast's
        serialisation version 3 (its default) the bytes are put together here, the same in a tenth
        of the time; other versions go through Feast."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value, ValueType

        project = self.project.encode("utf-8")
        if self.key_version != 3:
            version = self.key_version
            return lambda user: _redis_key(
                self.project, EntityKey(join_keys=[USER_ID], entity_values=[Value(string_val=user)]),
                entity_key_serialization_version=version)
        name = USER_ID.encode("utf8")
        string_type = struct.pack("<I", ValueType.STRING)
        head = struct.pack("<I", 1) + string_type + struct.pack("<I", len(name)) + name + string_type

        def key(user: str) -> bytes:
            encoded = user.encode("utf8")
            return head + struct.pack("<I", len(encoded)) + encoded + project

        return key


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


# The two messages written per user in protobuf's wire format by hand (tests/test_features_redis.py
# checks the bytes against Feast's writer): Value.bytes_val is field 1 (length-delimited);
# Timestamp.seconds is field 1 and nanos field 2 (varints, left out when zero).
def _bytes_value(data: bytes) -> bytes:
    return b"\x0a" + _varint(len(data)) + data


def _int64(value: int) -> bytes:
    from feast.protos.feast.types.Value_pb2 import Value

    return Value(int64_val=value).SerializeToString()


def _int64_list(values: tuple[int, ...]) -> bytes:
    from feast.protos.feast.types.Value_pb2 import Int64List, Value

    return Value(int64_list_val=Int64List(val=list(values))).SerializeToString()


def _timestamp(micros: int) -> bytes:
    seconds, micro = divmod(micros, 1_000_000)
    out = b"\x08" + _varint(seconds) if seconds else b""
    return out + (b"\x10" + _varint(micro * 1000) if micro else b"")


@functools.cache
def _field_keys() -> dict[str, Any]:
    """The hash field of each feature (Feast's murmur3 of "view:feature") and of the timestamp."""
    from feast.infra.online_stores.helpers import _mmh3

    keys: dict[str, Any] = {name: _mmh3(f"{USER_SUMMARY_VIEW}:{name}")
                            for name in (SUMMARY, SUMMARY_SHAPE, N_ITEMS)}
    keys["ts"] = f"_ts:{USER_SUMMARY_VIEW}"
    return keys
