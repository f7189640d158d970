"""Validation of the contract frames with Great Expectations (GX 1.x).

Two expectation suites, `genrec_interactions` and `genrec_catalogue`, run on copies of the frames
that `TableSchema.conform` produced. Per-row and per-group rules (timestamps in order within a
user, interactions per user, item known to the catalogue, finite values) are computed as helper
columns on the copy and expected on, so every rule is a GX expectation that shows in Data Docs.

Each failed expectation becomes a `Failure` that names the table, the contract column, the
expectation, up to `max_bad_examples` offending rows of the original frame (with their row number
under "row") and a one-sentence fix. GX is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genrec.data.schema import CATALOGUE, INTERACTIONS, ContractError, TableSchema
from genrec.data.validation_rows import ROW, example_row, interactions_helpers, short_user_count
from genrec.data.validation_scale import Rule, SuiteTally, rule_of

INTERACTIONS_SUITE = "genrec_interactions"
CATALOGUE_SUITE = "genrec_catalogue"

COMPOUND_KEY = ("user_id", "item_id", "timestamp")


@dataclass
class Failure:
    """One failed expectation."""

    table: str
    column: str
    expectation: str
    description: str
    unexpected_count: int
    examples: list[dict]
    fix: str
    # What GX observed for table-level expectations (e.g. a row count of 0); None for row checks.
    observed: Any = None

    def lines(self) -> list[str]:
        count = f"{self.unexpected_count} bad row{'s' if self.unexpected_count != 1 else ''}"
        if self.observed is not None:
            count = f"observed {self.observed}"
        out = [
            f"- {self.table}.{self.column}: {self.expectation} failed ({count})",
            f"    expected: {self.description}",
        ]
        for example in self.examples:
            fields = ", ".join(f"{k}={_show(v)}" for k, v in example.items() if k != ROW)
            out.append(f"    row {example.get(ROW)}: {fields}")
        if self.unexpected_count > len(self.examples) and self.examples:
            out.append(f"    ... and {self.unexpected_count - len(self.examples)} more")
        out.append(f"    fix: {self.fix}")
        return out


@dataclass
class ValidationReport:
    success: bool
    failures: list[Failure]
    statistics: dict
    data_docs_index: str | None = None

    def summary(self) -> str:
        evaluated = self.statistics.get("evaluated_expectations", 0)
        tables = ", ".join(
            f"{name} {stats['rows']} rows, {stats['successful_expectations']}/"
            f"{stats['evaluated_expectations']} expectations met"
            for name, stats in self.statistics.get("tables", {}).items()
        )
        if self.success:
            lines = [f"Data validation passed: {evaluated} expectations met ({tables})."]
        else:
            failed = len(self.failures)
            lines = [f"Data validation failed: {failed} of {evaluated} expectations not met ({tables})."]
            for failure in self.failures:
                lines.extend(failure.lines())
        if self.data_docs_index:
            lines.append(f"Data Docs: {self.data_docs_index}")
        return "\n".join(lines)


class DataValidationError(Exception):
    """The data broke the contract; `report` holds every failure, str() is its summary."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report

    def __str__(self) -> str:
        return self.report.summary()


@dataclass
class _Check:
    """One expectation plus what a failure of it means to a genrec user."""

    column: str  # the contract column the rule is about (the GX column may be a helper)
    description: str
    fix: str
    expectation: Any  # a gx.expectations.Expectation
    extras: tuple[str, ...] = ()  # helper columns quoted in the examples

    def __post_init__(self) -> None:
        # Data Docs render the description in place of GX's own sentence, and the notes under it.
        # (No "$" in descriptions: GX renders them as string templates.)
        self.expectation.description = self.description
        self.expectation.notes = f"Fix: {self.fix}."
        self.expectation.meta = {"genrec_column": self.column}


@dataclass
class _Table:
    name: str
    suite: str
    original: pd.DataFrame
    frame: pd.DataFrame  # copy with helper columns, indexed by row number: what GX validates
    checks: list[_Check] = field(default_factory=list)
    # The outcomes over the whole log when it was validated bucket by bucket (`frame` is a sample).
    tally: SuiteTally | None = None


def validate_dataset(
    interactions: pd.DataFrame,
    catalogue: pd.DataFrame,
    *,
    min_interactions_per_user: int,
    max_bad_examples: int,
    data_docs_dir: str | Path | None = None,
) -> ValidationReport:
    """Runs both expectation suites and returns a report; never raises on bad data.

    With `data_docs_dir`, GX Data Docs for both suites' results are written there (on success
    and on failure) and the report carries the path of their index.html.
    """
    started = time.perf_counter()
    _require_columns(interactions, INTERACTIONS)
    _require_columns(catalogue, CATALOGUE)
    _, gxe = _import_gx()
    tables = [
        _interactions_table(gxe, interactions, catalogue, min_interactions_per_user),
        _catalogue_table(gxe, catalogue),
    ]
    return _run_suites(tables, max(1, int(max_bad_examples)), data_docs_dir, started)


def interactions_rules(min_interactions_per_user: int) -> list[Rule]:
    """The interactions suite's rules as plain values, for bucket tasks (validation_scale)."""
    _, gxe = _import_gx()
    return [rule_of(check.expectation, check.extras)
            for check in interactions_checks(gxe, min_interactions_per_user, 0)]


def validate_tallied(
    tally: SuiteTally,
    sample: pd.DataFrame,
    catalogue: pd.DataFrame,
    *,
    min_interactions_per_user: int,
    max_bad_examples: int,
    data_docs_dir: str | Path | None = None,
) -> ValidationReport:
    """The report of a log validated bucket by bucket: the interactions suite's outcomes are the
    summed bucket tallies; GX runs it on `sample` (a few rows of the log) only to lay out the
    results that Data Docs show, which then carry the tallies. The catalogue suite runs as usual."""
    started = time.perf_counter()
    _require_columns(sample, INTERACTIONS)
    _require_columns(catalogue, CATALOGUE)
    _, gxe = _import_gx()
    table = _interactions_table(gxe, sample, catalogue, min_interactions_per_user)
    table.checks = interactions_checks(gxe, min_interactions_per_user, tally.short_users)
    table.tally = tally
    tables = [table, _catalogue_table(gxe, catalogue)]
    return _run_suites(tables, max(1, int(max_bad_examples)), data_docs_dir, started)


def _run_suites(tables: list[_Table], max_bad_examples: int, data_docs_dir: str | Path | None,
                started: float) -> ValidationReport:
    gx, _ = _import_gx()
    docs_dir = Path(data_docs_dir).expanduser().resolve() if data_docs_dir is not None else None
    context = _context(gx, docs_dir)
    source = context.data_sources.add_pandas("genrec")
    # SUMMARY keeps at most max_bad_examples unexpected rows per expectation. Without
    # unexpected_index_column_names GX reports them by the frame's index (row numbers here);
    # naming an index column makes GX build a dict per unexpected row in Python, which takes tens
    # of seconds when most of 200k rows fail.
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": max_bad_examples,
        "return_unexpected_index_query": False,
    }

    failures: list[Failure] = []
    per_table: dict[str, dict] = {}
    for table in tables:
        batch = source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=table.suite))
        # add_expectation returns the stored copy, which carries the id the results refer to.
        by_id = {suite.add_expectation(check.expectation).id: check for check in table.checks}
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table.suite}_validation", data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": table.frame}, result_format=result_format)
        # GX returns results grouped by column; report them in the suite's order instead.
        outcomes = {outcome.expectation_config.id: outcome for outcome in result.results}
        if table.tally is not None:
            failures += _carry_tally(context, result, table, by_id, outcomes)
            rows = table.tally.rows
        else:
            failures += [_failure(table, check, outcomes[expectation_id], max_bad_examples)
                         for expectation_id, check in by_id.items() if not outcomes[expectation_id].success]
            rows = len(table.original)
        stats = result.statistics
        per_table[table.name] = {
            "rows": rows,
            "evaluated_expectations": int(stats["evaluated_expectations"]),
            "successful_expectations": int(stats["successful_expectations"]),
            "unsuccessful_expectations": int(stats["unsuccessful_expectations"]),
        }

    index = None
    if docs_dir is not None:
        context.build_data_docs()
        index_path = docs_dir / "index.html"
        index = str(index_path) if index_path.is_file() else None

    statistics = {
        "evaluated_expectations": sum(t["evaluated_expectations"] for t in per_table.values()),
        "successful_expectations": sum(t["successful_expectations"] for t in per_table.values()),
        "unsuccessful_expectations": sum(t["unsuccessful_expectations"] for t in per_table.values()),
        "tables": per_table,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return ValidationReport(not failures, failures, statistics, index)


def _carry_tally(context: Any, result: Any, table: _Table, by_id: dict[str, _Check],
                 outcomes: dict[str, Any]) -> list[Failure]:
    """Puts the whole log's tallies into GX's result (in place of the sample's outcomes), stores it
    again for Data Docs, and returns the failures."""
    tally = table.tally
    assert tally is not None
    failures = []
    for (expectation_id, check), rule, counts in zip(by_id.items(), tally.rules, tally.tallies, strict=True):
        outcome = outcomes[expectation_id]
        outcome.result = counts.gx_result(rule)
        outcome.success = counts.success(rule)
        outcome.exception_info = {"raised_exception": False, "exception_message": None,
                                  "exception_traceback": None}
        if not outcome.success:
            failures.append(failure_of(table.name, check, outcome.expectation_config.type, outcome.result,
                                       counts.examples))
    evaluated = len(result.results)
    successful = sum(1 for outcome in result.results if outcome.success)
    result.success = successful == evaluated
    result.statistics.update({
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "unsuccessful_expectations": evaluated - successful,
        "success_percent": 100.0 * successful / evaluated if evaluated else None,
    })
    store = context.validation_results_store
    for key in store.list_keys():
        if key.expectation_suite_identifier.name == table.suite:
            store.set(key, result)
    return failures


def require_valid(
    interactions: pd.DataFrame,
    catalogue: pd.DataFrame,
    *,
    min_interactions_per_user: int,
    max_bad_examples: int,
    data_docs_dir: str | Path | None = None,
) -> ValidationReport:
    """Like `validate_dataset`, but raises DataValidationError when any expectation fails."""
    report = validate_dataset(
        interactions,
        catalogue,
        min_interactions_per_user=min_interactions_per_user,
        max_bad_examples=max_bad_examples,
        data_docs_dir=data_docs_dir,
    )
    if not report.success:
        raise DataValidationError(report)
    return report


# --- the two suites -------------------------------------------------------------------------------


def catalogue_item_ids(catalogue: pd.DataFrame) -> pd.Index:
    """The ids an interaction's item_id must be among."""
    return pd.Index(catalogue["item_id"].dropna().unique())






def _interactions_table(
    gxe: Any, interactions: pd.DataFrame, catalogue: pd.DataFrame, min_per_user: int
) -> _Table:
    # Row numbers in reports are the frame's index labels: positions for a RangeIndex, the source
    # rows for what ingest passes (whose rows may have been sorted).
    frame = interactions if interactions.index.is_unique else interactions.reset_index(drop=True)
    helpers = interactions_helpers(frame, catalogue_item_ids(catalogue))
    # copy() consolidates the blocks once; GX otherwise re-consolidates on every domain copy. GX sees
    # the rows in row-number order, so its first offending rows are the first of the source.
    validated = pd.concat([frame, helpers], axis=1).copy()
    if not validated.index.is_monotonic_increasing:
        validated = validated.sort_index()
    table = _Table("interactions", INTERACTIONS_SUITE, frame, validated)
    table.checks = interactions_checks(gxe, min_per_user, short_user_count(frame, min_per_user))
    return table


def interactions_checks(gxe: Any, min_per_user: int, short_users: int) -> list[_Check]:
    """The interactions suite: the rules, each a GX expectation (on a contract or a helper column)."""
    return [
        _Check(
            "*",
            "The interactions table has at least one row.",
            "the interaction log is empty: check the source path and the converter's filters",
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
        ),
        _not_null(
            gxe,
            "user_id",
            "every interaction names its user",
            "drop these rows or fill user_id in the source",
        ),
        _not_null(
            gxe,
            "item_id",
            "every interaction names its item",
            "drop these rows or fill item_id in the source",
        ),
        _not_null(
            gxe,
            "timestamp",
            "every interaction has a timestamp that parsed",
            "these timestamps did not parse (NaT): fix their format in the source or drop the rows",
        ),
        _not_null(
            gxe, "value", "every interaction has a value", "fill value in the source or drop these rows"
        ),
        _Check(
            "value",
            "Interaction value is at least 0.",
            "values must be non-negative business values: fix the source or drop these rows",
            gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0),
        ),
        _Check(
            "value",
            "Interaction value is finite (helper column value_is_finite is True).",
            "infinite values often come from a division by zero upstream: fix the source or drop these rows",
            gxe.ExpectColumnValuesToBeInSet(column="value_is_finite", value_set=[True]),
        ),
        _Check(
            "item_id",
            "Every interaction's item_id is in the catalogue (helper column item_in_catalogue is True).",
            "add the missing items to the catalogue or drop the interactions with unknown item_ids",
            gxe.ExpectColumnValuesToBeInSet(column="item_in_catalogue", value_set=[True]),
        ),
        _Check(
            "timestamp",
            "Each user's timestamps never decrease in row order (helper column timestamp_in_order is True).",
            "sort each user's rows by timestamp (set data.sort_by_timestamp: true) or fix the source order",
            gxe.ExpectColumnValuesToBeInSet(column="timestamp_in_order", value_set=[True]),
            extras=("previous_timestamp",),
        ),
        _Check(
            ",".join(COMPOUND_KEY),
            "No two interactions share the same user_id, item_id and timestamp.",
            "drop the duplicate rows, e.g. frame.drop_duplicates(['user_id', 'item_id', 'timestamp'])",
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(COMPOUND_KEY)),
        ),
        _Check(
            "user_id",
            f"Every user has at least {min_per_user} interactions (helper column user_interaction_count).",
            f"drop the {short_users} user(s) with fewer than {min_per_user} interactions, or lower "
            "data.min_interactions_per_user (leave-one-out needs at least 3)",
            gxe.ExpectColumnValuesToBeBetween(column="user_interaction_count", min_value=min_per_user),
            extras=("user_interaction_count",),
        ),
    ]


def _catalogue_table(gxe: Any, catalogue: pd.DataFrame) -> _Table:
    frame = catalogue.reset_index(drop=True)
    helpers = pd.DataFrame(
        {
            "value_is_finite": ~np.isinf(frame["value"].to_numpy(dtype="float64")),
        },
        index=frame.index,
    )
    # GX only needs the checked columns; leaving the list-valued `categories` out keeps it lean.
    columns = ["item_id", "value"]
    validated = pd.concat([frame[columns], helpers], axis=1).copy()
    table = _Table("catalogue", CATALOGUE_SUITE, catalogue, validated)
    table.checks = [
        _Check(
            "*",
            "The catalogue has at least one row.",
            "the catalogue is empty: check the catalogue source (data.catalogue_path) and the converter",
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
        ),
        _not_null(
            gxe,
            "item_id",
            "every catalogue row has an item_id",
            "drop these rows or fill item_id in the source",
        ),
        _Check(
            "item_id",
            "Each item_id appears in one catalogue row only.",
            "keep one row per item_id, e.g. catalogue.drop_duplicates('item_id')",
            gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        ),
        _not_null(
            gxe, "value", "every item has a value", "fill value (the bid) in the source or drop these items"
        ),
        _Check(
            "value",
            "Item value is at least 0.",
            "item values (bids) must be non-negative: fix the source or drop these items",
            gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0),
        ),
        _Check(
            "value",
            "Item value is finite (helper column value_is_finite is True).",
            "replace infinite item values in the source or drop these items",
            gxe.ExpectColumnValuesToBeInSet(column="value_is_finite", value_set=[True]),
        ),
    ]
    return table


def _not_null(gxe: Any, column: str, what: str, fix: str) -> _Check:
    return _Check(
        column,
        f"Column {column} is never null: {what}.",
        fix,
        gxe.ExpectColumnValuesToNotBeNull(column=column),
    )


# --- GX plumbing ----------------------------------------------------------------------------------


def _import_gx() -> tuple[Any, Any]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def _context(gx: Any, docs_dir: Path | None) -> Any:
    """An in-memory context; its only Data Docs site (if any) writes static HTML to docs_dir."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, dict] = {}
    if docs_dir is not None:
        sites["genrec"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        plugins_directory=None,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _failure(table: _Table, check: _Check, outcome: Any, max_bad_examples: int) -> Failure:
    result = outcome.result or {}
    exception = outcome.exception_info or {}
    if exception.get("raised_exception"):
        return Failure(
            table.name,
            check.column,
            outcome.expectation_config.type,
            check.description,
            0,
            [],
            "Great Expectations raised while checking this: "
            f"{exception.get('exception_message')}; report it as a bug in genrec.data.validation",
        )
    # The GX frame is indexed by row number, so GX's unexpected indices are the rows' numbers.
    rows = [int(entry) for entry in (result.get("partial_unexpected_index_list") or [])]
    return failure_of(table.name, check, outcome.expectation_config.type, result,
                      _examples(table, rows[:max_bad_examples], check.extras))


def failure_of(table: str, check: _Check, expectation: str, result: dict, examples: list[dict]) -> Failure:
    """The Failure of a check from GX's result dict (SUMMARY format) and the offending rows."""
    if "unexpected_count" not in result:  # a table-level expectation such as the row count
        return Failure(table, check.column, expectation, check.description, 0, [], check.fix,
                       observed=result.get("observed_value"))
    return Failure(table, check.column, expectation, check.description,
                   int(result.get("unexpected_count") or 0), examples, check.fix)


def _examples(table: _Table, rows: list[int], extras: tuple[str, ...]) -> list[dict]:
    return [example_row(table.original.loc[row], table.frame.loc[row], row, extras) for row in rows]






def _show(value: Any) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return repr(value)


def _require_columns(frame: pd.DataFrame, schema: TableSchema) -> None:
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ContractError(
            f"{schema.name}: column {missing[0]!r} is missing; pass the frame through "
            f"{schema.name.upper()}.conform first"
        )
