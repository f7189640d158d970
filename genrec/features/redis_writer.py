"""The newest user summaries straight into Feast's Redis online store, in Feast's own layout.

`FeatureStore.write_to_online_store` turns a frame into Arrow, then into protos column by column,
then reads every user's stored timestamp before writing (two round trips), and skips a user whose
stored snapshot is as new as the one written: a re-run with a retrained summariser over the same
log would leave the old summaries in place. This writer builds the same hash per user (the key from
Feast's `_redis_key`, the fields from Feast's `_mmh3` names, the values as Feast's ValueProto and
Timestamp bytes) and writes it in one round trip per batch (RESP put together here), always: the run's newest
snapshot is the one to serve. `tests/test_features_redis.py` holds the bytes it writes equal to
what Feast writes, and Feast reads them back.

It reads only the repo's feature_store.yaml, as Feast does (environment variables expanded), and does
not import Feast for a plain Redis: importing Feast takes seconds, once in every Ray worker that
writes. A Redis cluster or sentinel, a `glide` client, another key serialisation or versioned views
go through Feast's own client and key functions.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from genrec.features.schema import (
    EVENT_TIMESTAMP,
    N_ITEMS,
    SUMMARY,
    SUMMARY_SHAPE,
    USER_ID,
    USER_SUMMARY_VIEW,
)

# Feast's defaults: entity key serialisation, and the connection string of a Redis store.
DEFAULT_KEY_VERSION = 3
DEFAULT_CONNECTION = "localhost:6379"
# feast.types.Value.ValueType.STRING, the type tag of a string join key in a serialised entity key.
STRING_VALUE_TYPE = 2
UINT64 = (1 << 64) - 1
# RESP heads: HSET with the key and four field-value pairs; EXPIRE with the key and the seconds.
HSET_HEAD = b"*10\r\n$4\r\nHSET\r\n"
EXPIRE_HEAD = b"*3\r\n$6\r\nEXPIRE\r\n"


class RedisSummaryWriter:
    """Writes rows of (user_id, event_timestamp, summary, summary_shape, n_items) into Redis."""

    def __init__(self, repo_path: str | Path, store_yaml: str = "feature_store.yaml") -> None:
        path = Path(repo_path) / store_yaml
        settings = yaml.safe_load(os.path.expandvars(path.read_text())) or {}
        online = settings.get("online_store") or {}
        if not isinstance(online, dict) or online.get("type") != "redis":
            raise ValueError(f"{path} has no Redis online store (online_store.type: redis): write it with "
                             "FeatureStore.write_to_online_store")
        registry = settings.get("registry")
        if isinstance(registry, dict) and registry.get("enable_online_feature_view_versioning"):
            raise ValueError(f"{path} versions its online feature views, which this writer does not name: "
                             "write it with FeatureStore.write_to_online_store")
        self.project = str(settings["project"])
        self.key_version = int(settings.get("entity_key_serialization_version", DEFAULT_KEY_VERSION))
        self.ttl_seconds = online.get("key_ttl_seconds")
        self.connection_string = str(online.get("connection_string", DEFAULT_CONNECTION))
        self.plain = online.get("redis_type", "redis") == "redis" and online.get("client", "redis") == "redis"
        self.client = self._plain_client() if self.plain else self._feast_client(path)

    def _plain_client(self) -> Any:
        """A redis-py client as Feast's Redis store makes it for `redis_type: redis`."""
        import redis

        nodes, params = parse_connection_string(self.connection_string)
        return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)

    @staticmethod
    def _feast_client(path: Path) -> Any:
        from feast.infra.online_stores.redis import RedisOnlineStore
        from feast.repo_config import load_repo_config

        config = load_repo_config(path.parent, path)
        return RedisOnlineStore()._get_client(config.online_store)

    def write(self, frame: pd.DataFrame, batch_rows: int) -> int:
        """Writes every row (one user each); returns how many.

        To a plain Redis, each batch goes out as one buffer of RESP commands put together here, and
        its replies are read back and checked. redis-py's pipeline makes a command object, packs the
        arguments and parses a reply per user in Python: one writer of 256-byte summaries managed
        about 60,000 users/s through it, and about 110,000 this way. `write_pipelined` is the simple
        reference, and the path for clustered Redis."""
        if not self.plain:
            return self.write_pipelined(frame, batch_rows)
        rows = _SummaryRows.of(frame)
        key_of = self._key_function()
        fields = {name: _bulk(field if isinstance(field, bytes) else field.encode("utf8"))
                  for name, field in _field_keys().items()}
        shapes = {shape: fields[SUMMARY_SHAPE] + _bulk(_int64_list(shape)) for shape in set(rows.shapes)}
        # A summary's value is a ValueProto of bytes: its head depends only on the length, and the
        # summaries of a run share one length.
        summary_heads: dict[int, bytes] = {}
        expire = (b"$%d\r\n%d\r\n" % (len(str(self.ttl_seconds)), self.ttl_seconds)
                  if self.ttl_seconds else b"")
        for first in range(0, len(rows.users), batch_rows):
            parts: list[bytes] = []
            last = min(first + batch_rows, len(rows.users))
            for row in range(first, last):
                key = _bulk(key_of(rows.users[row]))
                summary = rows.summaries[row]
                head = summary_heads.get(len(summary))
                if head is None:
                    value_head = b"\x0a" + _varint(len(summary))
                    head = summary_heads[len(summary)] = (
                        fields[SUMMARY] + b"$%d\r\n" % (len(value_head) + len(summary)) + value_head)
                parts += (HSET_HEAD, key, fields["ts"], _bulk(_timestamp(rows.micros[row])), head,
                          summary, b"\r\n", shapes[rows.shapes[row]], fields[N_ITEMS],
                          _bulk(_int64(rows.n_items[row])))
                if expire:
                    parts += (EXPIRE_HEAD, key, expire)
            self._send(b"".join(parts), (last - first) * (2 if expire else 1))
        return len(rows.users)

    def _send(self, payload: bytes, replies: int) -> None:
        """Sends a buffer of commands on one pooled connection and reads every reply; a Redis error
        reply is raised (as redis-py's `ResponseError`) once all replies are read, so the connection
        stays in step."""
        import redis

        connection = self.client.connection_pool.get_connection()
        try:
            connection.send_packed_command([payload])
            errors = []
            for _ in range(replies):
                try:
                    connection.read_response()
                except redis.ResponseError as error:
                    errors.append(error)
            if errors:
                raise errors[0]
        except BaseException:
            # Unread replies would answer the next command on this connection.
            connection.disconnect()
            raise
        finally:
            self.client.connection_pool.release(connection)

    def write_pipelined(self, frame: pd.DataFrame, batch_rows: int) -> int:
        """`write` through redis-py pipelines, a command object per user: the simple reference."""
        fields = _field_keys()
        rows = _SummaryRows.of(frame)
        key_of = self._key_function()
        encoded_shapes = {shape: _int64_list(shape) for shape in set(rows.shapes)}
        for first in range(0, len(rows.users), batch_rows):
            with self.client.pipeline(transaction=False) as pipe:
                for row in range(first, min(first + batch_rows, len(rows.users))):
                    key = key_of(rows.users[row])
                    pipe.hset(key, mapping={
                        fields["ts"]: _timestamp(rows.micros[row]),
                        fields[SUMMARY]: _bytes_value(rows.summaries[row]),
                        fields[SUMMARY_SHAPE]: encoded_shapes[rows.shapes[row]],
                        fields[N_ITEMS]: _int64(rows.n_items[row]),
                    })
                    if self.ttl_seconds:
                        pipe.expire(name=key, time=self.ttl_seconds)
                pipe.execute()
        return len(rows.users)

    def _key_function(self) -> Callable[[str], bytes]:
        """user id -> Redis key: Feast's `_redis_key` of the entity key {user_id: id}. For Feast's
        serialisation version 3 (its default) the bytes are put together here, the same in a tenth
        of the time; other versions go through Feast."""
        project = self.project.encode("utf-8")
        if self.key_version != DEFAULT_KEY_VERSION:
            from feast.infra.online_stores.helpers import _redis_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            version = self.key_version
            return lambda user: _redis_key(
                self.project, EntityKey(join_keys=[USER_ID], entity_values=[Value(string_val=user)]),
                entity_key_serialization_version=version)
        name = USER_ID.encode("utf8")
        string_type = struct.pack("<I", STRING_VALUE_TYPE)
        head = struct.pack("<I", 1) + string_type + struct.pack("<I", len(name)) + name + string_type

        def key(user: str) -> bytes:
            encoded = user.encode("utf8")
            return head + struct.pack("<I", len(encoded)) + encoded + project

        return key


@dataclass(frozen=True)
class _SummaryRows:
    """A frame of newest summaries as Python lists, in the types the writers encode."""

    users: list[str]
    micros: list[int]
    summaries: list[bytes]
    shapes: list[tuple[int, ...]]
    n_items: list[int]

    @classmethod
    def of(cls, frame: pd.DataFrame) -> _SummaryRows:
        # Feast stores a timestamp to the microsecond of a timezone-aware datetime.
        micros = pd.DatetimeIndex(pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)).asi8 // 1000
        return cls(frame[USER_ID].astype(str).tolist(), micros.tolist(), frame[SUMMARY].tolist(),
                   [tuple(int(v) for v in shape) for shape in frame[SUMMARY_SHAPE].tolist()],
                   [int(n) for n in frame[N_ITEMS].tolist()])


def _bulk(value: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:  # most lengths, counts and shape entries: one byte
        return SMALL_VARINTS[value]
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


# The messages written per user, in protobuf's wire format by hand (tests/test_features_redis.py
# checks the bytes against Feast's writer): Value.bytes_val is field 1 (length-delimited),
# Value.int64_val field 4 (varint, written even when zero: it is a oneof), Value.int64_list_val
# field 14 (an Int64List whose val, field 1, is packed); Timestamp.seconds is field 1 and nanos
# field 2 (varints, left out when zero). Negative integers are their 64-bit two's complement.
def _bytes_value(data: bytes) -> bytes:
    return b"\x0a" + _varint(len(data)) + data


def _int64(value: int) -> bytes:
    return b"\x20" + _varint(value & UINT64)


def _int64_list(values: tuple[int, ...]) -> bytes:
    packed = b"".join(_varint(v & UINT64) for v in values)
    inner = b"\x0a" + _varint(len(packed)) + packed if packed else b""
    return b"\x72" + _varint(len(inner)) + inner


def _timestamp(micros: int) -> bytes:
    seconds, micro = divmod(micros, 1_000_000)
    out = b"\x08" + _varint(seconds & UINT64) if seconds else b""
    return out + (b"\x10" + _varint(micro * 1000) if micro else b"")


def parse_connection_string(connection_string: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Feast's reading of a Redis connection string: host:port[,host:port...][,key=value...], each
    value JSON-decoded where it parses (RedisOnlineStore._parse_connection_string)."""
    nodes = [dict(zip(["host", "port"], part.split(":"), strict=False))
             for part in connection_string.split(",") if "=" not in part]
    params: dict[str, Any] = {}
    for part in connection_string.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
    return nodes, params


def _mmh3(key: str) -> bytes:
    """Feast's hash field name of a feature: murmur3 (32 bits, unsigned), little-endian bytes."""
    import mmh3

    return struct.pack("<Q", mmh3.hash(key, signed=False))[:4]


@functools.cache
def _field_keys() -> dict[str, Any]:
    """The hash field of each feature (Feast's murmur3 of "view:feature") and of the timestamp."""
    keys: dict[str, Any] = {name: _mmh3(f"{USER_SUMMARY_VIEW}:{name}")
                            for name in (SUMMARY, SUMMARY_SHAPE, N_ITEMS)}
    keys["ts"] = f"_ts:{USER_SUMMARY_VIEW}"
    return keys
