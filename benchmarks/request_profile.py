"""Where a served request's time goes, from a real server's `/metrics` scraped before and after a load
run: the stage histograms (`genrec_request_stage_duration_seconds{stage}`: parse, queue, feast,
decode, serialise), the end-to-end histogram, and the garbage collector's pauses. Also the CPU time
of the server process and of this process (the load generator) over the run.

    before = Snapshot.take(server.url, server.process.pid)
    result = run_load(...)
    profile = Snapshot.take(server.url, server.process.pid).since(before)

Means are exact (histogram sums over counts); p99s are interpolated in the buckets, as Prometheus's
histogram_quantile does, so they are as coarse as the buckets around them.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from genrec import contract as names

STAGES = ("parse", "queue", "feast", "decode", "serialise")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its live children (the decode process), all
    their threads."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Histogram:
    """Cumulative buckets (upper bound -> count), sum and count of one labelled histogram."""

    buckets: dict[float, float]
    total: float
    count: float

    def minus(self, other: Histogram | None) -> Histogram:
        if other is None:
            return self
        return Histogram({le: n - other.buckets.get(le, 0.0) for le, n in self.buckets.items()},
                         self.total - other.total, self.count - other.count)

    def quantile(self, q: float) -> float:
        if self.count <= 0:
            return float("nan")
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in sorted(self.buckets.items()):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                inside = cumulative - lower_count
                share = (rank - lower_count) / inside if inside else 1.0
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, cumulative
        return lower_bound

    def summary_ms(self) -> dict[str, float]:
        mean = self.total / self.count if self.count > 0 else float("nan")
        return {"count": self.count, "mean_ms": 1000 * mean, "p99_ms": 1000 * self.quantile(0.99)}


def histograms(text: str, name: str, *labels: str) -> dict[str, Histogram]:
    """The histogram family `name` from exposition text, by the values of `labels` joined with "_"
    ("" without labels)."""
    out: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            key = "_".join(sample.labels.get(label, "") for label in labels)
            entry = out.setdefault(key, Histogram({}, 0.0, 0.0))
            if sample.name.endswith("_bucket"):
                entry.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                entry.total = sample.value
            elif sample.name.endswith("_count"):
                entry.count = sample.value
    return out


@dataclass
class Snapshot:
    """A server's request histograms and both processes' CPU time at one moment."""

    at: float
    stages: dict[str, Histogram]
    request: Histogram | None
    gc: dict[str, Histogram]
    batch: Histogram | None
    server_cpu: float
    client_cpu: float

    @classmethod
    def take(cls, url: str, pid: int) -> Snapshot:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return cls(time.perf_counter(),
                   histograms(text, names.REQUEST_STAGE_SECONDS, "stage"),
                   histograms(text, names.REQUEST_SECONDS).get(""),
                   histograms(text, names.GC_PAUSE_SECONDS, "process", "generation"),
                   histograms(text, names.BATCH_SIZE).get(""),
                   cpu_seconds(pid), own_cpu_seconds())

    def since(self, before: Snapshot) -> dict[str, Any]:
        """The profile of what happened between `before` and this snapshot."""
        wall = self.at - before.at
        stages = {stage: self.stages[stage].minus(before.stages.get(stage)).summary_ms()
                  for stage in STAGES if stage in self.stages}
        out: dict[str, Any] = {
            "stages": stages,
            "server_cpu_cores": (self.server_cpu - before.server_cpu) / wall,
            "load_generator_cpu_cores": (self.client_cpu - before.client_cpu) / wall,
            "cpus": os.cpu_count(),
        }
        if self.request is not None:
            out["server_request"] = self.request.minus(before.request).summary_ms()
        if self.batch is not None:
            batch = self.batch.minus(before.batch)
            out["mean_batch_size"] = batch.total / batch.count if batch.count > 0 else float("nan")
        pauses = {g: h.minus(before.gc.get(g)) for g, h in self.gc.items()}
        out["gc"] = {f"{g}": {"collections": h.count, "total_ms": 1000 * h.total,
                                         "max_bucket_ms": 1000 * _max_bucket(h)}
                     for g, h in sorted(pauses.items())}
        return out


def _max_bucket(histogram: Histogram) -> float:
    """The upper bound of the highest bucket any observation fell in (0 without observations; the
    largest finite bound when one fell above every bound)."""
    previous = 0.0
    top = 0.0
    finite = [bound for bound in histogram.buckets if not math.isinf(bound)]
    for bound, cumulative in sorted(histogram.buckets.items()):
        if cumulative > previous:
            top = bound if not math.isinf(bound) else max(finite, default=0.0)
        previous = cumulative
    return top
