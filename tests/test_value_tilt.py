"""Value-aware decoding (genrec.model.value_tilt) against a plain per-row reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from genrec.model.value_tilt import item_value_table, mean_positive, tilted_top_k


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


def test_item_values_are_the_medians_of_their_interactions() -> None:
    frame = pd.DataFrame({"item_id": ["a", "a", "a", "b", "zzz"], "value": [1.0, 3.0, 5.0, 2.0, 9.0]})
    values = item_value_table(frame, np.array(["b", "a", "c"]))
    assert values.tolist() == [2.0, 3.0, 0.0]
    assert mean_positive(values) == 2.5 and mean_positive(np.zeros(3)) == 1.0
