"""Value-aware decoding (genrec.model.value_tilt) against a plain per-row reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.data.partitioned import write_partitioned
from genrec.data.split import leave_one_out
from genrec.model.value_tilt import (
    ValueTilt,
    item_value_table,
    mean_positive,
    tilt,
    tilted_top_k,
    training_item_values,
)
from tests.conftest import make_log


def reference_top_k(items: np.ndarray, scores: np.ndarray, values: np.ndarray, weight: float, mean: float,
                    k: int) -> list[list[int]]:
    """Row by row: sort the real candidates by p * ((1 - w) + w v / mean), padding after them."""
    out = []
    for row_items, row_scores in zip(items.tolist(), scores.tolist()):
        real = [(math.exp(s) * ((1 - weight) + weight * values[i] / mean), pos, i)
                for pos, (i, s) in enumerate(zip(row_items, row_scores)) if i >= 0]
        ranked = [i for _, _, i in sorted(real, key=lambda t: (-t[0], t[1]))]
        out.append((ranked + [-1] * len(row_items))[:k])
    return out


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.7, 1.0])
def test_tilted_top_k_matches_the_reference(weight: float) -> None:
    rng = np.random.default_rng(0)
    n_items, n, pool, k = 50, 40, 12, 5
    values = rng.lognormal(0.0, 1.0, n_items) * (rng.random(n_items) > 0.1)  # some items without value
    items = np.stack([rng.choice(n_items, pool, replace=False) for _ in range(n)])
    items[:3, -4:] = -1  # short beams
    scores = np.sort(rng.normal(-3, 1, (n, pool)), axis=1)[:, ::-1].copy()
    mean = mean_positive(values)
    got, _ = tilted_top_k(items, scores, values, weight, mean, k)
    assert got.tolist() == reference_top_k(items, scores, values, weight, mean, k)
    if weight == 0.0:
        assert np.array_equal(got, items[:, :k])  # no tilt: the likelihood ranking


def test_full_tilt_ranks_by_expected_value_and_bad_input_is_refused() -> None:
    items = np.array([[0, 1, 2]])
    scores = np.log(np.array([[0.5, 0.3, 0.2]]))
    values = np.array([1.0, 4.0, 1.0])
    top, _ = tilted_top_k(items, scores, values, 1.0, 2.0, 2)
    assert top.tolist() == [[1, 0]]  # 0.3 x 4 > 0.5 x 1
    with pytest.raises(ValueError, match="widen the final beam"):
        tilted_top_k(items, scores, values, 0.5, 2.0, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tilted_top_k(items, scores, values, 1.5, 2.0, 2)


def test_item_values_are_the_means_of_their_interactions_and_an_unseen_item_is_untilted() -> None:
    frame = pd.DataFrame({"item_id": ["a", "a", "a", "b", "zzz"], "value": [1.0, 3.0, 8.0, 2.0, 9.0]})
    values = item_value_table(frame, np.array(["b", "a", "c"]))
    # "c" has no interaction: it gets the mean of the others, a tilt factor of exactly 1.
    assert values.tolist() == [2.0, 4.0, 3.0]
    assert tilt(values[2:], 0.7, mean_positive(values[:2]))[0] == pytest.approx(0.0, abs=1e-12)
    assert mean_positive(values) == 3.0 and mean_positive(np.zeros(3)) == 1.0


def test_training_values_read_the_training_rows_alike_from_a_frame_a_file_and_partitions(tmp_path: Path
                                                                                        ) -> None:
    splits = leave_one_out(make_log(users=40, items=30, per_user=7))
    item_ids = np.array([f"i{i}" for i in range(32)])  # i30, i31: never interacted with
    train = splits[splits["split"] == "train"]
    reference = [train.loc[train["item_id"] == item, "value"].mean() for item in item_ids]
    seen = np.isfinite(reference)
    expected = np.where(seen, reference, np.mean(np.asarray(reference)[seen]))
    from_frame = training_item_values(splits, item_ids)
    np.testing.assert_allclose(from_frame, expected, rtol=1e-12)
    splits.to_parquet(tmp_path / "splits.parquet", index=False)
    (tmp_path / "parts").mkdir()
    write_partitioned(splits, tmp_path / "parts", 4)
    np.testing.assert_allclose(training_item_values(tmp_path / "splits.parquet", item_ids), from_frame, rtol=1e-12)
    np.testing.assert_allclose(training_item_values(tmp_path / "parts", item_ids), from_frame, rtol=1e-12)
    # Not the valid/test rows: changing a test row's value leaves the table as it was.
    changed = splits.copy()
    changed.loc[changed["split"] == "test", "value"] = 1e6
    np.testing.assert_array_equal(training_item_values(changed, item_ids), from_frame)


def test_a_narrow_beam_is_reordered_and_padded_never_refused() -> None:
    values = np.array([1.0, 4.0, 1.0, 2.0])
    tilted = ValueTilt.from_values(1.0, values)
    items, scores = tilted.rerank(np.array([[0, 1, 2]]), np.log(np.array([[0.5, 0.3, 0.2]])), top_k=5)
    assert items.tolist() == [[1, 0, 2, -1, -1]] and np.isneginf(scores[0, 3:]).all()
    assert tilted.pool(10, [4]) == 10 and tilted.pool(10, [16, 32]) == 32
    with pytest.raises(ValueError, match="train.value_tilt"):
        ValueTilt.from_values(1.2, values)
