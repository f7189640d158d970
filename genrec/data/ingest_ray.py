"""Ingest + validate on Ray: the log is cut into user buckets, then each bucket is valued, checked and
written, one task per bucket; no process ever holds the log.

1. Cut (a task per fragment of the source, about `data.read_rows_per_task` rows): read the generic
   columns, number the rows as the source does, and write each row into its user bucket's scratch
   folder (and, when the catalogue's values must come from the log, (item, value) into its item
   bucket's). A fragment also reports its item ids and whether it has observed values.
2. Catalogue (this process; a catalogue is about 1/200 of a log): read it or take it from the log's
   items; value it (observed values, their per-item medians from an item-bucket reduce, or simulated
   bids); conform it.
3. Bucket (a task per user bucket): read its pieces in source order, sort by user and time if asked,
   give each row its value, conform it to the contract, tally the interactions suite and write the
   bucket's part of the artefact.
4. The tallies add up to the suite's outcome (`genrec.data.validation_scale`); GX lays it out for
   Data Docs. A failure raises DataValidationError and the artefact folder never appears.

Non-parquet sources (MovieLens, the Amazon sets, CSV logs) are small: they are loaded by their
converter in this process and staged as one parquet file first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.config import GenrecConfig
from genrec.data.bids import catalogue_needs_medians, value_catalogue
from genrec.data.ingest import IngestOutcome
from genrec.data.partitioned import (
    Partitioning,
    bucket_count,
    user_buckets,
    write_bucket,
    write_partitioning,
)
from genrec.data.schema import CATALOGUE, INTERACTIONS, ContractError, DatasetInfo
from genrec.data.sources import (
    catalogue_of_items,
    generic_info,
    load_source,
    parquet_log,
    read_catalogue,
    require_log_columns,
    sort_by_user_time,
)
from genrec.data.validation import (
    DataValidationError,
    catalogue_item_ids,
    interactions_rules,
    validate_tallied,
)
from genrec.data.validation_scale import BucketValidation, Rule, SuiteTally, validate_bucket
from genrec.distributed import RaySession
from genrec.io import atomic_path, write_parquet

# The source's own row number, carried through the cut so that reports quote it.
SOURCE_ROW = "source_row"
STAGED_SOURCE = "source.parquet"
# Rows of one bucket that GX validates to lay out the results for Data Docs.
LAYOUT_SAMPLE_ROWS = 200
PIECE = "f-{:06d}.parquet"


@dataclass(frozen=True)
class Fragment:
    """Row groups of one parquet file of the source, read by one task."""

    index: int
    file: str
    row_groups: tuple[int, ...]
    first_row: int
    rows: int


@dataclass
class SourcePlan:
    fragments: list[Fragment]
    columns: list[str]
    rows: int
    info: DatasetInfo
    # None: the log came without a catalogue, which is then taken from its items.
    catalogue: pd.DataFrame | None
    sort_by_timestamp: bool
    # Whether the files carry SOURCE_ROW (a staged source); else it is the position in the files.
    numbered: bool


def plan_source(config: GenrecConfig, staging: Path) -> SourcePlan:
    data = config.data
    log = parquet_log(data)
    if log is None:
        raw = load_source(data)
        staged = staging / STAGED_SOURCE
        frame = raw.interactions.copy()
        frame[SOURCE_ROW] = raw.interactions.index.to_numpy()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), staged,
                       row_group_size=data.read_rows_per_task)
        columns = [c for c in raw.interactions.columns if c != SOURCE_ROW]
        return SourcePlan(_fragments([staged], data.read_rows_per_task), columns, len(frame), raw.info,
                          raw.catalogue, sort_by_timestamp=False, numbered=True)
    columns = require_log_columns(pq.read_schema(log.files[0]).names, log.path)
    for file in log.files[1:]:
        missing = set(columns) - set(pq.read_schema(file).names)
        if missing:
            raise ContractError(f"interactions: {file} lacks column(s) {', '.join(sorted(missing))} "
                                f"that {log.files[0]} has; every part of a partitioned log needs the "
                                "same columns")
    fragments = _fragments(log.files, data.read_rows_per_task)
    catalogue = read_catalogue(log.catalogue_path) if log.catalogue_path else None
    info = generic_info(log.path, "value" in columns, log.catalogue_path is not None)
    return SourcePlan(fragments, columns, sum(f.rows for f in fragments), info, catalogue,
                      data.sort_by_timestamp, numbered=False)


def _fragments(files: list[Path], rows_per_task: int) -> list[Fragment]:
    """Consecutive row groups of each file, about `rows_per_task` rows per fragment."""
    fragments: list[Fragment] = []
    first_row = 0
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        group: list[int] = []
        rows = 0
        for index in range(metadata.num_row_groups):
            group_rows = metadata.row_group(index).num_rows
            if group and rows + group_rows > rows_per_task:
                fragments.append(Fragment(len(fragments), str(file), tuple(group), first_row, rows))
                first_row, group, rows = first_row + rows, [], 0
            group.append(index)
            rows += group_rows
        if group:
            fragments.append(Fragment(len(fragments), str(file), tuple(group), first_row, rows))
            first_row += rows
    return fragments


# --- 1. cut ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CutTask:
    fragment: Fragment
    columns: list[str]
    numbered: bool
    buckets: int
    user_pieces: str
    # Item buckets for (item_id, value) pieces; 0 = none wanted.
    item_buckets: int
    item_pieces: str
    # Whether the catalogue is taken from the log (the fragment then reports its item ids).
    collect_items: bool


@dataclass
class CutResult:
    rows_per_bucket: np.ndarray
    items: np.ndarray | None
    has_value: bool


def cut_fragment(task: CutTask) -> CutResult:
    fragment = task.fragment
    columns = task.columns + ([SOURCE_ROW] if task.numbered else [])
    table = pq.ParquetFile(fragment.file).read_row_groups(list(fragment.row_groups), columns=columns)
    if not task.numbered:
        table = table.append_column(SOURCE_ROW, pa.array(
            np.arange(fragment.first_row, fragment.first_row + table.num_rows, dtype=np.int64)))
    bucket = user_buckets(contract_ids(table.column("user_id")), task.buckets)
    rows = _write_pieces(table, bucket, task.buckets, Path(task.user_pieces), fragment.index)
    has_value = "value" in task.columns and bool(table.column("value").to_pandas().notna().any())
    if task.item_buckets and "value" in task.columns:
        items = table.select(["item_id", "value"])
        item_bucket = user_buckets(contract_ids(items.column("item_id")), task.item_buckets)
        _write_pieces(items, item_bucket, task.item_buckets, Path(task.item_pieces), fragment.index)
    items_seen = None
    if task.collect_items:
        items_seen = pd.unique(table.column("item_id").to_pandas().dropna().astype(str))
    return CutResult(rows, items_seen, has_value)


def contract_ids(ids: pa.ChunkedArray) -> np.ndarray:
    """Ids as the contract holds them (str(id), nulls kept): what buckets are hashed from, so that
    both engines put a user in the same bucket whatever the source's id type."""
    values = ids.to_numpy(zero_copy_only=False).astype(object)
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return values
    present = ~pd.isna(values)
    values[present] = [str(v) for v in values[present]]
    return values


def _write_pieces(table: pa.Table, bucket: np.ndarray, buckets: int, root: Path, fragment: int) -> np.ndarray:
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    ordered = table.take(pa.array(order))
    rows = np.diff(bounds)
    for b in np.flatnonzero(rows):
        folder = root / f"b{b:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(ordered.slice(int(bounds[b]), int(rows[b])), folder / PIECE.format(fragment))
    return rows.astype(np.int64)


def _read_pieces(folder: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    pieces = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not pieces:
        return None
    tables = [pq.read_table(piece, columns=columns) for piece in pieces]
    try:
        # Files of one log may differ in nullability or width (int32 here, int64 there): unify them.
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ContractError(f"the source's files disagree on a column's type ({exc}); give every file of "
                            "the log the same schema") from exc


# --- 2. catalogue values from the log -----------------------------------------------------------


@dataclass(frozen=True)
class MedianTask:
    pieces: str


def item_medians(task: MedianTask) -> pd.Series:
    frame = _read_pieces(Path(task.pieces))
    if frame is None:
        return pd.Series(dtype=float)
    return frame.groupby("item_id")["value"].median()


# --- 3. buckets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketTask:
    bucket: int
    pieces: str
    output: str
    columns: list[str]
    sort_by_timestamp: bool
    # Parquet of (item_id, value): each interaction takes its item's simulated bid; "" = observed.
    bids: str
    catalogue_items: str
    rules: list[Rule]
    min_per_user: int
    max_examples: int


@dataclass
class BucketOutcome:
    validation: BucketValidation
    sample: pd.DataFrame


def ingest_bucket(task: BucketTask) -> BucketOutcome:
    frame = _read_pieces(Path(task.pieces))
    if frame is None:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in [*task.columns, SOURCE_ROW]})
    frame = frame.set_index(SOURCE_ROW)
    frame.index.name = None
    if task.sort_by_timestamp:
        frame = sort_by_user_time(frame)
    if task.bids:
        frame["value"] = frame["item_id"].map(_bids(task.bids))
    interactions = INTERACTIONS.conform(frame)
    validation = validate_bucket(interactions, _catalogue_items(task.catalogue_items), task.rules,
                                 task.min_per_user, task.max_examples)
    # A bucket that breaks a rule fails the whole step, which then writes nothing: its part is not
    # written (the contract schema would refuse its nulls anyway).
    if validation.clean(task.rules):
        write_bucket(task.output, task.bucket, interactions, INTERACTIONS.arrow)
    return BucketOutcome(validation, interactions.head(LAYOUT_SAMPLE_ROWS))


# A worker runs many bucket tasks: the broadcast tables are read once per worker.
@functools.lru_cache(maxsize=2)
def _bids(path: str) -> pd.Series:
    frame = pq.read_table(path).to_pandas()
    return frame.set_index("item_id")["value"]


@functools.lru_cache(maxsize=2)
def _catalogue_items(path: str) -> pd.Index:
    return pd.Index(pq.read_table(path).column("item_id").to_pandas())


# --- the step -------------------------------------------------------------------------------------


@dataclass
class _Cut:
    results: list[CutResult] = field(default_factory=list)

    @property
    def observed(self) -> bool:
        return any(r.has_value for r in self.results)

    def items(self) -> np.ndarray:
        return np.concatenate([r.items for r in self.results if r.items is not None] or [np.array([])])


def ingest_on_ray(config: GenrecConfig, interactions_dir: str | Path, catalogue_path: str | Path,
                  data_docs_dir: str | Path | None = None) -> IngestOutcome:
    data = config.data
    target = Path(interactions_dir)
    with RaySession.open(config.ray) as session, session.staging(target, "ingest") as staging:
        plan = plan_source(config, staging)
        buckets = bucket_count(plan.rows, data.bucket_rows)
        medians_wanted = "value" in plan.columns and (plan.catalogue is None
                                                      or catalogue_needs_medians(plan.catalogue))
        item_buckets = bucket_count(plan.rows, data.bucket_rows) if medians_wanted else 0
        cut = _Cut(session.map(cut_fragment, [
            CutTask(fragment, plan.columns, plan.numbered, buckets, str(staging / "users"), item_buckets,
                    str(staging / "items"), plan.catalogue is None)
            for fragment in plan.fragments], "ingest: cut the log into user buckets"))

        raw_catalogue = plan.catalogue if plan.catalogue is not None else catalogue_of_items(cut.items())
        medians = None
        if cut.observed and medians_wanted:
            parts = session.map(item_medians, [MedianTask(str(staging / "items" / f"b{b:05d}"))
                                               for b in range(item_buckets)], "ingest: item medians")
            medians = pd.concat([p for p in parts if len(p)]) if any(len(p) for p in parts) else None
        valued, bids, value_source = value_catalogue(raw_catalogue, cut.observed, medians, config.bids)
        catalogue = CATALOGUE.conform(valued)
        plan.info.value_source = value_source
        bids_path = ""
        if bids is not None:
            bids_path = str(staging / "bids.parquet")
            pq.write_table(pa.table({"item_id": pa.array(bids.index.to_numpy(), type=_id_type(bids.index)),
                                     "value": pa.array(bids.to_numpy(dtype="float64"))}), bids_path)
        items_path = str(staging / "catalogue_items.parquet")
        pq.write_table(pa.table({"item_id": pa.array(catalogue_item_ids(catalogue).to_numpy(),
                                                     pa.string())}), items_path)

        rules = interactions_rules(data.min_interactions_per_user)
        with atomic_path(target) as folder:
            folder.mkdir()
            parts_dir, location = session.parts_folder(folder)
            outcomes = session.map(ingest_bucket, [
                BucketTask(b, str(staging / "users" / f"b{b:05d}"), str(parts_dir), plan.columns,
                           plan.sort_by_timestamp, bids_path, items_path, rules,
                           data.min_interactions_per_user, data.max_bad_examples)
                for b in range(buckets)], "ingest: value, validate and write user buckets")
            tally = SuiteTally.of(rules, [o.validation for o in outcomes], data.max_bad_examples)
            sample = next((o.sample for o in outcomes if len(o.sample)), outcomes[0].sample)
            report = validate_tallied(tally, sample, catalogue,
                                      min_interactions_per_user=data.min_interactions_per_user,
                                      max_bad_examples=data.max_bad_examples, data_docs_dir=data_docs_dir)
            if not report.success:
                raise DataValidationError(report)
            partitioning = Partitioning(buckets=buckets, rows=[o.validation.rows for o in outcomes],
                                        location=location)
            write_partitioning(folder, partitioning)
        write_parquet(catalogue, catalogue_path, CATALOGUE.arrow)
    return IngestOutcome(plan.info, report, tally.users, len(catalogue), tally.rows, partitioning, "ray")


def _id_type(index: pd.Index) -> pa.DataType:
    return pa.string() if pd.api.types.is_object_dtype(index) or pd.api.types.is_string_dtype(index) \
        else pa.from_numpy_dtype(index.dtype)
