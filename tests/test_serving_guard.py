"""The local in-flight guard on a fake clock: one rung down per burst, back up one rung at a time
after a calm spell, never above the rung the admin endpoint (or the default) chose."""

from __future__ import annotations

from genrec.serving.admin import PolicyState
from genrec.serving.policy import BeamLadder

GUARD = 8
RECOVER_SECONDS = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(clock: Clock, default_rung: int = 2) -> PolicyState:
    ladder = BeamLadder.from_config([[4], [8], [16], [32]], default_rung=default_rung, max_width=64)
    return PolicyState(ladder, GUARD, recover_fraction=0.5, recover_seconds=RECOVER_SECONDS, clock=clock)


def burst(policy: PolicyState, size: int) -> None:
    for _ in range(size):
        policy.enter()
    for _ in range(size):
        policy.leave()


def test_a_burst_costs_one_rung_then_the_guard_climbs_back() -> None:
    clock = Clock()
    policy = state(clock)
    burst(policy, GUARD + 5)
    assert (policy.current.rung, policy.current.source) == (1, "guard")
    clock.now += RECOVER_SECONDS - 0.1
    policy.tick()
    assert policy.current.rung == 1, "calm for less than guard_recover_seconds: no climb yet"
    clock.now += 0.2
    policy.tick()
    assert (policy.current.rung, policy.current.source) == (2, "default")
    clock.now += 10 * RECOVER_SECONDS
    policy.tick()
    assert policy.current.rung == 2, "never above the chosen rung"


def test_two_bursts_two_rungs_and_one_rung_per_calm_spell_back() -> None:
    clock = Clock()
    policy = state(clock, default_rung=3)
    burst(policy, GUARD + 1)
    burst(policy, GUARD + 1)
    assert policy.current.rung == 1
    clock.now += RECOVER_SECONDS
    policy.tick()
    policy.tick()
    assert policy.current.rung == 2, "one rung per spell, not two at once"
    clock.now += RECOVER_SECONDS
    policy.tick()
    assert (policy.current.rung, policy.current.source) == (3, "default")


def test_no_climb_while_load_stays_above_the_calm_bound() -> None:
    clock = Clock()
    policy = state(clock)
    burst(policy, GUARD + 1)
    for _ in range(GUARD // 2 + 1):  # above half the bound: not calm
        policy.enter()
    clock.now += 5 * RECOVER_SECONDS
    policy.tick()
    assert policy.current.rung == 1
    policy.leave()  # now at the calm bound: the spell starts here
    clock.now += RECOVER_SECONDS - 1
    policy.tick()
    assert policy.current.rung == 1
    clock.now += 1
    policy.tick()
    assert policy.current.rung == 2


def test_an_admin_rung_is_the_new_ceiling_and_resets_the_guard() -> None:
    clock = Clock()
    policy = state(clock)
    burst(policy, GUARD + 1)
    assert policy.current.rung == 1
    policy.set_rung(3, "admin")
    assert (policy.current.rung, policy.current.source) == (3, "admin")
    burst(policy, GUARD + 1)
    clock.now += RECOVER_SECONDS
    policy.tick()
    assert (policy.current.rung, policy.current.source) == (3, "admin")


def test_the_lowest_rung_stays_put() -> None:
    clock = Clock()
    policy = state(clock, default_rung=0)
    burst(policy, GUARD + 1)
    assert (policy.current.rung, policy.current.source) == (0, "default")
    clock.now += RECOVER_SECONDS
    policy.tick()
    assert policy.current.rung == 0


def test_log_rate_limit_counts_drops_reports_them_and_never_drops_errors() -> None:
    import logging

    from genrec.serving.logs import RateLimitFilter

    clock = Clock()
    drops: list[int] = []
    limit = RateLimitFilter(per_window=2, window=60.0, clock=clock, on_drop=lambda: drops.append(1))

    def record(level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, "400 POST /p: bad", None, None)

    assert [limit.filter(record()) for _ in range(5)] == [True, True, False, False, False]
    assert limit.filter(record(logging.ERROR)), "a server error is never dropped"
    assert len(drops) == 3 and limit.dropped == 3
    clock.now += 60.0
    passed = record()
    assert limit.filter(passed) and "(3 similar lines dropped by the rate limit)" in passed.msg
    follow = record()
    assert limit.filter(follow) and "dropped" not in follow.msg
