"""The predictor's Prometheus instruments, created once per process in the default registry.

`GET /metrics` on the HTTP port serves the default `prometheus_client.REGISTRY` without the series of
servers this process does not run (`exported`), so registering here is all it takes to export them.
Names come from `genrec.contract`; labels are small fixed sets (never a user or item id).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from genrec import contract as names
from genrec.serving.gc_pauses import GcPauses

# Request latencies on a 2-core CPU run from about a millisecond to a few hundred; the SLO the
# controller watches is 100 ms, so the buckets are dense around it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
                   2.5, 5.0)
# Batch sizes are bounded by serving.max_batch_size (32 by default); powers of two cover it.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUEST_SECONDS = Histogram(names.REQUEST_SECONDS, "End-to-end predict latency, parsing to response.",
                            buckets=LATENCY_BUCKETS)
FEATURE_FETCH_SECONDS = Histogram(names.FEATURE_FETCH_SECONDS, "Feast online read per decode batch.",
                                  buckets=LATENCY_BUCKETS)
DECODE_SECONDS = Histogram(names.DECODE_SECONDS, "Beam search (or DARE) per decode batch.",
                           buckets=LATENCY_BUCKETS)
REQUEST_STAGE_SECONDS = Histogram(names.REQUEST_STAGE_SECONDS,
                                  "Time a predict request spends in each stage of the request path.",
                                  ["stage"], buckets=LATENCY_BUCKETS)
# A young collection takes tens of microseconds; a full one over a large heap, many milliseconds.
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
GC_PAUSE_SECONDS = Histogram(names.GC_PAUSE_SECONDS, "Garbage-collector pauses by process and generation.",
                             ["process", "generation"], buckets=GC_BUCKETS)
REQUESTS = Counter(names.REQUESTS, "Predict requests by outcome.", ["code"])
INFLIGHT = Gauge(names.INFLIGHT, "Predict requests being served now.")
BATCH_SIZE = Histogram(names.BATCH_SIZE, "Requests (instances) per decode batch.", buckets=BATCH_BUCKETS)
BEAM_RUNG = Gauge(names.BEAM_RUNG, "Ladder rung of the beam policy in force.")
BEAM_WIDTH = Gauge(names.BEAM_WIDTH, "Beam width in force per semantic-ID level.", ["level"])
GUARD_STEPDOWNS = Counter(names.GUARD_STEPDOWNS, "Rung step-downs by the local in-flight guard.")
DARE_DRAFT_TOKENS = Counter(names.DARE_DRAFT_TOKENS, "DARE draft tokens verified.")
DARE_ACCEPTED_TOKENS = Counter(names.DARE_ACCEPTED_TOKENS, "DARE draft tokens accepted.")
DECODER_PASSES = Counter(names.DECODER_PASSES, "Per-beam decoder passes (beam steps or DARE verifies).")
FEAST_MISSES = Counter(names.FEAST_MISSES, "Users served without a stored summary.", ["reason"])
FEAST_ERRORS = Counter(names.FEAST_ERRORS, "Feast online reads that failed or timed out.")
FALLBACKS = Counter(names.FALLBACKS, "Requests served from a reduced context.", ["kind"])
FEATURE_STORE_UP = Gauge(names.FEATURE_STORE_UP, "1 when the last Feast online read or probe worked, 0 when "
                         "it failed (absent without a feature repo).")
HTTP_RESPONSES = Counter(names.HTTP_RESPONSES, "HTTP responses by route and status class.",
                         ["route", "status"])
CONNECTION_REJECTIONS = Counter(names.CONNECTION_REJECTIONS,
                                "Requests refused by the HTTP connection bounds, before any route.",
                                ["reason"])
LOG_LINES_DROPPED = Counter(names.LOG_LINES_DROPPED,
                            "Per-request log lines (client errors, bad HTTP) dropped by the rate limit "
                            "(serving.client_error_logs_per_minute).")

for _code in ("ok", "client_error", "overloaded", "server_error"):
    REQUESTS.labels(code=_code)
for _reason in ("header_too_large", "header_timeout", "body_timeout", "bad_http", "too_many_connections"):
    CONNECTION_REJECTIONS.labels(reason=_reason)
for _reason in ("unknown_user", "unavailable"):
    FEAST_MISSES.labels(reason=_reason)
for _kind in ("history_only", "popular"):
    FALLBACKS.labels(kind=_kind)
# The request path's stages, in the order a request passes them.
STAGES = ("parse", "queue", "feast", "decode", "serialise")
STAGE = {stage: REQUEST_STAGE_SECONDS.labels(stage=stage) for stage in STAGES}
# The serving process's own collections, and the decode process's (reported with each batch).
GC_PAUSE = {(process, generation): GC_PAUSE_SECONDS.labels(process=process, generation=str(generation))
            for process in ("server", "decode") for generation in range(3)}


def time_gc_pauses() -> None:
    """Times every garbage collection of this process into genrec_gc_pause_duration_seconds
    {process="server"}: a collection stops every Python thread, so a long one shows in every request's
    latency at once."""
    GcPauses.install_once(lambda generation, seconds: GC_PAUSE["server", generation].observe(seconds))


def observe_decode_gc(pauses: Sequence[tuple[int, float]]) -> None:
    for generation, seconds in pauses:
        GC_PAUSE["decode", generation].observe(seconds)


# Metric families registered in this process that would only ever read zero: Feast registers its
# feature server's series (feast_*) when imported, and KServe its per-model histograms, which its
# data plane records and genrec's routes do not go through.
FOREIGN_PREFIXES = ("feast_", "request_preprocess_seconds", "request_postprocess_seconds",
                    "request_predict_seconds", "request_explain_seconds")


class ExportedRegistry:
    """The default registry minus the foreign families, as `prometheus_client` exposition wants it
    (anything with `collect()`)."""

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client import REGISTRY

        for family in REGISTRY.collect():
            if not family.name.startswith(FOREIGN_PREFIXES):
                yield family


exported = ExportedRegistry()
