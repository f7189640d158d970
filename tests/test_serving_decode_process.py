"""The decode process (serving.decode_worker: process) against its reference, beam search in the
serving process (`BeamSearcher`): the same items and scores for the same batches, hence the same
recall; and a child that dies or raises costs its batch a clear error, never the server."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from genrec.config import GenrecConfig
from genrec.model.artefact import TrainedModel, load_model
from genrec.serving.batching import Overloaded
from genrec.serving.decode_worker import BeamSearcher, DecodeError, DecodeProcess, SearchBatch
from testbed.serving import cached_tiny_model, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def batches(model: TrainedModel, count: int, seed: int, summary_dim: int = 0) -> list[SearchBatch]:
    """Random histories of the model's items (padded -1), widths and top-K, as the engine builds them."""
    rng = np.random.default_rng(seed)
    items = len(model.item_ids)
    out = []
    for _ in range(count):
        size = int(rng.integers(1, 9))
        recent = np.full((size, 6), -1, dtype=np.int64)
        for row in range(size):
            length = int(rng.integers(1, 7))
            recent[row, :length] = rng.choice(items, size=length, replace=False)
        exclude = recent.copy() if rng.random() < 0.3 else None
        summaries = rng.normal(size=(size, 2, summary_dim)).astype(np.float32) if summary_dim else None
        out.append(SearchBatch(recent, exclude, (int(rng.choice([2, 4, 16])),) * model.decoder.levels,
                               int(rng.integers(1, 11)), summaries, cluster_by_summary=False))
    return out


def recall_at(items: np.ndarray, targets: np.ndarray, k: int) -> float:
    return float(np.mean([target in row[:k] for row, target in zip(items, targets)]))


@pytest.mark.parametrize("summary_dim", [0, 8])
def test_the_decode_process_answers_exactly_what_the_in_process_reference_does(summary_dim: int) -> None:
    model_dir = cached_tiny_model(summary_dim)
    model = load_model(model_dir)
    serving = GenrecConfig().serving
    reference = BeamSearcher(model, serving, None)
    worker = DecodeProcess(model_dir, "cpu", serving, None, threads=1)
    try:
        found, expected, targets = [], [], []
        rng = np.random.default_rng(1)
        for batch in batches(model, 30, seed=summary_dim, summary_dim=summary_dim):
            fast, slow = worker.search(batch), reference.search(batch)
            assert fast.items.tolist() == slow.items.tolist()
            np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)
            assert fast.passes == slow.passes == model.decoder.levels
            found.extend(fast.items)
            expected.extend(slow.items)
            targets.extend(rng.integers(0, len(model.item_ids), len(batch.recent)))
        # The recall any evaluation computes from the answers is then the reference's too.
        assert recall_at(np.array([r[:1] for r in found]), np.array(targets), 1) == \
            recall_at(np.array([r[:1] for r in expected]), np.array(targets), 1)
    finally:
        worker.close()
    assert worker.pid is None or not _alive(worker.pid)


@contextlib.contextmanager
def tiny_decode_process(**serving_fields: Any) -> Iterator[tuple[TrainedModel, DecodeProcess]]:
    """The tiny model and a decode process serving it (with these serving fields), closed after."""
    model_dir = cached_tiny_model()
    serving = GenrecConfig().serving
    for name, value in serving_fields.items():
        setattr(serving, name, value)
    worker = DecodeProcess(model_dir, "cpu", serving, None, threads=1)
    try:
        yield load_model(model_dir), worker
    finally:
        worker.close()


def assert_replaced(worker: DecodeProcess, old_pid: int | None, batch: SearchBatch, expected: np.ndarray) -> None:
    """A new child answers as the old one did, and it is the only replacement."""
    assert worker.search(batch).items.tolist() == expected.tolist()
    assert worker.restarts == 1 and worker.pid != old_pid


class ExitsWhenUnpickled:
    """Pickles into a call of os._exit: the decode process dies while it reads the batch."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (3,)


class HangsWhenUnpickled:
    """Pickles into a long sleep: the decode process stops answering."""

    def __reduce__(self) -> tuple[object, tuple[float]]:
        return time.sleep, (60.0,)


def test_a_decode_process_that_dies_during_a_batch_fails_it_with_503_and_is_replaced() -> None:
    with tiny_decode_process() as (model, worker):
        batch = batches(model, 1, seed=3)[0]
        first, pid = worker.search(batch), worker.pid
        fatal = SearchBatch(ExitsWhenUnpickled(), None, batch.widths, 5, None, False)  # type: ignore[arg-type]
        with pytest.raises(Overloaded, match="decode process stopped during this batch"):
            worker.search(fatal)
        assert_replaced(worker, pid, batch, first.items)


def test_a_decode_process_that_stops_answering_is_killed_and_replaced() -> None:
    with tiny_decode_process(decode_stall_seconds=1.0) as (model, worker):
        batch = batches(model, 1, seed=5)[0]
        first, pid = worker.search(batch), worker.pid
        started = time.monotonic()
        hung = SearchBatch(HangsWhenUnpickled(), None, batch.widths, 5, None, False)  # type: ignore[arg-type]
        with pytest.raises(Overloaded, match="decode_stall_seconds=1"):
            worker.search(hung)
        assert time.monotonic() - started < 10
        assert_replaced(worker, pid, batch, first.items)


def test_a_decode_process_killed_between_batches_is_replaced() -> None:
    with tiny_decode_process() as (model, worker):
        batch = batches(model, 1, seed=3)[0]
        first, pid = worker.search(batch), worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        # The child is gone, or still tearing its threads down: at most this one batch fails.
        with contextlib.suppress(Overloaded):
            worker.search(batch)
        assert_replaced(worker, pid, batch, first.items)


def test_an_error_in_the_decode_process_fails_its_batch_and_the_next_one_decodes() -> None:
    with tiny_decode_process() as (model, worker):
        good = batches(model, 1, seed=4)[0]
        bad = SearchBatch(np.full((1, 3), 10**9, dtype=np.int64), None, good.widths, 5, None, False)
        with pytest.raises(DecodeError, match="beam search failed in the decode process: IndexError"):
            worker.search(bad)
        assert worker.search(good).items.shape[0] == good.recent.shape[0]
        assert worker.restarts == 0


def test_a_model_folder_the_child_cannot_load_is_one_clear_error(tmp_path: object) -> None:
    with pytest.raises(RuntimeError, match="decode process could not load the model"):
        DecodeProcess(str(tmp_path), "cpu", GenrecConfig().serving, None, threads=1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: it is dead if /proc says so.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_readiness_names_the_decode_process_and_the_app_stops_it_on_shutdown() -> None:
    from fastapi.testclient import TestClient

    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app
    from testbed.serving import tiny_request

    model_dir = cached_tiny_model()
    model = GenerativeRecommender("genrec", model_dir)
    with TestClient(in_process_app(model)) as client:
        ready = client.get("/v2/health/ready").json()
        pid = ready["decode_process"]["pid"]
        assert ready["ready"] is True and ready["decode_process"]["restarts"] == 0 and _alive(pid)
        assert client.post("/v1/models/genrec:predict", json=tiny_request(model_dir)).status_code == 200
    assert not _alive(pid), "the in-process app's shutdown must stop its decode process"
