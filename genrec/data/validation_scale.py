"""The interactions suite at scale: each rule tallied bucket by bucket, the tallies added up.

The rules are still the GX expectations of `genrec.data.validation.interactions_checks`; this module
reads each expectation's own parameters into a `Rule` and evaluates it on one bucket of users with
GX's pandas semantics (nulls ignored by value rules, rows missing every compound column ignored by
the compound-uniqueness rule, `mostly` 1). Every rule that spans rows looks within one user (order in
time, duplicates, interactions per user), and a user's rows all sit in one bucket, so a bucket's tally
is final for its rows and the log's tally is the sum: a map and a reduce on Ray. The first offending
rows (by row number) of each bucket are kept, and the first of all of them are the log's examples, as
GX would quote them on the whole frame. `tests/test_validation_scale.py` holds the two to the same
failures, counts and examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from genrec.data.schema import INTERACTIONS
from genrec.data.validation_rows import ROW, example_row, interactions_helpers, short_user_count

ROW_COUNT, NOT_NULL, BETWEEN, IN_SET, COMPOUND_UNIQUE = (
    "row_count", "not_null", "between", "in_set", "compound_unique")
# GX expectation type -> how a bucket evaluates it.
RULE_KINDS = {
    "expect_table_row_count_to_be_between": ROW_COUNT,
    "expect_column_values_to_not_be_null": NOT_NULL,
    "expect_column_values_to_be_between": BETWEEN,
    "expect_column_values_to_be_in_set": IN_SET,
    "expect_compound_columns_to_be_unique": COMPOUND_UNIQUE,
}


class UnsupportedRule(ValueError):
    """An expectation this module cannot evaluate bucket by bucket (a test keeps the suite within it)."""


@dataclass(frozen=True)
class Rule:
    """One expectation's parameters, as plain values a Ray task can carry."""

    kind: str
    column: str = ""
    columns: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    strict_min: bool = False
    strict_max: bool = False
    value_set: tuple[Any, ...] = ()
    # Helper columns an example quotes.
    extras: tuple[str, ...] = ()


def rule_of(expectation: Any, extras: tuple[str, ...] = ()) -> Rule:
    """The Rule of a GX expectation; UnsupportedRule for a kind or an option buckets cannot honour."""
    kind = RULE_KINDS.get(expectation.expectation_type)
    if kind is None:
        raise UnsupportedRule(f"{expectation.expectation_type} has no bucket evaluator: add one to "
                              "genrec.data.validation_scale or keep the rule out of the interactions suite")
    fields = expectation.dict()
    if fields.get("mostly", 1) != 1 or fields.get("row_condition"):
        raise UnsupportedRule(f"{expectation.expectation_type}: mostly and row_condition are not evaluated "
                              "at scale")
    if kind == COMPOUND_UNIQUE and fields.get("ignore_row_if") != "all_values_are_missing":
        raise UnsupportedRule("expect_compound_columns_to_be_unique: only ignore_row_if="
                              "all_values_are_missing (GX's default) is evaluated at scale")
    return Rule(kind=kind, column=fields.get("column") or "", columns=tuple(fields.get("column_list") or ()),
                min_value=fields.get("min_value"), max_value=fields.get("max_value"),
                strict_min=bool(fields.get("strict_min")), strict_max=bool(fields.get("strict_max")),
                value_set=tuple(fields.get("value_set") or ()), extras=extras)


@dataclass
class RuleTally:
    """A rule's outcome over some rows: counts, and the first offending rows (by row number)."""

    element_count: int = 0
    missing_count: int = 0
    unexpected_count: int = 0
    examples: list[dict] = field(default_factory=list)
    # The offending value of each example (a dict of the columns for a compound rule).
    values: list[Any] = field(default_factory=list)

    def add(self, other: RuleTally, max_examples: int) -> None:
        self.element_count += other.element_count
        self.missing_count += other.missing_count
        self.unexpected_count += other.unexpected_count
        merged = sorted(zip(self.examples + other.examples, self.values + other.values, strict=True),
                        key=lambda pair: pair[0][ROW])[:max_examples]
        self.examples = [example for example, _ in merged]
        self.values = [value for _, value in merged]

    def success(self, rule: Rule) -> bool:
        if rule.kind == ROW_COUNT:
            return _within(self.element_count, rule)
        return self.unexpected_count == 0

    def gx_result(self, rule: Rule) -> dict[str, Any]:
        """The tally as GX's SUMMARY result dict, for Data Docs."""
        if rule.kind == ROW_COUNT:
            return {"observed_value": self.element_count}
        total, missing, unexpected = self.element_count, self.missing_count, self.unexpected_count
        present = total - missing
        counts: dict[str, int] = {}
        for value in self.values:
            counts[repr(value)] = counts.get(repr(value), 0) + 1
        return {
            "element_count": total,
            "missing_count": missing,
            "missing_percent": 100.0 * missing / total if total else None,
            "unexpected_count": unexpected,
            "unexpected_percent": 100.0 * unexpected / present if present else None,
            "unexpected_percent_total": 100.0 * unexpected / total if total else None,
            "unexpected_percent_nonmissing": 100.0 * unexpected / present if present else None,
            "partial_unexpected_list": [_jsonable(v) for v in self.values],
            "partial_unexpected_index_list": [example[ROW] for example in self.examples],
            "partial_unexpected_counts": [{"value": key, "count": count} for key, count in counts.items()],
        }


def _within(count: int, rule: Rule) -> bool:
    low = rule.min_value is None or (count > rule.min_value if rule.strict_min else count >= rule.min_value)
    high = rule.max_value is None or (count < rule.max_value if rule.strict_max else count <= rule.max_value)
    return bool(low and high)


def tally_rule(rule: Rule, validated: pd.DataFrame, contract_columns: list[str],
               max_examples: int) -> RuleTally:
    """Evaluates one rule on rows (contract columns + helpers, indexed by row number)."""
    rows = len(validated)
    if rule.kind == ROW_COUNT:
        return RuleTally(element_count=rows)
    if rule.kind == COMPOUND_UNIQUE:
        subset = validated[list(rule.columns)]
        considered = subset.notna().any(axis=1).to_numpy()
        unexpected = np.zeros(rows, dtype=bool)
        unexpected[considered] = subset[considered].duplicated(keep=False).to_numpy()
        missing = int((~considered).sum())
    else:
        column = validated[rule.column]
        present = column.notna().to_numpy()
        missing = int((~present).sum())
        if rule.kind == NOT_NULL:
            unexpected, missing = ~present, 0
        elif rule.kind == IN_SET:
            unexpected = present & ~column.isin(list(rule.value_set)).to_numpy()
        else:  # BETWEEN
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
            inside = np.ones(rows, dtype=bool)
            with np.errstate(invalid="ignore"):
                if rule.min_value is not None:
                    inside &= values > rule.min_value if rule.strict_min else values >= rule.min_value
                if rule.max_value is not None:
                    inside &= values < rule.max_value if rule.strict_max else values <= rule.max_value
            unexpected = present & ~inside
    labels = np.sort(validated.index.to_numpy()[unexpected])[:max_examples]
    examples, values = [], []
    for label in labels:
        row = validated.loc[label]
        examples.append(example_row(row[contract_columns], row, int(label), rule.extras))
        values.append(row[list(rule.columns)].to_dict() if rule.kind == COMPOUND_UNIQUE else row[rule.column])
    return RuleTally(element_count=rows, missing_count=missing, unexpected_count=int(unexpected.sum()),
                     examples=examples, values=[_jsonable(v) for v in values])


@dataclass
class BucketValidation:
    """The interactions suite on one bucket of users: a tally per rule, in suite order."""

    tallies: list[RuleTally]
    rows: int
    users: int
    short_users: int

    def clean(self, rules: list[Rule]) -> bool:
        """No row of the bucket breaks a rule (the table-level row count is judged on the whole log)."""
        return all(t.unexpected_count == 0 for rule, t in zip(rules, self.tallies, strict=True)
                   if rule.kind != ROW_COUNT)


def validate_bucket(interactions: pd.DataFrame, catalogue_items: pd.Index, rules: list[Rule],
                    min_per_user: int, max_examples: int) -> BucketValidation:
    """`interactions`: one bucket in the contract, in artefact order, indexed by row number."""
    helpers = interactions_helpers(interactions, catalogue_items)
    validated = pd.concat([interactions, helpers], axis=1)
    tallies = [tally_rule(rule, validated, INTERACTIONS.names, max_examples) for rule in rules]
    return BucketValidation(tallies, len(interactions), int(interactions["user_id"].nunique()),
                            short_user_count(interactions, min_per_user))


@dataclass
class SuiteTally:
    """The interactions suite over the whole log: the buckets' tallies added up."""

    rules: list[Rule]
    tallies: list[RuleTally]
    rows: int = 0
    users: int = 0
    short_users: int = 0

    @classmethod
    def of(cls, rules: list[Rule], buckets: list[BucketValidation], max_examples: int) -> SuiteTally:
        total = cls(rules, [RuleTally() for _ in rules])
        for bucket in buckets:
            for mine, theirs in zip(total.tallies, bucket.tallies, strict=True):
                mine.add(theirs, max_examples)
            total.rows += bucket.rows
            total.users += bucket.users
            total.short_users += bucket.short_users
        return total


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
