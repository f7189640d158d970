"""Great Expectations validation of the contract frames: one test per kind of bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.data.schema import CATALOGUE, INTERACTIONS
from genrec.data.validation import (
    DataValidationError,
    Failure,
    ValidationReport,
    require_valid,
    validate_dataset,
)

MIN_PER_USER = 3
MAX_EXAMPLES = 5
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"


def make_pair() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three users with four time-ordered interactions each, over a six-item catalogue."""
    rows = []
    for u in range(3):
        for k in range(4):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{(u + k) % 6}",
                    "timestamp": 1_600_000_000 + 100 * u + 10 * k,
                    "value": 1.0 + k,
                }
            )
    interactions = INTERACTIONS.conform(pd.DataFrame(rows))
    catalogue = CATALOGUE.conform(
        pd.DataFrame(
            {
                "item_id": [f"i{i}" for i in range(6)],
                "title": [f"item {i}" for i in range(6)],
                "description": None,
                "brand": ["acme"] * 6,
                "categories": [["beauty", "skin"]] * 6,
                "value": [0.5 * (i + 1) for i in range(6)],
            }
        )
    )
    return interactions, catalogue


def run(interactions: pd.DataFrame, catalogue: pd.DataFrame, **kwargs) -> ValidationReport:
    kwargs.setdefault("min_interactions_per_user", MIN_PER_USER)
    kwargs.setdefault("max_bad_examples", MAX_EXAMPLES)
    return validate_dataset(interactions, catalogue, **kwargs)


def only_failure(report: ValidationReport, table: str, column: str, expectation: str) -> Failure:
    assert report.success is False
    matches = [
        f for f in report.failures if (f.table, f.column, f.expectation) == (table, column, expectation)
    ]
    assert matches, f"no {table}.{column} {expectation} failure in:\n{report.summary()}"
    assert len(report.failures) == 1, report.summary()
    return matches[0]


def example_rows(failure: Failure) -> list[int]:
    return [example["row"] for example in failure.examples]


def test_valid_data_passes():
    interactions, catalogue = make_pair()
    before = interactions.copy(), catalogue.copy()
    report = run(interactions, catalogue)
    pd.testing.assert_frame_equal(interactions, before[0])
    pd.testing.assert_frame_equal(catalogue, before[1])
    assert report.success, report.summary()
    assert report.failures == []
    assert report.statistics["evaluated_expectations"] == report.statistics["successful_expectations"] > 0
    assert set(report.statistics["tables"]) == {"interactions", "catalogue"}
    assert report.data_docs_index is None
    assert "passed" in report.summary()


def test_null_user_id():
    interactions, catalogue = make_pair()
    interactions.loc[4, "user_id"] = None
    # User u1 keeps three rows, still enough for MIN_PER_USER.
    failure = only_failure(run(interactions, catalogue), "interactions", "user_id", NOT_NULL)
    assert failure.unexpected_count == 1
    assert example_rows(failure) == [4]
    assert failure.examples[0]["user_id"] is None
    assert failure.examples[0]["item_id"] == interactions.loc[4, "item_id"]


def test_null_item_id():
    interactions, catalogue = make_pair()
    interactions.loc[2, "item_id"] = None
    failure = only_failure(run(interactions, catalogue), "interactions", "item_id", NOT_NULL)
    assert example_rows(failure) == [2]
    assert failure.examples[0]["user_id"] == "u0"


def test_unparseable_timestamp_is_reported_as_null():
    raw = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "b"],
            "item_id": ["i0", "i1", "i2", "i0", "i1", "i2"],
            "timestamp": ["2020-01-01", "2020-01-02", "not a date", "2020-01-01", "2020-01-02", "2020-01-03"],
            "value": 1.0,
        }
    )
    interactions = INTERACTIONS.conform(raw)
    assert pd.isna(interactions.loc[2, "timestamp"])
    _, catalogue = make_pair()
    failure = only_failure(run(interactions, catalogue), "interactions", "timestamp", NOT_NULL)
    assert example_rows(failure) == [2]
    assert "parse" in failure.fix


def test_negative_value():
    interactions, catalogue = make_pair()
    interactions.loc[7, "value"] = -2.5
    failure = only_failure(run(interactions, catalogue), "interactions", "value", BETWEEN)
    assert example_rows(failure) == [7]
    assert failure.examples[0]["value"] == -2.5


def test_infinite_value():
    interactions, catalogue = make_pair()
    interactions.loc[5, "value"] = np.inf
    failure = only_failure(run(interactions, catalogue), "interactions", "value", IN_SET)
    assert example_rows(failure) == [5]
    assert math.isinf(failure.examples[0]["value"])


def test_unknown_item_id():
    interactions, catalogue = make_pair()
    interactions.loc[9, "item_id"] = "not-in-catalogue"
    failure = only_failure(run(interactions, catalogue), "interactions", "item_id", IN_SET)
    assert example_rows(failure) == [9]
    assert failure.examples[0]["item_id"] == "not-in-catalogue"


def test_out_of_order_timestamps_within_a_user():
    interactions, catalogue = make_pair()
    # User u1 owns rows 4..7; its third event now happens before its second.
    interactions.loc[6, "timestamp"] = interactions.loc[4, "timestamp"] - pd.Timedelta(seconds=1)
    failure = only_failure(run(interactions, catalogue), "interactions", "timestamp", IN_SET)
    assert example_rows(failure) == [6]
    assert failure.examples[0]["previous_timestamp"] == interactions.loc[5, "timestamp"]
    assert "sort" in failure.fix


def test_interleaved_users_in_order_pass():
    interactions, catalogue = make_pair()
    # Rows of different users may interleave; only each user's own order matters.
    interleaved = interactions.iloc[[0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]].reset_index(drop=True)
    assert not interleaved["timestamp"].is_monotonic_increasing
    report = run(interleaved, catalogue)
    assert report.success, report.summary()


def test_duplicate_row():
    interactions, catalogue = make_pair()
    interactions = pd.concat([interactions, interactions.iloc[[11]]], ignore_index=True)
    failure = only_failure(
        run(interactions, catalogue),
        "interactions",
        "user_id,item_id,timestamp",
        "expect_compound_columns_to_be_unique",
    )
    assert failure.unexpected_count == 2
    assert example_rows(failure) == [11, 12]


def test_user_with_too_few_interactions():
    interactions, catalogue = make_pair()
    interactions = interactions.drop(index=[9, 10, 11]).reset_index(drop=True)  # u2 keeps one row
    failure = only_failure(run(interactions, catalogue), "interactions", "user_id", BETWEEN)
    assert example_rows(failure) == [8]
    assert failure.examples[0]["user_id"] == "u2"
    assert failure.examples[0]["user_interaction_count"] == 1
    assert str(MIN_PER_USER) in failure.description
    assert "drop the 1 user(s)" in failure.fix


def test_duplicate_catalogue_item_id():
    interactions, catalogue = make_pair()
    catalogue.loc[5, "item_id"] = "i3"
    interactions = interactions[interactions["item_id"] != "i5"].reset_index(drop=True)
    report = run(interactions, catalogue, min_interactions_per_user=1)
    failure = only_failure(report, "catalogue", "item_id", "expect_column_values_to_be_unique")
    assert example_rows(failure) == [3, 5]
    assert failure.examples[0]["title"] == "item 3"


def test_negative_catalogue_value():
    interactions, catalogue = make_pair()
    catalogue.loc[1, "value"] = -1.0
    failure = only_failure(run(interactions, catalogue), "catalogue", "value", BETWEEN)
    assert example_rows(failure) == [1]
    assert failure.examples[0]["categories"] == ["beauty", "skin"]


def test_examples_are_capped_and_count_is_complete():
    interactions, catalogue = make_pair()
    interactions["value"] = -1.0
    failure = only_failure(run(interactions, catalogue, max_bad_examples=2), "interactions", "value", BETWEEN)
    assert failure.unexpected_count == len(interactions)
    assert example_rows(failure) == [0, 1]


def test_empty_interactions_is_a_failure_not_a_crash():
    _, catalogue = make_pair()
    empty = INTERACTIONS.conform(pd.DataFrame(columns=INTERACTIONS.names))
    report = run(empty, catalogue)
    failure = only_failure(report, "interactions", "*", "expect_table_row_count_to_be_between")
    assert failure.observed == 0
    assert failure.examples == []


def test_require_valid_raises_with_column_and_expectation():
    interactions, catalogue = make_pair()
    interactions.loc[1, "user_id"] = None
    with pytest.raises(DataValidationError) as info:
        require_valid(interactions, catalogue, min_interactions_per_user=MIN_PER_USER, max_bad_examples=1)
    message = str(info.value)
    assert "user_id" in message and NOT_NULL in message
    assert "row 1" in message
    assert message == info.value.report.summary()
    assert info.value.report.success is False


def test_require_valid_returns_report_when_valid():
    report = require_valid(*make_pair(), min_interactions_per_user=MIN_PER_USER, max_bad_examples=1)
    assert report.success


def test_data_docs_written_on_failure_and_success(tmp_path: Path):
    interactions, catalogue = make_pair()
    bad = interactions.copy()
    bad.loc[0, "value"] = -1.0
    report = run(bad, catalogue, data_docs_dir=tmp_path / "docs")
    assert not report.success
    assert report.data_docs_index == str((tmp_path / "docs" / "index.html").resolve())
    index = Path(report.data_docs_index)
    assert index.is_file()
    html = index.read_text()
    assert "genrec_interactions" in html and "genrec_catalogue" in html
    assert str(index) in report.summary()

    good = run(interactions, catalogue, data_docs_dir=tmp_path / "docs_ok")
    assert good.success and Path(good.data_docs_index).is_file()
