"""Converters from each supported source format into the data contract.

| name / format | where it comes from |
| --- | --- |
| `movielens-100k` | RecBole atomic files inside the recbole wheel on PyPI (the embedded default) |
| `amazon-beauty` (S3-Rec text) | `Beauty.txt` + `Beauty_item2attributes.json` |
| `amazon-scientific` (Amazon JSON) | `Scientific.inter.json` + `Scientific.item.json` |
| generic | a parquet or CSV log with `user_id, item_id, timestamp[, value]`, optional catalogue |
| partitioned | a folder: `interactions/*.parquet` (the generic columns) and `catalogue.parquet` |

Order-only sources (both Amazon formats) have no timestamps: the i-th interaction of a user gets
`order_only_epoch + i seconds`. Timestamps therefore order events within a user, which is all that
leave-one-out and point-in-time joins need; they say nothing about time across users.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genrec.config import DataConfig
from genrec.data.schema import ContractError, DatasetInfo, RawDataset, to_utc_timestamps

MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"


class SourceError(ValueError):
    """A source cannot be found or read; the message says which file and what to do."""


# --------------------------------------------------------------------------------------------
# Fetching the embedded default
# --------------------------------------------------------------------------------------------


def recbole_wheel_path(config: DataConfig) -> Path:
    """Returns a local recbole wheel, downloading it with `pip download --no-deps` if needed."""
    if config.recbole_wheel:
        wheel = Path(config.recbole_wheel).expanduser()
        if not wheel.is_file():
            raise SourceError(f"data.recbole_wheel={wheel} does not exist: give the path of a recbole wheel")
        return wheel
    cache = Path(config.cache_dir).expanduser()
    name = f"recbole-{config.recbole_version}-py3-none-any.whl"
    wheel = cache / name
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
               f"recbole=={config.recbole_version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not found:
            raise SourceError(
                f"could not download recbole=={config.recbole_version} with pip "
                f"(exit {result.returncode}): {result.stderr.strip()[-500:]}; check access to the "
                "package index, or set data.recbole_wheel to a local copy of the wheel"
            )
        # Rename into place so a concurrent or killed fetch never leaves half a wheel in the cache.
        os.replace(found[0], wheel)
    return wheel


def _read_atomic(archive: zipfile.ZipFile, suffix: str) -> pd.DataFrame:
    with archive.open(MOVIELENS_MEMBER.format(suffix)) as handle:
        frame = pd.read_csv(io.TextIOWrapper(handle, encoding="latin-1"), sep="\t", dtype=str)
    # RecBole headers are `name:type`; the contract only needs the names.
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def load_movielens_100k(config: DataConfig) -> RawDataset:
    wheel = recbole_wheel_path(config)
    try:
        with zipfile.ZipFile(wheel) as archive:
            inter = _read_atomic(archive, "inter")
            items = _read_atomic(archive, "item")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SourceError(f"{wheel} is not a recbole wheel with ml-100k inside: {exc}") from exc
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": to_utc_timestamps(pd.to_numeric(inter["timestamp"])),
            "rating": pd.to_numeric(inter["rating"]),
        }
    )
    # The raw file is not in time order; ties keep file order so the result is deterministic.
    interactions = interactions.sort_values(["user_id", "timestamp"], kind="stable").drop(columns="rating")
    catalogue = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "title": items["movie_title"],
            "description": None,
            "brand": None,
            "categories": items["class"].fillna("").str.split(),
        }
    )
    info = DatasetInfo(
        name="movielens-100k",
        source=str(wheel),
        has_timestamps=True,
        value_source="simulated",
        notes=["MovieLens ratings are not business value; bids are simulated per first genre"],
    )
    return RawDataset(interactions.reset_index(drop=True), catalogue, info)


# --------------------------------------------------------------------------------------------
# Amazon formats (order only)
# --------------------------------------------------------------------------------------------


def _order_only_interactions(sequences: list[tuple[str, list[str]]], epoch: str) -> pd.DataFrame:
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    for user, seq in sequences:
        users.extend([user] * len(seq))
        items.extend(seq)
        positions.extend(range(len(seq)))
    start = pd.Timestamp(epoch)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    timestamps = start + pd.to_timedelta(positions, unit="s")
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": timestamps})


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SourceError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path} is not valid JSON: {exc}") from exc


def load_amazon_s3rec(folder: Path, config: DataConfig) -> RawDataset:
    """S3-Rec text format: `<Name>.txt` (user then items, time order) + `<Name>_item2attributes.json`."""
    attr_files = sorted(folder.glob("*_item2attributes.json"))
    if not attr_files:
        raise SourceError(f"{folder} has no *_item2attributes.json: not an S3-Rec folder")
    stem = attr_files[0].name[: -len("_item2attributes.json")]
    text = folder / f"{stem}.txt"
    if not text.is_file():
        raise SourceError(f"{text} is missing: the S3-Rec format needs it beside {attr_files[0].name}")
    sequences = []
    for number, line in enumerate(text.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise SourceError(f"{text}:{number}: a line needs a user id and at least one item id")
        sequences.append((parts[0], parts[1:]))
    attributes = _read_json(attr_files[0])
    if not isinstance(attributes, dict):
        raise SourceError(f"{attr_files[0]} must map item ids to attribute lists")
    catalogue = pd.DataFrame(
        {
            "item_id": list(attributes.keys()),
            "title": None,
            "description": None,
            "brand": None,
            # Brand and category ids are mixed and anonymous in this format.
            "categories": [[f"attr{a}" for a in attrs] for attrs in attributes.values()],
        }
    )
    info = DatasetInfo(
        name=stem.lower(),
        source=str(folder),
        has_timestamps=False,
        value_source="simulated",
        notes=["no timestamps: sequence order is used as time (one synthetic second per position)"],
    )
    return RawDataset(_order_only_interactions(sequences, config.order_only_epoch), catalogue, info)


def load_amazon_json(folder: Path, config: DataConfig) -> RawDataset:
    """Amazon JSON format: `<Name>.inter.json` ({user: [items]}) + `<Name>.item.json` ({item: {...}})."""
    inter_files = sorted(folder.glob("*.inter.json"))
    if not inter_files:
        raise SourceError(f"{folder} has no *.inter.json: not an Amazon JSON folder")
    stem = inter_files[0].name[: -len(".inter.json")]
    raw_inter = _read_json(inter_files[0])
    raw_items = _read_json(folder / f"{stem}.item.json")
    if not isinstance(raw_inter, dict) or not isinstance(raw_items, dict):
        raise SourceError(f"{folder}: both JSON files must hold an object keyed by id")
    sequences = [(str(u), [str(i) for i in seq]) for u, seq in raw_inter.items()]

    def text(meta: dict, key: str) -> str | None:
        value = meta.get(key)
        return value.strip() or None if isinstance(value, str) else None

    def categories(meta: dict) -> list[str]:
        value = meta.get("categories") or []
        parts = value.split(",") if isinstance(value, str) else value
        return [str(p).strip() for p in parts if str(p).strip()]

    catalogue = pd.DataFrame(
        {
            "item_id": [str(k) for k in raw_items],
            "title": [text(m, "title") for m in raw_items.values()],
            "description": [text(m, "description") for m in raw_items.values()],
            "brand": [text(m, "brand") for m in raw_items.values()],
            "categories": [categories(m) for m in raw_items.values()],
        }
    )
    info = DatasetInfo(
        name=stem.lower(),
        source=str(folder),
        has_timestamps=False,
        value_source="simulated",
        notes=["no timestamps: sequence order is used as time (one synthetic second per position)"],
    )
    return RawDataset(_order_only_interactions(sequences, config.order_only_epoch), catalogue, info)


# --------------------------------------------------------------------------------------------
# Generic logs
# --------------------------------------------------------------------------------------------


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            separator = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(path, sep=separator, dtype={"user_id": str, "item_id": str})
    except FileNotFoundError as exc:
        raise SourceError(f"{path} does not exist") from exc
    except (ValueError, OSError) as exc:
        raise SourceError(f"{path} cannot be read as {suffix[1:]}: {exc}") from exc
    raise SourceError(f"{path}: unsupported file type {suffix!r}; use .parquet, .csv or .tsv")


def _read_partitions(folder: Path) -> pd.DataFrame:
    """Every parquet file of a folder, in file-name order (each file's rows in their order)."""
    parts = sorted(folder.glob("*.parquet"))
    if not parts:
        raise SourceError(f"{folder} holds no parquet file")
    return pd.concat([_read_table(part) for part in parts], ignore_index=True)


GENERIC_COLUMNS = ("user_id", "item_id", "timestamp", "value")


def require_log_columns(columns: list[str], path: Path) -> list[str]:
    """The generic columns a log has (user_id, item_id and timestamp are required)."""
    for column in ("user_id", "item_id", "timestamp"):
        if column not in columns:
            raise ContractError(
                f"interactions: column {column!r} is missing from {path} (columns present: "
                f"{', '.join(map(str, columns))}); rename your columns to user_id, item_id, "
                "timestamp and optionally value"
            )
    return [c for c in GENERIC_COLUMNS if c in columns]


def read_catalogue(path: str | Path) -> pd.DataFrame:
    """A generic log's catalogue file, with the optional text columns added where absent."""
    catalogue = _read_table(Path(path).expanduser())
    if "item_id" not in catalogue.columns:
        raise ContractError(f"catalogue: column 'item_id' is missing from {path}")
    for column in ("title", "description", "brand"):
        if column not in catalogue.columns:
            catalogue[column] = None
    if "categories" not in catalogue.columns:
        catalogue["categories"] = [[] for _ in range(len(catalogue))]
    return catalogue.reset_index(drop=True)


def catalogue_of_items(item_ids: object) -> pd.DataFrame:
    """The catalogue of a log that came without one: its item ids (as strings), in order of first
    appearance, with no text."""
    ids = pd.unique(pd.Series(item_ids).dropna().astype(str))
    return pd.DataFrame({"item_id": ids, "title": None, "description": None, "brand": None,
                         "categories": [[] for _ in range(len(ids))]})


def generic_info(path: Path, has_value: bool, has_catalogue: bool) -> DatasetInfo:
    return DatasetInfo(
        name=path.stem,
        source=str(path),
        has_timestamps=True,
        value_source="observed" if has_value else "simulated",
        notes=[] if has_catalogue else ["no catalogue given: items are taken from the log"],
    )


def sort_by_user_time(interactions: pd.DataFrame) -> pd.DataFrame:
    """Each user's rows in time order (ties in source order): `data.sort_by_timestamp`."""
    interactions = interactions.copy()
    interactions["timestamp"] = to_utc_timestamps(interactions["timestamp"])
    return interactions.sort_values(["user_id", "timestamp"], kind="stable")


def load_generic(path: Path, config: DataConfig, catalogue_path: str | Path | None = None) -> RawDataset:
    """A user's own log: `user_id, item_id, timestamp` and optionally `value`, in time order per user.
    `path` is one file, or a folder of parquet files (the partitioned generic format)."""
    log = _read_partitions(path) if path.is_dir() else _read_table(path)
    catalogue_path = catalogue_path or config.catalogue_path
    interactions = log[require_log_columns(list(log.columns), path)].copy()
    if config.sort_by_timestamp:
        interactions = sort_by_user_time(interactions)
    catalogue = read_catalogue(catalogue_path) if catalogue_path else catalogue_of_items(log["item_id"])
    info = generic_info(path, "value" in interactions.columns, bool(catalogue_path))
    # The index stays the row's position in the source (also after sorting): reports quote it.
    return RawDataset(interactions, catalogue, info)


@dataclass(frozen=True)
class ParquetLog:
    """A generic log in parquet, which the Ray engine reads file by file instead of loading it."""

    path: Path
    files: list[Path]
    catalogue_path: Path | None


def parquet_log(config: DataConfig) -> ParquetLog | None:
    """The parquet files of the configured source when it is a generic parquet log (one file or the
    partitioned format), in source order; None for every other format (loaded whole, being small)."""
    kind, _ = resolve_source(config)
    if kind not in ("generic", "partitioned"):
        return None
    path = _source_path(config)
    catalogue = Path(config.catalogue_path).expanduser() if config.catalogue_path else None
    if kind == "partitioned":
        folder = path / PARTITIONED_INTERACTIONS
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise SourceError(f"{folder} holds no parquet file")
        bundled = path / PARTITIONED_CATALOGUE
        return ParquetLog(folder, files, bundled if bundled.is_file() else catalogue)
    if path.is_dir():
        tables = sorted([*path.glob("*.parquet"), *path.glob("*.csv")])
        path = tables[0]
    return ParquetLog(path, [path], catalogue) if path.suffix.lower() == ".parquet" else None


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

SHARED_SETS = {"amazon-beauty": "amazon-beauty", "amazon-scientific": "amazon-scientific"}
# The partitioned generic format (what `genrec data synth` writes): a folder of parquet parts of the
# log, and the catalogue beside it.
PARTITIONED_INTERACTIONS = "interactions"
PARTITIONED_CATALOGUE = "catalogue.parquet"


def _source_path(config: DataConfig) -> Path:
    name = config.dataset
    if name in SHARED_SETS:
        path = Path(config.shared_data_dir).expanduser() / SHARED_SETS[name]
        if not path.is_dir():
            raise SourceError(
                f"data set {name!r} lives in {path}, which does not exist; set data.shared_data_dir "
                "to the folder that holds the shared data sets"
            )
        return path
    path = Path(name).expanduser()
    if not path.exists():
        raise SourceError(
            f"data.dataset={name!r} is neither a known data set (movielens-100k, amazon-beauty, "
            "amazon-scientific) nor an existing path"
        )
    return path


def resolve_source(config: DataConfig) -> tuple[str, Callable[[], RawDataset]]:
    """Maps `data.dataset` (a name or a path) to a format name and a loader."""
    if config.dataset in ("movielens-100k", "ml-100k"):
        return "recbole-atomic", lambda: load_movielens_100k(config)
    path = _source_path(config)
    if path.is_file():
        return "generic", lambda: load_generic(path, config)
    if (path / PARTITIONED_INTERACTIONS).is_dir():
        catalogue = path / PARTITIONED_CATALOGUE
        return "partitioned", lambda: load_generic(path / PARTITIONED_INTERACTIONS, config,
                                                   catalogue if catalogue.is_file() else None)
    if any(path.glob("*_item2attributes.json")):
        return "amazon-s3rec", lambda: load_amazon_s3rec(path, config)
    if any(path.glob("*.inter.json")):
        return "amazon-json", lambda: load_amazon_json(path, config)
    tables = sorted([*path.glob("*.parquet"), *path.glob("*.csv")])
    if len(tables) == 1:
        return "generic", lambda: load_generic(tables[0], config)
    raise SourceError(
        f"cannot tell the format of {path}: expected *_item2attributes.json (S3-Rec), *.inter.json "
        "(Amazon JSON), an interactions/ folder of parquet parts (the partitioned format of "
        "`genrec data synth`) or a single parquet/CSV log"
    )


def load_source(config: DataConfig) -> RawDataset:
    _, loader = resolve_source(config)
    return loader()

