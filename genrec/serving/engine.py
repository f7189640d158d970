"""The predictor's work, free of KServe: summaries from Feast (with a timeout), context fallbacks,
trie-constrained beam search (or DARE) per batch, and the answer per instance.

Context per request:

| stored summary | recent items | context used | metric |
| --- | --- | --- | --- |
| yes | any | summary + recent items | - |
| no (unknown user or Feast down) | given | recent items only | fallbacks{kind="history_only"} |
| no | not given | popular items (no decode) | fallbacks{kind="popular"} |

A model trained without summary tokens reads no summaries (unless a summary-clustered DARE pool
wants them); its requests are history-only by design and count no fallback. "Popular items" are
the model's own top-K for an empty context: its learned prior over next items, computed once at
load time at the default rung.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.config import ServingConfig
from genrec.model.artefact import TrainedModel
from genrec.serving import instruments as m
from genrec.serving.admin import PolicyState
from genrec.serving.decode_worker import BeamSearcher, DecodeProcess, SearchBatch, SearchOutput
from genrec.serving.requests import Instance
from genrec.serving.speculative import RetrievalPool

log = logging.getLogger("genrec.serving")

# The user id of warm-up and probe reads: one nobody has, so the read exercises the store only.
WARMUP_KEY = "__genrec_warmup__"
# A probe runs off the request path (in the housekeeping thread) and may take this long; it shares
# the Feast thread with request reads, which time out on their own bound meanwhile.
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    sids: list[list[int]]
    # summary+history | summary | history | history_only | popular
    context: str
    widths: tuple[int, ...]

    def to_json(self, user_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "context": self.context, "beam_policy": list(self.widths),
                "items": [{"item_id": i, "score": s, "sid": sid}
                          for i, s, sid in zip(self.item_ids, self.scores, self.sids)]}


class SummaryFetcher:
    """Reads users' newest summaries from the Feast online store, giving up after `timeout_ms`.

    Reads run in one dedicated thread (Feast's sqlite store keeps per-thread connections); a read
    that times out is left to finish there while requests go on without summaries.

    The store's health is the outcome of the last read (or probe): the gauge genrec_feature_store_up
    and `status()`, which readiness reports. `probe_if_idle` reads a key nobody has when no read
    happened for `probe_seconds`, so the health stays current when no request reads summaries."""

    def __init__(self, repo_path: str | Path, timeout_ms: float, probe_seconds: float) -> None:
        from genrec.features.repo import FeatureRepo

        self.repo = FeatureRepo.open(repo_path)
        self.timeout = timeout_ms / 1000.0
        self.probe_seconds = probe_seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="genrec-feast")
        self.up: bool | None = None
        self.error = ""
        self._checked = time.monotonic()

    def _read(self, users: list[str]) -> dict[str, np.ndarray | None]:
        from genrec.features.read import online_summaries

        return online_summaries(self.repo, users)

    def _mark(self, error: str = "") -> None:
        self.up, self.error, self._checked = not error, error, time.monotonic()
        m.FEATURE_STORE_UP.set(0 if error else 1)

    def warm_up(self, timeout_s: float) -> tuple[int, int] | None:
        """Opens the store (registry, connections) before the first request; the shape of a stored
        summary if the read worked and found one."""
        try:
            found = self._executor.submit(self._read, [WARMUP_KEY]).result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - a store that is down at start is served without
            self._fail("warm-up", 1, exc)
            log.warning("Feast online store not reachable at start (%s): serving history-only", self.error)
            return None
        self._mark()
        value = next(iter(found.values()))
        return None if value is None else (int(value.shape[0]), int(value.shape[1]))

    def fetch(self, users: list[str]) -> dict[str, np.ndarray | None] | None:
        """Summary (or None) per user; None for the whole call when the store failed or was slow."""
        started = time.perf_counter()
        try:
            found = self._executor.submit(self._read, users).result(timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - any store failure degrades to history-only
            self._fail("read", len(users), exc)
            return None
        finally:
            m.FEATURE_FETCH_SECONDS.observe(time.perf_counter() - started)
        self._mark()
        return found

    def _fail(self, what: str, users: int, exc: BaseException) -> None:
        m.FEAST_ERRORS.inc()
        reason = "timed out" if isinstance(exc, concurrent.futures.TimeoutError) else \
            f"{type(exc).__name__}: {str(exc)[:200]}"
        self._mark(f"online {what} failed: {reason}")
        log.warning("Feast online %s failed for %d users (%s)", what, users, reason)

    def probe_if_idle(self) -> None:
        if time.monotonic() - self._checked < self.probe_seconds:
            return
        try:
            self._executor.submit(self._read, [WARMUP_KEY]).result(timeout=PROBE_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - a failed probe is the health it reports
            self._fail("probe", 1, exc)
            return
        self._mark()

    def status(self) -> dict[str, Any]:
        state = "unknown" if self.up is None else "up" if self.up else "down"
        out: dict[str, Any] = {"status": state,
                               "checked_seconds_ago": round(time.monotonic() - self._checked, 1)}
        if self.error:
            out["error"] = self.error
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ServingEngine:
    def __init__(self, model: TrainedModel, config: ServingConfig, state: PolicyState,
                 fetcher: SummaryFetcher | None = None, pool: RetrievalPool | None = None,
                 summary_shape: tuple[int, int] | None = None,
                 searcher: BeamSearcher | DecodeProcess | None = None) -> None:
        self.model = model
        # Where beam search runs (genrec.serving.decode_worker): this process unless given.
        self.searcher = searcher if searcher is not None else BeamSearcher(model, config, pool)
        self.config = config
        self.state = state
        self.fetcher = fetcher
        self.pool = pool
        self.decoder = model.decoder
        self.codes = self.decoder.item_codes.cpu().numpy()
        self.summary_dim = int(self.decoder.summary_dim)
        # Missing summaries are zeros, as in training (SnapshotSummaries gives zeros where a user has
        # no snapshot yet); K tokens of them, K as stored.
        self.summary_tokens = summary_shape[0] if summary_shape else 1
        self.wants_summaries = fetcher is not None and (
            self.summary_dim > 0 or (pool is not None and pool.mode == "summary"))
        self.popular = self._popular()

    def known(self, item: str) -> bool:
        return item in self.model._row_of

    def unknown_items(self, instances: Sequence[Instance]) -> list[str]:
        return sorted({i for inst in instances for i in inst.recent_items if not self.known(i)})

    def _popular(self) -> Recommendation:
        widths = self.state.ladder.policy(self.state.ladder.default_rung).for_levels(self.decoder.levels)
        summaries = self._zeros(1) if self.summary_dim else None
        result = self._search([[]], widths, self.config.max_top_k, summaries)
        return self._answers(result, [self.config.max_top_k], "popular", widths)[0]

    def _zeros(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.summary_tokens, self.summary_dim), dtype=np.float32)

    # -- one batch ---------------------------------------------------------------------------------

    def decode(self, instances: list[Instance]) -> list[Recommendation]:
        """Recommendations for a batch of validated instances, in order."""
        m.BATCH_SIZE.observe(len(instances))
        current = self.state.current.policy
        fetch_started = time.perf_counter()
        summaries = self._summaries(instances)
        if self.wants_summaries:
            _observe_each(m.STAGE["feast"], time.perf_counter() - fetch_started, len(instances))
        out: list[Recommendation | None] = [None] * len(instances)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, instance in enumerate(instances):
            has_summary = summaries is not None and summaries[index] is not None
            if not instance.history_given and not has_summary:
                m.FALLBACKS.labels(kind="popular").inc()
                out[index] = _cut(self.popular, instance.k)
                continue
            policy = instance.policy or current
            groups.setdefault(policy.for_levels(self.decoder.levels), []).append(index)
        for widths, members in groups.items():
            batch = [instances[i] for i in members]
            stacked = None
            contexts = []
            for i in members:
                have = summaries is not None and summaries[i] is not None
                if self.summary_dim and not have:
                    m.FALLBACKS.labels(kind="history_only").inc()
                contexts.append(("summary+history" if instances[i].history_given else "summary") if have and
                                self.summary_dim else ("history_only" if self.summary_dim else "history"))
            if self.summary_dim or (self.pool is not None and self.pool.mode == "summary"):
                stacked = self._stack([summaries[i] if summaries is not None else None for i in members])
            top_k = max(inst.k for inst in batch)
            started = time.perf_counter()
            result = self._search([list(inst.recent_items) for inst in batch], widths, top_k, stacked,
                                  have_summaries=summaries is not None)
            elapsed = time.perf_counter() - started
            m.DECODE_SECONDS.observe(elapsed)
            _observe_each(m.STAGE["decode"], elapsed, len(members))
            answers = self._answers(result, [inst.k for inst in batch], "", widths)
            for i, answer, context in zip(members, answers, contexts):
                answer.context = context
                out[i] = answer
        missing = [i for i, o in enumerate(out) if o is None]
        if missing:  # every instance is either popular or in a decoded group; anything else is a bug
            raise RuntimeError(f"instances {missing} got no recommendation")
        return out  # type: ignore[return-value]

    def _summaries(self, instances: list[Instance]) -> list[np.ndarray | None] | None:
        if not self.wants_summaries or self.fetcher is None:
            return None
        users = sorted({inst.user_id for inst in instances})
        found = self.fetcher.fetch(users)
        if found is None:
            m.FEAST_MISSES.labels(reason="unavailable").inc(len(users))
            return [None] * len(instances)
        out = []
        for inst in instances:
            value = found.get(inst.user_id)
            if value is not None and (value.ndim != 2 or value.shape[1] != self._stored_dim()):
                log.warning("a stored summary has shape %s; the model reads d=%d: ignored", value.shape,
                            self._stored_dim())
                value = None
            out.append(value)
        m.FEAST_MISSES.labels(reason="unknown_user").inc(sum(1 for u in users if found.get(u) is None))
        return out

    def _stored_dim(self) -> int:
        if self.summary_dim:
            return self.summary_dim
        return int(self.pool.centroids.shape[1]) if self.pool is not None and self.pool.clusters else -1

    def _stack(self, values: list[np.ndarray | None]) -> np.ndarray:
        dim = self._stored_dim()
        tokens = max([v.shape[0] for v in values if v is not None], default=self.summary_tokens)
        out = np.zeros((len(values), tokens, max(dim, 0)), dtype=np.float32)
        for row, value in enumerate(values):
            if value is not None:
                out[row, :value.shape[0]] = value
        return out

    def _search(self, histories: list[list[str]], widths: tuple[int, ...], top_k: int,
                summaries: np.ndarray | None, have_summaries: bool = False) -> SearchOutput:
        model_summary = None
        if self.summary_dim:
            model_summary = summaries if summaries is not None else self._zeros(len(histories))
        recent = self.model.history_rows(histories).cpu().numpy()
        # Every item the request names, not only the R the context keeps.
        exclude = (self.model.history_rows(histories, self.config.max_recent_items).cpu().numpy()
                   if self.config.exclude_history else None)
        dare = self.pool is not None and self.config.dare
        # The model's summary tokens (zeros for users without one); a DARE summary pool over a model
        # without them still clusters requests by the stored summaries.
        sent = model_summary if self.summary_dim else (summaries if dare else None)
        batch = SearchBatch(recent, None if dare else exclude, tuple(widths), top_k, sent,
                            cluster_by_summary=dare and have_summaries)
        output = self.searcher.search(batch)
        m.observe_decode_gc(output.gc_pauses)
        m.DECODER_PASSES.inc(output.passes)
        if dare:
            m.DARE_DRAFT_TOKENS.inc(output.draft_tokens)
            m.DARE_ACCEPTED_TOKENS.inc(output.accepted_tokens)
        return output

    def _answers(self, result: SearchOutput, ks: list[int], context: str, widths: tuple[int, ...]
                 ) -> list[Recommendation]:
        out = []
        for rows, scores, k in zip(result.items.tolist(), result.scores.tolist(), ks):
            pairs = [(r, s) for r, s in zip(rows[:k], scores[:k]) if r >= 0]
            out.append(Recommendation([str(self.model.item_ids[r]) for r, _ in pairs], [s for _, s in pairs],
                                      [self.codes[r].tolist() for r, _ in pairs], context, tuple(widths)))
        return out


def _observe_each(histogram: Any, seconds: float, requests: int) -> None:
    """A batch's time, once per request in it: the stage profile is per request."""
    for _ in range(requests):
        histogram.observe(seconds)


def _cut(answer: Recommendation, k: int) -> Recommendation:
    return Recommendation(answer.item_ids[:k], answer.scores[:k], answer.sids[:k], answer.context,
                          answer.widths)
