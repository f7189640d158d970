"""Leave-one-out split: each user's last interaction is the test target, the one before it the
validation target, and everything earlier is training data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genrec.data.schema import SPLIT_COLUMN


def leave_one_out(interactions: pd.DataFrame) -> pd.DataFrame:
    """Returns a copy with a `split` column; rows must already be in time order within each user."""
    out = interactions.reset_index(drop=True).copy()
    position_from_end = out.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    out[SPLIT_COLUMN] = np.select(
        [position_from_end == 0, position_from_end == 1], ["test", "valid"], default="train"
    )
    return out


def drop_latest(interactions: pd.DataFrame, count: int, keep_at_least: int = 3) -> pd.DataFrame:
    """Each user's latest `count` interactions left out (rows in time order within each user), so
    that a leave-one-out split of the rest has an earlier origin: its test target is the item
    `count` places before the last. Users left with fewer than `keep_at_least` rows go entirely, as
    their split would have no training row. Evaluating several origins multiplies the test targets
    of a data set whose users are few."""
    if count < 0:
        raise ValueError(f"drop_latest count must be >= 0, got {count}")
    out = interactions.reset_index(drop=True)
    position_from_end = out.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    kept = out[position_from_end >= count]
    sizes = kept.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    return kept[sizes >= keep_at_least].reset_index(drop=True)


def split_frames(interactions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The interactions each stage may see: train; train+valid (to predict the valid target)."""
    if SPLIT_COLUMN not in interactions.columns:
        raise ValueError(f"interactions have no {SPLIT_COLUMN!r} column: run leave_one_out first")
    return {name: interactions[interactions[SPLIT_COLUMN] == name] for name in ("train", "valid", "test")}
