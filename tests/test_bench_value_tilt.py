"""The value tilt of bench_value_tilt: a re-ranking of the model's own candidates."""

import numpy as np

from benchmarks.bench_value_tilt import tilted


def test_tilt_reorders_by_log_prob_plus_alpha_log_value() -> None:
    items = np.array([[0, 1, 2, -1] + [-1] * 8])
    scores = np.array([[-1.0, -1.5, -3.0, -np.inf] + [-np.inf] * 8])
    values = np.array([1.0, np.e, np.e ** 4])
    assert tilted(items, scores, values, 0.0)[0, :4].tolist() == [0, 1, 2, -1]
    # alpha 1: keys -1, -0.5, 1 -> the most valuable first; padding stays last.
    assert tilted(items, scores, values, 1.0)[0, :4].tolist() == [2, 1, 0, -1]
    # alpha 0.25: keys -1, -1.25, -2 -> unchanged order (the tilt is too small to pass anyone).
    assert tilted(items, scores, values, 0.25)[0, :3].tolist() == [0, 1, 2]
