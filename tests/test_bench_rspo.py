"""The pooling behind bench_rspo --origins: per-user totals over origins whose users differ."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_rspo import _per_user_totals


def test_per_user_totals_align_users_across_origins() -> None:
    users = np.array(["a", "b", "c"])
    first = (np.array(["c", "a"]), np.array([1.0, 2.0]))
    # b has a target only at the second origin; a's two targets add up.
    second = (np.array(["b", "a"]), np.array([4.0, 8.0]))
    assert _per_user_totals([first, second], users).tolist() == [10.0, 4.0, 1.0]
    assert _per_user_totals([], users).tolist() == [0.0, 0.0, 0.0]
