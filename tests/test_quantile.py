"""The exact distributed quantile (radix selection over buckets) against pandas' Series.quantile,
its simple reference: equal to the last bit, whatever the values, the split into buckets, the
quantile or how soon the search gathers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data.quantile import (
    ROOT,
    Pass,
    Prefix,
    digit_histogram,
    exact_quantile,
    gather,
    local_pass,
    sortable_keys,
)


def same(got: float, expected: float) -> bool:
    return (np.isnan(got) and np.isnan(expected)) or got == expected


def bucketed_pass(buckets: list[np.ndarray], calls: list[str] | None = None) -> Pass:
    """A Pass that sums per-bucket histograms and concatenates per-bucket gathers, as the Ray tasks
    of the split step do."""
    keys = [sortable_keys(b) for b in buckets]

    def run(kind: str, prefixes: Sequence[Prefix]) -> list[np.ndarray]:
        if calls is not None:
            calls.append(kind)
        if kind == "histogram":
            return [sum(digit_histogram(k, p) for k in keys) for p in prefixes]
        return [np.concatenate([gather(k, p) for k in keys]) for p in prefixes]

    return run


EDGE_CASES = {
    "lognormal": np.random.default_rng(0).lognormal(0, 2, 50_000),
    "few distinct": np.random.default_rng(1).integers(0, 5, 10_000).astype(float),
    "constant": np.ones(5000),
    "negative and positive": np.random.default_rng(2).normal(0, 1, 7777),
    "signed zeros": np.array([0.0, -0.0, 0.0, 1.0, -1.0]),
    "one value": np.array([3.5]),
    "with NaN": np.array([np.nan, 1.0, 2.0, np.nan, 5.0]),
    "infinities": np.array([np.inf, 1.0, -np.inf, 2.0]),
    "subnormals": np.array([5e-324, 1e-310, 0.0, -5e-324, 2.2e-308]),
}


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("q", [0.0, 0.05, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("gather_limit", [4_000_000, 3])
def test_edge_cases_match_pandas(name: str, q: float, gather_limit: int) -> None:
    values = EDGE_CASES[name]
    n = int((~np.isnan(values)).sum())
    got = exact_quantile(n, q, local_pass(values), gather_limit=gather_limit)
    assert same(got, pd.Series(values).quantile(q)), (name, q, got)


def test_no_values_is_nan() -> None:
    assert np.isnan(exact_quantile(0, 0.95, local_pass(np.array([]))))


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=300), q=st.floats(0, 1),
       buckets=st.integers(1, 7), gather_limit=st.integers(1, 50))
def test_any_values_any_buckets_match_pandas(values: list[float], q: float, buckets: int,
                                             gather_limit: int) -> None:
    column = np.array(values, dtype=np.float64)
    n = int((~np.isnan(column)).sum())
    parts = np.array_split(column, buckets)
    got = exact_quantile(n, q, bucketed_pass(parts), gather_limit=gather_limit)
    assert same(got, pd.Series(column).quantile(q))


def test_a_given_root_histogram_saves_a_pass_and_changes_nothing() -> None:
    values = EDGE_CASES["lognormal"]
    parts = np.array_split(values, 4)
    plain_calls: list[str] = []
    plain = exact_quantile(len(values), 0.95, bucketed_pass(parts, plain_calls))
    given_calls: list[str] = []
    root = sum(digit_histogram(sortable_keys(p), ROOT) for p in parts)
    with_root = exact_quantile(len(values), 0.95, bucketed_pass(parts, given_calls), root_histogram=root)
    assert plain == with_root == pd.Series(values).quantile(0.95)
    assert len(given_calls) == len(plain_calls) - 1


def test_passes_stay_few_on_a_wide_column() -> None:
    """Bids over several orders of magnitude, gathered late: a handful of passes, not one per bit."""
    values = np.random.default_rng(3).lognormal(0, 3, 200_000)
    calls: list[str] = []
    got = exact_quantile(len(values), 0.95, bucketed_pass(np.array_split(values, 5), calls), gather_limit=1_000)
    assert got == pd.Series(values).quantile(0.95)
    assert len(calls) <= 4, calls
