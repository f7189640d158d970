"""Ranking metrics by hand, and evaluation that keeps every request's own top-K."""

import math

import numpy as np
import pytest
import torch

from genrec.data.split import leave_one_out
from genrec.evaluate import evaluate, hit_ranks, ranking_metrics, recommend, user_terms
from genrec.model.beam import TrieTables, beam_search
from genrec.model.decoder import SidDecoder, SidSpace, build_decoder
from genrec.train.data import ExampleSet, evaluation_requests
from tests.conftest import make_log
from tests.test_model_decoder import tiny_config
from tests.test_train import tiny_codebook


def test_metrics_by_hand() -> None:
    recommended = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [1, 5, 9, 10], [2, 3, -1, -1]])
    targets = np.array([2, 9, 1, -1])  # the last target has no semantic ID: always a miss
    values = np.array([2.0, 4.0, 1.0, 8.0])
    assert hit_ranks(recommended, targets).tolist() == [1, -1, 0, -1]
    m = ranking_metrics(recommended, targets, values, catalogue_size=20, cutoffs=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 4) and m["recall@2"] == pytest.approx(2 / 4)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 4)
    assert m["value@1"] == pytest.approx(1.0 / 4) and m["value@2"] == pytest.approx(3.0 / 4)
    assert m["coverage@1"] == pytest.approx(3 / 20)  # items 1, 5, 2
    assert m["users"] == 4
    terms = user_terms(hit_ranks(recommended, targets), values, 2)
    assert terms["value@2"].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert terms["ndcg@2"].tolist() == pytest.approx([1 / math.log2(3), 0.0, 1.0, 0.0])
    assert terms["recall@2"].tolist() == [1.0, 0.0, 1.0, 0.0]


def _tiny_requests() -> tuple[ExampleSet, SidDecoder, TrieTables, int]:
    """Test requests of a small log, an untrained decoder, its trie tables and the catalogue size."""
    torch.manual_seed(0)
    codebook = tiny_codebook()
    splits = leave_one_out(make_log(users=12, items=30, per_user=7))
    requests = evaluation_requests(splits, codebook.item_ids, recent_items=6, split="test")
    decoder = build_decoder(tiny_config(), SidSpace(codebook.level_sizes, codebook.codes)).eval()
    return requests, decoder, TrieTables(codebook.trie), len(codebook.item_ids)


def test_recommend_keeps_request_order() -> None:
    requests, decoder, tables, _ = _tiny_requests()
    items, scores = recommend(decoder, requests, tables, [6], top_k=5, batch_size=4)
    for row in range(len(requests)):
        length = max(1, int(requests.lengths[row]))
        one = decoder.embed_context(torch.as_tensor(requests.recent[row:row + 1, :length]))
        assert beam_search(decoder, one, tables, [6], 5).items[0].tolist() == items[row].tolist()
    metrics = evaluate(decoder, requests, tables, [6], top_k=10, batch_size=4)
    assert metrics["users"] == 12 and metrics["recall@5"] <= metrics["recall@10"]
    with pytest.raises(ValueError, match="top_k"):
        evaluate(decoder, requests, tables, [6], top_k=5, batch_size=4)


def test_exclude_history_drops_the_context_items_and_keeps_the_rest_in_order() -> None:
    requests, decoder, tables, items = _tiny_requests()
    wide = items * max(decoder.level_sizes)  # every prefix survives: the filtered list is exact
    plain, _ = recommend(decoder, requests, tables, [wide], top_k=20, batch_size=4)
    kept, _ = recommend(decoder, requests, tables, [wide], top_k=5, batch_size=4, exclude_history=True)
    for row in range(len(requests)):
        seen = set(requests.recent[row][requests.recent[row] >= 0].tolist())
        assert seen, "every test request has a history"
        assert [item for item in plain[row] if item not in seen][:5] == kept[row].tolist()
    assert any(set(plain[row, :5]) & set(requests.recent[row]) for row in range(len(requests)))
