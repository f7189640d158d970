import pytest

from genrec.config import ConfigError, GenrecConfig
from genrec.serving.policy import BeamLadder, BeamPolicy, PolicyError


def ladder() -> BeamLadder:
    return BeamLadder.from_config([[4], [8, 8, 4], [32], [32, 32]], default_rung=2, max_width=64)


def test_policy_repeats_last_width_for_deeper_levels() -> None:
    assert BeamPolicy((8, 4)).for_levels(4) == (8, 4, 4, 4)
    assert BeamPolicy((8, 4)).cost == 12 and BeamPolicy((8, 4)).label() == "8x4"
    with pytest.raises(PolicyError):
        BeamPolicy(()).for_levels(2)


def test_ladder_bounds_and_clamp() -> None:
    rungs = ladder()
    assert len(rungs) == 4 and rungs.top == 3
    assert rungs.clamp(-3) == 0 and rungs.clamp(9) == 3
    assert rungs.policy(1).widths == (8, 8, 4)
    with pytest.raises(PolicyError, match="outside the ladder"):
        rungs.policy(4)


@pytest.mark.parametrize("rungs,default,match", [
    ([], 0, "at least one rung"),
    ([[4], [0]], 0, r"beam_ladder\[1\]"),
    ([[4], [128]], 0, "1..64"),
    ([[16], [4]], 0, "cheapest to widest"),
    ([[4], [8]], 2, "default_rung"),
])
def test_ladder_rejects_bad_config(rungs, default, match) -> None:
    with pytest.raises(PolicyError, match=match):
        BeamLadder.from_config(rungs, default, 64)


def test_request_policy_may_not_exceed_widest_rung() -> None:
    rungs = ladder()
    assert rungs.check_request_policy([32, 16], levels=3).widths == (32, 16)
    with pytest.raises(PolicyError, match=r"beam_policy\[1\]=33"):
        rungs.check_request_policy([8, 33], levels=3)
    for bad in ([], [0], [True], ["8"]):
        with pytest.raises(PolicyError):
            rungs.check_request_policy(bad, levels=3)


def test_request_policy_longer_than_the_levels_is_refused_at_once() -> None:
    """One width per semantic-ID level at most. A 16,000-width policy used to take a minute (the
    bound per width was recomputed from the whole policy); now its length is refused before any
    width is read."""
    import time

    rungs = ladder()
    assert rungs.check_request_policy([8, 8, 8], levels=3).widths == (8, 8, 8)
    with pytest.raises(PolicyError, match="4 widths but the model has 3 semantic-ID levels"):
        rungs.check_request_policy([8, 8, 8, 8], levels=3)
    started = time.perf_counter()
    with pytest.raises(PolicyError, match="16000 widths"):
        rungs.check_request_policy([1] * 16000, levels=3)
    assert time.perf_counter() - started < 0.01


def test_width_bound_is_the_widest_rung_repeated() -> None:
    rungs = ladder()  # widest rung [32, 32]
    assert [rungs.width_bound(level) for level in range(4)] == [32, 32, 32, 32]
    narrow_tail = BeamLadder.from_config([[4], [16, 8]], default_rung=0, max_width=64)
    assert [narrow_tail.width_bound(level) for level in range(3)] == [16, 8, 8]


def test_config_checks_the_ladder() -> None:
    with pytest.raises(ConfigError, match="cheapest to widest"):
        GenrecConfig.from_dict({"serving": {"beam_ladder": [[16], [4]], "default_rung": 0}})
    with pytest.raises(ConfigError, match="controller.safe_rung"):
        GenrecConfig.from_dict({"controller": {"safe_rung": 7}})
