"""The baselines against simple references: popularity against counting by hand; SASRec's padded,
batched scoring against each sequence scored alone and unpadded; and a short SASRec training run
that must learn a pattern popularity cannot see."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.baselines import PopularityBaseline, SASRec, train_sasrec, user_sequences
from genrec.baselines.sasrec import request_sequences, sasrec_recommend
from genrec.config import BaselinesConfig, ConfigError, GenrecConfig
from genrec.evaluate import ranking_metrics
from genrec.train.data import ExampleSet, evaluation_requests
from testbed.serving import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def cyclic_splits(users: int = 120, items: int = 12, length: int = 8, seed: int = 0) -> pd.DataFrame:
    """Each user walks the items in a cycle (item i is followed by i + 1 mod `items`) from a random
    start: the next item follows from the last one, while every item is about equally popular."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        start = int(rng.integers(items))
        for position in range(length):
            split = "test" if position == length - 1 else "valid" if position == length - 2 else "train"
            rows.append({"user_id": f"u{user}", "item_id": f"i{(start + position) % items}",
                         "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=position),
                         "value": 1.0, "split": split})
    return pd.DataFrame(rows)


def small_config(**fields: float) -> BaselinesConfig:
    config = BaselinesConfig(sasrec_d_model=16, sasrec_layers=1, sasrec_heads=2, sasrec_dropout=0.0,
                             sasrec_max_len=6, sasrec_epochs=60, sasrec_batch_size=32, sasrec_lr=0.01)
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def test_popularity_ranks_by_training_counts_and_skips_the_history_when_asked() -> None:
    splits = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c", "c", "c"],
                           "item_id": ["x", "y", "y", "z", "y", "x", "w"],
                           "split": ["train", "train", "train", "train", "train", "valid", "test"]})
    item_ids = np.array(["w", "x", "y", "z"])
    baseline = PopularityBaseline.fit(splits, item_ids)
    assert baseline.counts.tolist() == [0, 1, 3, 1]  # counted by hand, train split only
    requests = ExampleSet(np.array([[2, 1], [-1, -1]]), np.array([2, 0]), np.array([0, 0]),
                          np.ones(2), np.array(["a", "b"], dtype=object),
                          np.array(["2024-01-01", "2024-01-01"], dtype="datetime64[ns]"))
    assert baseline.recommend(requests, 3).tolist() == [[2, 1, 3], [2, 1, 3]]
    assert baseline.recommend(requests, 3, exclude_last=2).tolist() == [[3, 0, -1], [2, 1, 3]]
    assert baseline.recommend(requests, 3, exclude_last=1).tolist() == [[1, 3, 0], [2, 1, 3]]


def test_sasrec_scores_a_padded_batch_as_the_real_items_alone() -> None:
    """The reference: each row's real items, without padding, at the positions they hold in the row."""
    torch.manual_seed(0)
    model = SASRec(30, small_config()).eval()
    sequences = torch.tensor([[-1, -1, -1, 4, 9, 2], [5, 6, 7, 8, 9, 10], [-1, -1, -1, -1, -1, 3]])
    with torch.inference_mode():
        batched = model.logits(model.hidden(sequences)[:, -1])
        for row, sequence in enumerate(sequences):
            real = sequence >= 0
            alone = model.hidden(sequence[real][None], positions=torch.nonzero(real)[:, 0])
            np.testing.assert_allclose(model.logits(alone[:, -1])[0], batched[row], atol=1e-5)
    assert torch.isfinite(batched).all()


def test_request_sequences_turn_contexts_oldest_first_and_pad_on_the_left() -> None:
    requests = ExampleSet(np.array([[7, 3, -1, -1], [1, 2, 3, 4]]), np.array([2, 4]), np.array([0, 0]),
                          np.ones(2), np.array(["a", "b"], dtype=object),
                          np.array(["2024-01-01", "2024-01-01"], dtype="datetime64[ns]"))
    assert request_sequences(requests, 3).tolist() == [[-1, 3, 7], [3, 2, 1]]
    assert request_sequences(requests, 5).tolist() == [[-1, -1, -1, 3, 7], [-1, 4, 3, 2, 1]]


def test_user_sequences_keep_the_last_training_items_in_order() -> None:
    splits = cyclic_splits(users=3, items=12, length=8)
    item_ids = np.array([f"i{i}" for i in range(12)])
    sequences = user_sequences(splits, item_ids, max_len=3)
    first = splits[(splits.user_id == "u0") & (splits.split == "train")].item_id.tolist()
    assert sequences[0].tolist() == [int(i[1:]) for i in first[-4:]]
    assert sequences.shape == (3, 4)


def test_sasrec_learns_what_popularity_cannot() -> None:
    splits = cyclic_splits()
    item_ids = np.array([f"i{i}" for i in range(12)])
    config = small_config()
    run = train_sasrec(user_sequences(splits, item_ids, config.sasrec_max_len), len(item_ids), config,
                       seed=0, log=lambda _: None)
    assert run.losses[-1] < run.losses[0]
    requests = evaluation_requests(splits, item_ids, config.sasrec_max_len, "test")
    learned = ranking_metrics(sasrec_recommend(run.model, requests, 10, 64), requests.targets, requests.values,
                              len(item_ids))
    popular = ranking_metrics(PopularityBaseline.fit(splits, item_ids).recommend(requests, 10),
                              requests.targets, requests.values, len(item_ids))
    assert learned["ndcg@10"] > 0.9 > popular["ndcg@10"], (learned, popular)
    # With the last two context items excluded, neither ever comes back; the older ones still may.
    kept = sasrec_recommend(run.model, requests, 10, 64, exclude_last=2)
    assert not any(set(row) & set(recent[:2]) for row, recent in zip(kept, requests.recent))
    assert any(set(row) & set(recent[2:][recent[2:] >= 0]) for row, recent in zip(kept, requests.recent))


def test_the_budget_stops_training_within_its_step() -> None:
    splits = cyclic_splits()
    item_ids = np.array([f"i{i}" for i in range(12)])
    ticks = iter(range(1000))
    config = small_config(sasrec_minutes=3 / 60)  # 3 "seconds" of a clock that ticks once per call
    run = train_sasrec(user_sequences(splits, item_ids, config.sasrec_max_len), len(item_ids), config,
                       seed=0, log=lambda _: None, clock=lambda: float(next(ticks)))
    assert run.steps <= 3 and run.epochs == 1


def test_baselines_config_is_checked_by_name() -> None:
    with pytest.raises(ConfigError, match="baselines.sasrec_d_model"):
        GenrecConfig.from_dict({"baselines": {"sasrec_d_model": 30, "sasrec_heads": 4}})
    with pytest.raises(ConfigError, match="baselines.sasrec_dropout"):
        GenrecConfig.from_dict({"baselines": {"sasrec_dropout": 1.5}})


def test_the_evaluate_step_compares_the_candidate_with_the_baselines_and_the_deployed_model(tmp_path) -> None:
    import json

    from genrec.baselines.run import baseline_figures, compare_with, flat_metrics, nested_metrics
    from genrec.deploy.registry import LocalRegistry
    from genrec.train.report import evaluation_report

    baselines = {"popularity": {"test_recall@10": 0.02, "valid_recall@10": 0.03},
                 "sasrec": {"test_recall@10": 0.08, "test_ndcg@10": 0.04}}
    flat = flat_metrics(baselines)
    assert flat["sasrec_test_ndcg@10"] == 0.04 and nested_metrics(flat) == baselines
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps(flat))
    config = GenrecConfig()
    config.deploy.registry_dir = str(tmp_path / "registry")
    candidate = {"test_recall@10": 0.07, "test_ndcg@10": 0.035}
    compared = compare_with(config, candidate, str(path))
    assert list(compared) == ["candidate", "popularity", "sasrec"]  # nothing deployed yet
    assert baseline_figures(compared) == {"baseline_popularity_test_recall@10": 0.02,
                                          "baseline_popularity_valid_recall@10": 0.03,
                                          "baseline_sasrec_test_recall@10": 0.08,
                                          "baseline_sasrec_test_ndcg@10": 0.04}
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"x")
    LocalRegistry(config.deploy.registry_dir).register(model, {"test_recall@10": 0.065})
    assert compare_with(config, candidate, str(path))["deployed"] == {"test_recall@10": 0.065}
    assert compare_with(config, candidate, None).keys() == {"candidate", "deployed"}
    page = evaluation_report({"test": {"recall@10": 0.07}}, [], "t", compared).render()
    assert "Candidate, baselines and deployed model" in page and "<img" in page and "0.08" in page
