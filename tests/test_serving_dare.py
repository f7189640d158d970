"""DARE against exact beam search (the reference): the verify pass computes the decoder's exact
distributions; with acceptance off DARE returns exactly beam search's top-K; relaxed acceptance never
emits an invalid ID and reports each item's exact model score."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.config import GenrecConfig
from genrec.model.artefact import TrainedModel, load_model
from genrec.model.beam import beam_search
from genrec.model.decoder import SidSpace, build_decoder
from genrec.serving.model import build_pool_from_frame
from genrec.serving.speculative import RetrievalPool, dare_beam_search
from testbed.serving import HISTORY_FILE, cached_tiny_model, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield



@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return load_model(cached_tiny_model())


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return pd.read_parquet(cached_tiny_model().parent / HISTORY_FILE)


@pytest.fixture(scope="module")
def pool(trained: TrainedModel, history: pd.DataFrame) -> RetrievalPool:
    config = GenrecConfig()
    config.serving.dare_clusters = 4
    return build_pool_from_frame(trained, history, config)


def contexts(trained: TrainedModel, history: pd.DataFrame, users: int = 16):
    groups = list(history.groupby("user_id", sort=True))[:users]
    histories = [g["item_id"].tolist()[:-1] for _, g in groups]
    recent = trained.history_rows(histories)
    return trained.decoder.embed_context(recent), recent


@pytest.mark.parametrize("kind", ["lazyar", "ar"])
def test_verify_pass_matches_the_teacher_forced_reference(kind: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    codes = np.unique(np.stack([rng.integers(0, 8, 300), rng.integers(0, 8, 300), rng.integers(0, 4, 300)], 1),
                      axis=0)[:100]
    config = GenrecConfig.from_dict({"model": {"decoder": kind, "d_model": 32, "layers": 3, "heads": 2,
                                               "recent_items": 4}}).model
    decoder = build_decoder(config, SidSpace([8, 8, 4], codes)).eval()
    context = decoder.embed_context(torch.as_tensor(rng.integers(-1, 100, (3, 4))))
    sequences = torch.as_tensor(codes[[3, 7, 7, 50]])
    rows = torch.tensor([0, 1, 2, 2])
    with torch.inference_mode():
        log_probs = decoder.verify(decoder.start(context), rows, sequences)
        reference = decoder.code_log_probs(type(context)(context.tokens[rows], context.pad[rows]), sequences)
    got = torch.stack([log_probs[level].gather(1, sequences[:, level:level + 1]).squeeze(1) for level in range(3)], 1)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("widths", [[2], [4], [16], [8, 3]])
def test_strict_dare_is_exact_beam_search(trained: TrainedModel, history: pd.DataFrame, pool: RetrievalPool,
                                          widths: list[int]) -> None:
    context, recent = contexts(trained, history)
    decoder, tables = trained.decoder, trained.tables
    # Any cluster gives the exact answer in strict mode: spread the requests over all of them.
    clusters = np.arange(recent.shape[0]) % (pool.clusters + 1) - 1
    exact = beam_search(decoder, context, tables, widths, 10)
    dare, stats = dare_beam_search(decoder, context, tables, widths, 10, pool, clusters.tolist(), 4, 2, 0.1,
                                   strict=True)
    assert torch.equal(dare.items, exact.items)
    torch.testing.assert_close(dare.scores, exact.scores, atol=1e-4, rtol=1e-4)
    assert all(1 <= p <= decoder.levels for p in stats.passes)


def test_relaxed_dare_emits_valid_ids_with_exact_scores_in_fewer_passes(
        trained: TrainedModel, history: pd.DataFrame, pool: RetrievalPool) -> None:
    from genrec.serving.speculative import cluster_of_requests

    context, recent = contexts(trained, history)
    decoder = trained.decoder
    clusters = cluster_of_requests(pool, decoder, recent, None)
    result, stats = dare_beam_search(decoder, context, trained.tables, [8], 10, pool, clusters.tolist(), 4, 2, 0.1)
    exact = beam_search(decoder, context, trained.tables, [8], 10)
    overlap = []
    for row, (items, scores) in enumerate(zip(result.items, result.scores)):
        valid = items[items >= 0]
        assert len(valid) == 10 and len(set(valid.tolist())) == 10
        for item in valid.tolist():
            assert trained.trie.contains(decoder.item_codes[item].tolist())
        one = type(context)(context.tokens[row:row + 1].expand(len(valid), -1, -1),
                            context.pad[row:row + 1].expand(len(valid), -1))
        reference = decoder.code_log_probs(one, decoder.item_codes[valid]).sum(-1)
        torch.testing.assert_close(scores[:len(valid)], reference, atol=1e-4, rtol=1e-4)
        overlap.append(len(set(valid.tolist()) & set(exact.items[row].tolist())) / 10)
    assert sum(stats.passes) < decoder.levels * len(stats.passes)
    assert stats.draft_tokens > 0 and 0 < stats.accepted_tokens <= stats.draft_tokens
    assert np.mean(overlap) >= 0.7


def test_pool_round_trip_and_drafts_complete_their_prefix(trained: TrainedModel, pool: RetrievalPool,
                                                          tmp_path: Path) -> None:
    codes = trained.decoder.item_codes.numpy()
    loaded = RetrievalPool.load(pool.save(tmp_path / "pool.npz"), codes)
    assert loaded.mode == "history" and loaded.clusters == pool.clusters
    for cluster in range(-1, pool.clusters):
        for prefix in [(), tuple(codes[0, :1]), tuple(codes[5, :2])]:
            drafts = loaded.drafts(cluster, prefix, 6)
            assert drafts == pool.drafts(cluster, prefix, 6) and len(set(drafts)) == len(drafts)
            assert all(tuple(codes[d, :len(prefix)]) == prefix for d in drafts)
    # A frequent item of a cluster is drafted first for the empty prefix.
    assert loaded.drafts(0, (), 1) == [int(pool.rankings[0][0])]


def test_dare_switched_on_in_the_predictor(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client import REGISTRY

    from genrec.serving.model import GenerativeRecommender
    from genrec.serving.server import in_process_app

    model_dir = cached_tiny_model()
    config = GenrecConfig()
    config.serving.dare = True
    model = GenerativeRecommender("genrec", model_dir, config, history=model_dir.parent / HISTORY_FILE)
    drafts_before = REGISTRY.get_sample_value("genrec_dare_draft_tokens_total") or 0.0
    with TestClient(in_process_app(model)) as client:
        response = client.post("/v1/models/genrec:predict", json={"instances": [
            {"user_id": "u1", "k": 10, "recent_items": ["i1", "i5"]},
            {"user_id": "u2", "k": 4, "recent_items": ["i2"], "beam_policy": [4]}]})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert len(first["items"]) == 10 and len(second["items"]) == 4
    assert (REGISTRY.get_sample_value("genrec_dare_draft_tokens_total") or 0.0) > drafts_before
    config.serving.dare = True
    with pytest.raises(ValueError, match="serving.dare is on"):
        GenerativeRecommender("genrec", model_dir, config).load()
