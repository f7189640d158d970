"""The controller's loop: every `controller.interval_seconds` it

1. finds the predictor replicas (`genrec.controller.replicas`);
2. asks Prometheus for p99 latency, request rate, the busiest replica's in-flight requests and,
   where a DCGM exporter runs, GPU utilisation (`genrec.controller.prometheus`);
3. runs the control law (`genrec.controller.law.decide`);
4. saves what a restart needs (`genrec.controller.state`) and pushes the rung to every replica.

Beam width is the fast knob for latency (replica autoscaling is the slow one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from genrec.config import ConfigError, ControllerConfig, ServingConfig
from genrec.contract import ADMIN_PATH, rung_of
from genrec.controller.law import Decision, LawParams, LawState, Observation, decide
from genrec.controller.metrics import ControllerMetrics
from genrec.controller.prometheus import PrometheusClient, controller_queries, observe
from genrec.controller.replicas import KubernetesReplicas, ReplicaPusher, StaticReplicas
from genrec.controller.state import load_state, persisted, save_state
from genrec.serving.policy import BeamLadder

log = logging.getLogger("genrec.controller")


@dataclass
class Tick:
    decision: Decision
    observation: Observation
    replicas: list[str]


class BeamController:
    def __init__(self, controller: ControllerConfig, serving: ServingConfig, token: str, *,
                 replicas: StaticReplicas | KubernetesReplicas | None = None,
                 http: httpx.AsyncClient | None = None, metrics: ControllerMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.config, self.serving = controller, serving
        self.params = LawParams.from_config(controller, serving)
        self.ladder = BeamLadder.from_config(serving.beam_ladder, serving.default_rung,
                                             serving.max_beam_width)
        self.http = http or httpx.AsyncClient()
        self.metrics = metrics or ControllerMetrics()
        self.clock, self.wall = clock, wall
        if replicas is None and not controller.replicas and not controller.kubernetes_service:
            raise ConfigError("controller: set controller.replicas (base URLs) or "
                              "controller.kubernetes_service")
        c = controller
        self.replicas = replicas or (
            StaticReplicas(c.replicas) if c.replicas else
            KubernetesReplicas(c.kubernetes_service, c.kubernetes_namespace, c.admin_port))
        self.prometheus = PrometheusClient(c.prometheus_url, self.http, c.query_timeout_seconds)
        self.queries = controller_queries(controller)
        self.pusher = ReplicaPusher(self.http, token, controller, self.metrics.push_errors.inc, clock)
        self.urls: list[str] = []
        now = clock()
        restored = load_state(controller.state_file, self.params.top_rung, now, wall())
        if restored is not None:
            log.info("resuming rung %d from %s", restored.rung, controller.state_file)
            self.state = restored
        else:
            # No state (first start, or the pod moved and its emptyDir with it): until the replicas
            # say what they run (first interval), assume serving.default_rung, where they start.
            self.state = LawState(rung=serving.default_rung, last_change=None, last_good=now)
        self._adopt = restored is None
        self.metrics.rung.set(self.state.rung)
        self.metrics.p99.set(math.nan)

    async def _adopt_replicas_rung(self) -> None:
        """Without a state file, take the rung the replicas already run (the narrowest, if they
        differ) instead of pushing the default over it: a controller that lost its state must not
        flap a policy a previous controller set."""
        async def current(url: str) -> int | None:
            try:
                response = await self.http.get(url + ADMIN_PATH, timeout=self.config.push_timeout_seconds)
                rung = rung_of(response.json()) if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None
            return rung if rung is not None and 0 <= rung <= self.params.top_rung else None

        rungs = [r for r in await asyncio.gather(*(current(u) for u in self.urls)) if r is not None]
        if not rungs:
            return  # nobody answered: try again next interval
        self._adopt = False
        if min(rungs) != self.state.rung:
            log.info("no state file: adopting rung %d that the replicas run (%s)", min(rungs), sorted(rungs))
            self.state = dataclasses.replace(self.state, rung=min(rungs))

    async def tick(self) -> Tick:
        try:
            urls = await self.replicas.discover()
            if not urls and self.urls:
                log.warning("replica discovery found no ready replica")
            self.urls = urls
        except Exception as exc:  # noqa: BLE001 - any discovery failure: keep pushing to the last list
            log.warning("replica discovery failed (%s): keeping %d known replicas", exc, len(self.urls))
        if self._adopt and self.urls:
            await self._adopt_replicas_rung()
        obs = await observe(self.prometheus, self.queries, max(1, len(self.urls)))
        if obs.error:
            self.metrics.prometheus_errors.inc()
        before = persisted(self.state)
        self.state, decision = decide(self.state, obs, self.clock(), self.params)
        self.metrics.decisions.labels(action=decision.action).inc()
        self.metrics.rung.set(self.state.rung)
        self.metrics.p99.set(math.nan if obs.p99_seconds is None else obs.p99_seconds)
        if persisted(self.state) != before:
            self._save()
        log_fn = log.info if decision.action != "hold" else log.debug
        log_fn("%s -> rung %d (%s): %s", decision.action, decision.rung,
               self.ladder.policy(decision.rung).label(), decision.reason)
        self.pusher.reconcile(self.urls, self.state.rung)
        return Tick(decision, obs, list(self.urls))

    def _save(self) -> None:
        try:
            save_state(self.config.state_file, self.state, self.clock(), self.wall())
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.config.state_file, exc)

    async def run(self, stop: asyncio.Event, on_tick: Callable[[Tick], None] | None = None) -> None:
        interval = self.config.interval_seconds
        try:
            while not stop.is_set():
                started = self.clock()
                try:
                    tick = await self.tick()
                    if on_tick:
                        on_tick(tick)
                except Exception:  # noqa: BLE001 - the loop must survive one bad interval
                    log.exception("controller interval failed")
                remaining = interval - (self.clock() - started)
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=remaining)
        finally:
            self.pusher.cancel()

    async def aclose(self) -> None:
        self.pusher.cancel()
        await self.http.aclose()


def admin_token(serving: ServingConfig) -> str:
    token = os.environ.get(serving.admin_token_env, "")
    if not token:
        raise ConfigError(f"the admin token is not set: export {serving.admin_token_env} (in a cluster, "
                          "the Secret genrec-admin-token)")
    return token
