"""What the controller reads from Prometheus: one instant query per signal, gathered into an
`Observation` (absent series and failed optional queries are None; a failed required query is an
`error`, which the control law holds on)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx

from genrec import contract as names
from genrec.config import ControllerConfig
from genrec.controller.law import Observation


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or did not answer a query."""


def controller_queries(c: ControllerConfig) -> dict[str, str]:
    sel, w = c.selector, c.window
    return {
        # Aggregated over replicas: the policy is one for all, so is the latency it answers for.
        "p99": f"histogram_quantile(0.99, sum by (le) (rate({names.REQUEST_SECONDS}_bucket{{{sel}}}[{w}])))",
        "rate": f"sum(rate({names.REQUESTS}{{{sel}}}[{w}]))",
        # The busiest replica: its local guard is what steps in first.
        "inflight": f"max({names.INFLIGHT}{{{sel}}})",
        "gpu": f"avg(DCGM_FI_DEV_GPU_UTIL{{{c.gpu_selector}}})",
        "fast_rate": f"sum(rate({names.REQUESTS}{{{sel}}}[{c.fast_window}]))",
        "min_rung": f"min({names.BEAM_RUNG}{{{sel}}})",
        "guard": f"sum(increase({names.GUARD_STEPDOWNS}{{{sel}}}[{c.fast_window}]))",
    }


class PrometheusClient:
    def __init__(self, base_url: str, http: httpx.AsyncClient, timeout: float) -> None:
        self.url = base_url.rstrip("/") + "/api/v1/query"
        self.http = http
        self.timeout = timeout

    async def scalar(self, promql: str) -> float | None:
        """The single value of an instant query; None for an empty result (no such series)."""
        try:
            response = await self.http.get(self.url, params={"query": promql}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PrometheusError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
            if body.get("status") != "success":
                raise PrometheusError(f"query failed: {body.get('error', body)}")
            result = body["data"]["result"]
            if body["data"]["resultType"] == "scalar":
                return float(result[1])
            if not result:
                return None
            return float(result[0]["value"][1])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise PrometheusError(f"unexpected answer: {response.text[:200]}") from exc


async def observe(prom: PrometheusClient, queries: Mapping[str, str], replicas: int) -> Observation:
    keys = list(queries)
    answers = await asyncio.gather(*(prom.scalar(queries[k]) for k in keys), return_exceptions=True)
    values = dict(zip(keys, answers))
    for key in ("p99", "rate", "inflight"):
        if isinstance(values[key], BaseException):
            return Observation(replicas=replicas, error=f"{key}: {values[key]}")
    def optional(key: str) -> float | None:
        # Optional readings: an error or an absent series just means no such signal.
        value = values.get(key)
        return None if isinstance(value, BaseException) else value

    return Observation(
        p99_seconds=values["p99"],  # type: ignore[arg-type]
        request_rate=values["rate"],  # type: ignore[arg-type]
        inflight=values["inflight"],  # type: ignore[arg-type]
        gpu_util=optional("gpu"),
        replicas=replicas,
        fast_rate=optional("fast_rate"),
        min_rung=optional("min_rung"),
        guard_stepdowns=optional("guard"),
    )
