"""The decode process (serving.decode_worker: process) against its reference, beam search in the
serving process (`BeamSearcher`): the same items and scores for the same batches, hence the same
recall; and a child that dies or raises costs its batch a clear error, never the server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

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


class ExitsWhenUnpickled:
    """Pickles into a call of os._exit: the decode process dies while it reads the batch."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (3,)


def test_a_decode_process_that_dies_during_a_batch_fails_it_with_503_and_is_replaced() -> None:
    model_dir = cached_tiny_model()
    model = load_model(model_dir)
    worker = DecodeProcess(model_dir, "cpu", GenrecConfig().serving, None, threads=1)
    try:
        batch = batches(model, 1, seed=3)[0]
        first = worker.search(batch)
        pid = worker.pid
        fatal = SearchBatch(ExitsWhenUnpickled(), None, batch.widths, 5, None, False)  # type: ignore[arg-type]
        with pytest.raises(Overloaded, match="decode process stopped during this batch"):
            worker.search(fatal)
        again = worker.search(batch)
        assert again.items.tolist() == first.items.tolist()
        assert worker.restarts == 1 and worker.pid != pid
    finally:
        worker.close()


def test_a_decode_process_killed_between_batches_is_replaced() -> None:
    model_dir = cached_tiny_model()
    model = load_model(model_dir)
    worker = DecodeProcess(model_dir, "cpu", GenrecConfig().serving, None, threads=1)
    try:
        batch = batches(model, 1, seed=3)[0]
        first = worker.search(batch)
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        # The child is gone, or still tearing its threads down: at most this one batch fails.
        try:
            again = worker.search(batch)
        except Overloaded:
            again = worker.search(batch)
        assert again.items.tolist() == first.items.tolist()
        assert worker.restarts == 1 and worker.pid != pid
    finally:
        worker.close()


def test_an_error_in_the_decode_process_fails_its_batch_and_the_next_one_decodes() -> None:
    model_dir = cached_tiny_model()
    model = load_model(model_dir)
    worker = DecodeProcess(model_dir, "cpu", GenrecConfig().serving, None, threads=1)
    try:
        good = batches(model, 1, seed=4)[0]
        bad = SearchBatch(np.full((1, 3), 10**9, dtype=np.int64), None, good.widths, 5, None, False)
        with pytest.raises(DecodeError, match="beam search failed in the decode process: IndexError"):
            worker.search(bad)
        assert worker.search(good).items.shape[0] == good.recent.shape[0]
        assert worker.restarts == 0
    finally:
        worker.close()


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
