"""Row-level pieces shared by the whole-log validation (validation.py) and the bucket tallies
(validation_scale.py): the helper columns the row-spanning rules are expected on, and how an
offending row is quoted in a report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# Key of an example's row number (its label in the original frame).
ROW = "row"


def example_row(original: pd.Series, validated: pd.Series, row: int, extras: tuple[str, ...]) -> dict:
    """An offending row as a report quotes it: its number, its contract columns, its helper values."""
    example: dict[str, Any] = {ROW: row}
    example.update({k: plain_value(v) for k, v in original.items()})
    for key in extras:
        value = plain_value(validated[key])
        example[key] = int(value) if isinstance(value, float) and value.is_integer() else value
    return example


def plain_value(value: Any) -> Any:
    """numpy scalars become Python ones so that examples print and serialise simply."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def interactions_helpers(frame: pd.DataFrame, catalogue_items: pd.Index) -> pd.DataFrame:
    """The helper columns the row-spanning rules are expected on, for rows in the artefact's order
    (time order within each user). Every rule looks only within one user, so a bucket of users gets
    the same helpers as the whole log."""
    users = frame["user_id"]
    timestamps = frame["timestamp"]
    values = frame["value"]
    # Previous timestamp of the same user in row order; NaT for a user's first row and null users.
    previous = timestamps.groupby(users, sort=False).shift()
    counts = users.map(users.value_counts())  # NaN where user_id is null
    known = frame["item_id"].isin(catalogue_items)
    return pd.DataFrame(
        {
            # A NaT on either side is reported by the not-null check, not as out of order.
            "timestamp_in_order": ~(timestamps < previous).to_numpy(),
            "previous_timestamp": previous,
            "user_interaction_count": counts,
            "item_in_catalogue": np.asarray(np.where(frame["item_id"].isna(), None, known), dtype=object),
            "value_is_finite": ~np.isinf(values.to_numpy(dtype="float64")),
        },
        index=frame.index,
    )


def short_user_count(interactions: pd.DataFrame, min_per_user: int) -> int:
    per_user = interactions["user_id"].value_counts()
    return int((per_user < min_per_user).sum())
