"""Where beam search runs: in the serving process (`BeamSearcher`, the reference) or in a child
process of its own (`DecodeProcess`, the default: `serving.decode_worker: process`).

Why a process: torch releases the GIL inside each operator, but beam search issues a few hundred
small operators per batch, and their Python (argument parsing, the search's own loop) holds it. On a
2-core node the predictor then never used more than one core: at 800 requests/s the event loop and
the decode thread took turns on the GIL (server CPU 1.03 cores at every load from 400 requests/s,
p99 55 ms at 800). In a child process the decode has its own interpreter, and the serving process
keeps only HTTP, validation, batching and the answers.

What crosses between them is plain arrays (`SearchBatch` -> `SearchOutput`), pickled over a pipe: a
batch of 32 requests is a few kilobytes, about 0.1 ms each way. The child loads the model folder
itself. If it dies, the batch it held fails with `Overloaded` (503, retry) and the next batch
starts a new child; a child that does not answer within `serving.decode_stall_seconds` is killed,
its batch answered 503, and replaced the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import ServingConfig
from genrec.model.artefact import TrainedModel
from genrec.model.beam import beam_search
from genrec.model.value_tilt import in_force
from genrec.serving.batching import Overloaded
from genrec.serving.gc_pauses import GcPauses, PauseLog
from genrec.serving.speculative import RetrievalPool, cluster_of_requests, dare_beam_search

log = logging.getLogger("genrec.serving")

# How long a new decode process may take to import torch and load the model before it counts as
# failed to start.
START_TIMEOUT_SECONDS = 120.0
# On close, how long the child gets to finish its batch and exit before it is killed.
CLOSE_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class SearchBatch:
    """One decode group as plain arrays: what crosses to a decode process."""

    # [B, R'] item rows, most recent first, PAD_ITEM (-1) padded.
    recent: np.ndarray
    # [B, E] item rows never to recommend (PAD -1), or None.
    exclude: np.ndarray | None
    widths: tuple[int, ...]
    top_k: int
    # [B, K, d] float32: the model's summary tokens (zeros where a user has none), or None.
    summaries: np.ndarray | None
    # DARE's summary pool may assign clusters by these summaries (False: by history).
    cluster_by_summary: bool


@dataclass(frozen=True)
class SearchOutput:
    items: np.ndarray  # [B, top_k] item rows, -1 where fewer exist
    # [B, top_k] log-probabilities, plus the value tilt's log-factor where the model has one.
    scores: np.ndarray
    passes: int  # decoder passes (levels, or DARE's verify passes)
    draft_tokens: int
    accepted_tokens: int
    # The decode process's garbage-collector pauses since its last answer: (generation, seconds).
    gc_pauses: tuple[tuple[int, float], ...] = ()


class DecodeError(RuntimeError):
    """Beam search raised in the decode process (a genrec bug): the message is the child's."""


class BeamSearcher:
    """Runs `SearchBatch`es on a loaded model in this process: the reference `DecodeProcess` must
    agree with, and what the decode process itself runs."""

    def __init__(self, model: TrainedModel, config: ServingConfig, pool: RetrievalPool | None) -> None:
        self.model = model
        self.decoder = model.decoder
        self.config = config
        self.pool = pool
        self.device = self.decoder.item_codes.device

    @torch.inference_mode()
    def search(self, batch: SearchBatch) -> SearchOutput:
        recent = torch.as_tensor(batch.recent, dtype=torch.long, device=self.device)
        model_summary = None
        if self.decoder.summary_dim:
            if batch.summaries is None:
                raise ValueError("this model reads summary tokens: the batch must carry them")
            model_summary = torch.as_tensor(batch.summaries, dtype=torch.float32, device=self.device)
        context = self.decoder.embed_context(recent, model_summary)
        # The model's value tilt (as the evaluate step applies it): the search returns the rung's
        # final beam, the tilt picks the top K. A narrow rung leaves it less to choose from.
        tilt = in_force(self.model.value_tilt)
        found = tilt.pool(batch.top_k, batch.widths) if tilt is not None else batch.top_k
        if self.pool is None or not self.config.dare:
            exclude = None if batch.exclude is None else torch.as_tensor(batch.exclude, dtype=torch.long)
            result = beam_search(self.decoder, context, self.model.tables, batch.widths, found,
                                 exclude=exclude)
            passes, draft_tokens, accepted_tokens = self.decoder.levels, 0, 0
        else:
            clusters = cluster_of_requests(self.pool, self.decoder, recent,
                                           batch.summaries if batch.cluster_by_summary else None)
            result, stats = dare_beam_search(self.decoder, context, self.model.tables, batch.widths, found,
                                             self.pool, clusters.tolist(), self.config.dare_drafts,
                                             self.config.dare_top_k, self.config.dare_min_prob)
            passes, draft_tokens, accepted_tokens = (max(stats.passes, default=0), stats.draft_tokens,
                                                     stats.accepted_tokens)
        items, scores = result.items.cpu().numpy(), result.scores.cpu().numpy()
        if tilt is not None:
            items, scores = tilt.rerank(items, scores, batch.top_k)
        return SearchOutput(items, scores, passes, draft_tokens, accepted_tokens)

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""


def _serve_searches(connection: multiprocessing.connection.Connection, model_dir: str, device: str,
                    threads: int, config: ServingConfig, pool: RetrievalPool | None) -> None:
    """The decode process: loads the model, then answers one `SearchBatch` at a time until the pipe
    closes or a None arrives."""
    from genrec.model.artefact import load_model

    torch.set_num_threads(threads)
    try:
        searcher = BeamSearcher(load_model(Path(model_dir), device), config, pool)
    except Exception as exc:  # noqa: BLE001 - the parent reports why the child could not start
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    # torch, the model and the trie live as long as the process: out of the collector's generations,
    # a full collection no longer walks them while a batch waits (it stalled requests by ~150 ms).
    gc.collect()
    gc.freeze()
    pauses = PauseLog()
    GcPauses.install_once(pauses.record)
    connection.send(("ready", None))
    while True:
        try:
            batch = connection.recv()
        except (EOFError, OSError):
            return  # the serving process is gone
        if batch is None:
            return
        try:
            output = searcher.search(batch)
            connection.send(("ok", dataclasses.replace(output, gc_pauses=pauses.drain())))
        except Exception as exc:  # noqa: BLE001 - one bad batch fails its requests, not the process
            connection.send(("error", f"{type(exc).__name__}: {str(exc)[:500]}"))


class DecodeProcess:
    """`BeamSearcher.search` in a child process (spawned: a fork of a process that already runs torch
    and uvicorn's threads is unsafe). One search at a time; a lost child is replaced on the next."""

    def __init__(self, model_dir: str | Path, device: str, config: ServingConfig, pool: RetrievalPool | None,
                 threads: int | None = None) -> None:
        self.model_dir = str(model_dir)
        self.device = device
        self.config = config
        self.pool = pool
        self.threads = threads or torch.get_num_threads()
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process: Any = None
        self._connection: multiprocessing.connection.Connection | None = None
        self.restarts = 0
        self._closed = False
        self._start()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve_searches, name="genrec-decode-process", daemon=True,
            args=(child, self.model_dir, self.device, self.threads, self.config, self.pool))
        process.start()
        child.close()
        started = time.monotonic()
        if not parent.poll(START_TIMEOUT_SECONDS):
            process.kill()
            raise RuntimeError(f"the decode process did not load the model within "
                               f"{START_TIMEOUT_SECONDS:.0f} s")
        try:
            status, detail = parent.recv()
        except EOFError as exc:
            raise RuntimeError(f"the decode process exited with {process.exitcode} while loading the model") \
                from exc
        if status != "ready":
            process.join(5)
            raise RuntimeError(f"the decode process could not load the model: {detail}")
        self._process, self._connection = process, parent
        log.info("decode process %d ready in %.1f s", process.pid, time.monotonic() - started)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def search(self, batch: SearchBatch) -> SearchOutput:
        with self._lock:
            if self._closed:
                raise Overloaded("the decode process is stopped (the server is shutting down): retry")
            if self._connection is None or not self._process.is_alive():
                try:
                    self._replace()
                except RuntimeError as exc:
                    raise Overloaded(f"the decode process could not be restarted ({exc}): retry") from exc
            assert self._connection is not None
            try:
                self._connection.send(batch)
                if not self._connection.poll(self.config.decode_stall_seconds):
                    # A hung child (a stuck accelerator, a deadlock) is replaced here rather than by
                    # a restart of the whole pod through the liveness probe.
                    log.error("the decode process did not answer within serving.decode_stall_seconds=%g; "
                              "replacing it", self.config.decode_stall_seconds)
                    self._kill()
                    raise Overloaded(f"the decode process did not answer within serving.decode_stall_seconds="
                                     f"{self.config.decode_stall_seconds:g} and is being replaced: retry")
                status, detail = self._connection.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                code = self._process.exitcode if self._process is not None else None
                log.error("the decode process stopped (exit code %s) during a batch; a new one starts with "
                          "the next batch", code)
                self._connection = None
                raise Overloaded("the decode process stopped during this batch and is being restarted: "
                                 "retry") from exc
        if status != "ok":
            raise DecodeError(f"beam search failed in the decode process: {detail}")
        return detail  # type: ignore[no-any-return]

    def _replace(self) -> None:
        self._kill()
        self.restarts += 1
        self._start()

    def _kill(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def close(self) -> None:
        """Asks the child to stop (it finishes the batch in hand first), then kills it if it lingers."""
        # A search stuck in the child holds the lock: after a short wait the child is killed anyway.
        graceful = self._lock.acquire(timeout=CLOSE_WAIT_SECONDS)
        self._closed = True
        try:
            if graceful and self._connection is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    self._connection.send(None)
                if self._process is not None:
                    self._process.join(CLOSE_WAIT_SECONDS)
            self._kill()
        finally:
            if graceful:
                self._lock.release()
