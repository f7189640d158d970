"""Helpers for the controller tests: law parameters from a config, a run of observations through the
law, and a usable observation."""

from __future__ import annotations

from genrec.config import ControllerConfig, ServingConfig
from genrec.controller.law import LawParams, LawState, Observation, decide


def params(**overrides: object) -> LawParams:
    c = ControllerConfig(slo_p99_seconds=0.1, step_down_ratio=0.9, step_up_ratio=0.6, up_after=3,
                         cooldown_seconds=10.0, hold_seconds=30.0, safe_rung=0)
    for key, value in overrides.items():
        setattr(c, key, value)
    return LawParams.from_config(c, ServingConfig())


def run(state: LawState, observations: list[Observation], p: LawParams, start: float = 0.0,
        step: float = 5.0) -> tuple[LawState, list[str]]:
    actions = []
    for i, obs in enumerate(observations):
        state, decision = decide(state, obs, start + i * step, p)
        actions.append(decision.action)
    return state, actions


def ok(p99: float, rate: float = 100.0) -> Observation:
    return Observation(p99_seconds=p99, request_rate=rate, inflight=1.0)
