"""Feast's Ray offline store, with Bytes features kept whole through historical retrieval.

Feast 0.67's Ray offline store casts every Bytes feature of the joined result with
`astype("bytes")`: numpy's fixed-width `S` dtype. Ray then hands the batch to Arrow, which reads an
`S` array as C strings and cuts each value at its first NUL byte, so a float32 summary comes back
as a few bytes of itself (see tests/test_data_engines.py). genrec's feature repos name this store
in feature_store.yaml; importing it swaps the cast in Feast's module for one that leaves Bytes
columns as Python bytes and defers every other type to Feast. Ray ships the swapped function with
Feast's batch function (cloudpickle captures the module global by value), so the workers use it.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from feast.infra.offline_stores.contrib.ray_offline_store import ray as feast_ray_store
from feast.type_map import convert_scalar_column
from feast.value_type import ValueType

STORE_TYPE = "genrec.features.feast_ray.GenrecRayOfflineStore"


def convert_scalar_column_keeping_bytes(series: pd.Series, value_type: ValueType,
                                        target_pandas_type: str) -> pd.Series:
    """Feast's scalar cast, except that Bytes stay Python bytes (object), whole."""
    if value_type == ValueType.BYTES:
        return series.astype(object)
    return convert_scalar_column(series, value_type, target_pandas_type)


feast_ray_store.convert_scalar_column = convert_scalar_column_keeping_bytes


class GenrecRayOfflineStoreConfig(feast_ray_store.RayOfflineStoreConfig):
    type: Literal["genrec.features.feast_ray.GenrecRayOfflineStore"] = STORE_TYPE  # type: ignore[assignment]


class GenrecRayOfflineStore(feast_ray_store.RayOfflineStore):
    """Feast's RayOfflineStore, unchanged but for the Bytes cast above."""
