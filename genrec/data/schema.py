"""The data contract every source is converted into, once, at ingest.

Interactions: `user_id, item_id, timestamp, value` — one row per event, each user's rows in time
order. Catalogue: `item_id, title?, description?, brand?, categories, value` — one row per item.
Ids are strings so that any source's ids fit; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa


class ContractError(ValueError):
    """A frame does not fit the data contract; the message names the column and the fix."""


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: pa.DataType
    nullable: bool
    doc: str


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns])

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Returns `frame` with exactly this schema's columns, in order, with the contract dtypes.

        Raises ContractError naming the first missing column or a value that cannot be cast.
        Nulls in non-nullable columns are left for validation to report with examples. The index is
        kept: it numbers the rows as the source did.
        """
        missing = [c.name for c in self.columns if c.name not in frame.columns]
        if missing:
            raise ContractError(
                f"{self.name}: column {missing[0]!r} is missing (columns present: "
                f"{', '.join(map(str, frame.columns))}); rename or add it to match the contract "
                f"{', '.join(self.names)}"
            )
        out = pd.DataFrame(index=frame.index)
        for column in self.columns:
            out[column.name] = _cast(frame[column.name], column, self.name)
        return out


def _cast(series: pd.Series, column: Column, table: str) -> pd.Series:
    kind = column.arrow_type
    try:
        if pa.types.is_string(kind):
            return series.map(lambda v: None if _is_missing(v) else str(v)).astype(object)
        if pa.types.is_floating(kind):
            return pd.to_numeric(series, errors="raise").astype("float64")
        if pa.types.is_timestamp(kind):
            return to_utc_timestamps(series)
        if pa.types.is_list(kind):
            return series.map(_as_str_list).astype(object)
    except (ValueError, TypeError) as exc:
        raise ContractError(
            f"{table}: column {column.name!r} cannot be read as {kind}: {exc}; fix the source values"
        ) from exc
    raise ContractError(f"{table}: column {column.name!r} has unsupported type {kind}")


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return value is pd.NA or value is pd.NaT


def _as_str_list(value: object) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]  # type: ignore[attr-defined]


def to_utc_timestamps(series: pd.Series) -> pd.Series:
    """Parses timestamps; numbers are Unix seconds. Unparseable values become NaT for validation."""
    if pd.api.types.is_datetime64_any_dtype(series):
        parsed = pd.to_datetime(series, utc=True)
    elif pd.api.types.is_numeric_dtype(series):
        parsed = pd.to_datetime(series, unit="s", utc=True, errors="coerce")
    else:
        parsed = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    return parsed.astype("datetime64[ns, UTC]")


INTERACTIONS = TableSchema(
    "interactions",
    (
        Column("user_id", pa.string(), False, "who acted"),
        Column("item_id", pa.string(), False, "which item (ad) they acted on"),
        Column("timestamp", pa.timestamp("ns", tz="UTC"), False, "when; synthetic for order-only sources"),
        Column("value", pa.float64(), False, "business value of the event (bid x conversion), >= 0"),
    ),
)

CATALOGUE = TableSchema(
    "catalogue",
    (
        Column("item_id", pa.string(), False, "item (ad) id, unique"),
        Column("title", pa.string(), True, "item title, where known"),
        Column("description", pa.string(), True, "item description, where known"),
        Column("brand", pa.string(), True, "brand or advertiser, where known"),
        Column("categories", pa.list_(pa.string()), True, "category names or attribute ids"),
        Column("value", pa.float64(), False, "item value (bid), >= 0"),
    ),
)

# The split column that `leave_one_out` adds to interactions.
SPLIT_COLUMN = "split"
SPLITS = ("train", "valid", "test")


@dataclass
class DatasetInfo:
    """What a converter knows about the source, carried into every report."""

    name: str
    source: str
    has_timestamps: bool
    value_source: str  # "observed" or "simulated"
    notes: list[str] = field(default_factory=list)


@dataclass
class RawDataset:
    """A source converted into the contract, not yet validated."""

    interactions: pd.DataFrame
    catalogue: pd.DataFrame
    info: DatasetInfo

# The splits artefact: the interactions plus their split.
SPLITS_ARROW = INTERACTIONS.arrow.append(pa.field(SPLIT_COLUMN, pa.string(), nullable=False))
