"""The wire contract between the predictor and the beam-width controller: two processes, two
Deployments, one module both import.

- The admin endpoint: `GET/PUT ADMIN_PATH`, the body `{"rung": <int>}` (`rung_body`, `rung_of`), the
  answer `{"rung", "widths", "source"}` with `source` one of `POLICY_SOURCES`.
- The Prometheus metric names the predictor exports and the controller, the alerts and the
  dashboard read.

Metric names follow Prometheus conventions (snake_case, a `genrec_` namespace, base units, `_total`
for counters, `_seconds` for durations). No label ever carries a user id: labels are bounded sets.
"""

from __future__ import annotations

from typing import Any

ADMIN_PATH = "/admin/beam-policy"
# Who set the rung in force: the default, the admin endpoint (the controller), or the local guard.
POLICY_SOURCES = ("default", "admin", "guard")


def rung_body(rung: int) -> dict[str, int]:
    """The PUT body that asks a replica for `rung`."""
    return {"rung": rung}


def rung_of(body: Any) -> int | None:
    """The rung a PUT body (or a GET answer) names, or None when it is not `{"rung": <int>, ...}`."""
    rung = body.get("rung") if isinstance(body, dict) else None
    return rung if isinstance(rung, int) and not isinstance(rung, bool) else None


# Predictor
REQUEST_SECONDS = "genrec_request_duration_seconds"  # histogram, end to end
FEATURE_FETCH_SECONDS = "genrec_feature_fetch_duration_seconds"  # histogram, Feast online read
DECODE_SECONDS = "genrec_decode_duration_seconds"  # histogram, beam search (+ DARE)
# histogram, label stage: parse | queue | feast | decode | serialise; per request, so a decode batch's
# time counts once for each of its requests (the request profile: where a request's time goes)
REQUEST_STAGE_SECONDS = "genrec_request_stage_duration_seconds"
# histogram, labels process (server | decode) and generation (0 | 1 | 2): the garbage collector's
# pauses (each stops every thread of its process)
GC_PAUSE_SECONDS = "genrec_gc_pause_duration_seconds"
# counter, label code: ok | client_error | overloaded (503, shed after serving.max_queue_ms) | server_error
REQUESTS = "genrec_requests_total"
INFLIGHT = "genrec_inflight_requests"  # gauge
BATCH_SIZE = "genrec_batch_size"  # histogram, requests per decode batch
BEAM_RUNG = "genrec_beam_rung"  # gauge, current rung index
BEAM_WIDTH = "genrec_beam_width"  # gauge, label level
GUARD_STEPDOWNS = "genrec_inflight_guard_stepdowns_total"  # counter
DARE_DRAFT_TOKENS = "genrec_dare_draft_tokens_total"  # counter
DARE_ACCEPTED_TOKENS = "genrec_dare_accepted_tokens_total"  # counter
DECODER_PASSES = "genrec_decoder_passes_total"  # counter
FEAST_MISSES = "genrec_feast_misses_total"  # counter, label reason: unknown_user | unavailable
FEAST_ERRORS = "genrec_feast_errors_total"  # counter
FALLBACKS = "genrec_context_fallbacks_total"  # counter, label kind: history_only | popular
FEATURE_STORE_UP = "genrec_feature_store_up"  # gauge: 1 the last read or probe worked, 0 it failed
# counter, labels route (inference | health | metadata | admin | metrics | other) and status (2xx | 4xx | 5xx)
HTTP_RESPONSES = "genrec_http_responses_total"
# counter, label reason: header_too_large | header_timeout | body_timeout | bad_http | too_many_connections;
# refused before any route
CONNECTION_REJECTIONS = "genrec_connection_rejections_total"
LOG_LINES_DROPPED = "genrec_log_lines_dropped_total"  # counter: per-request log lines past the rate limit

# Controller
# counter, label action: up | down | hold | fallback
CONTROLLER_DECISIONS = "genrec_controller_decisions_total"
CONTROLLER_RUNG = "genrec_controller_rung"  # gauge
CONTROLLER_PROM_ERRORS = "genrec_controller_prometheus_errors_total"  # counter
CONTROLLER_PUSH_ERRORS = "genrec_controller_push_errors_total"  # counter (per-replica detail goes to logs)
CONTROLLER_P99_SECONDS = "genrec_controller_observed_p99_seconds"  # gauge
