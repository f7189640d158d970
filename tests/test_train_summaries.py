"""Summary tokens for training through Feast `get_historical_features` (`FeastSummaries`): the same
arrays as the in-memory reference `SnapshotSummaries`, strictly before each cutoff, and every
request the trainer makes is covered by the up-front join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.config import GenrecConfig
from genrec.data.split import leave_one_out
from genrec.features import FeatureRepo, materialize_user_summaries
from genrec.train.data import evaluation_requests, training_examples
from genrec.train.loop import Trainer, TrainingData
from genrec.train.summaries import (
    EVALUATION_TARGETS,
    TRAINING_TARGETS,
    FeastSummaries,
    feature_repo_summaries,
    summary_provider_for,
    summary_requests,
)
from genrec.vista.snapshot import decode_summary, encode_summary
from genrec.vista.train import train_summarizer
from tests.conftest import make_log
from tests.test_train import tiny_codebook
from tests.test_train import tiny_config as tiny_train_config
from tests.test_vista_snapshots import tiny_config as tiny_vista_config

ALL_TARGETS = ("train", "valid", "test")


def tied_splits() -> pd.DataFrame:
    """Leave-one-out splits whose interactions come in pairs sharing a timestamp (as MovieLens has),
    so snapshot times and cutoffs meet in ties."""
    log = make_log(users=12, items=30, per_user=8, seed=3)
    log["timestamp"] = log["timestamp"].dt.floor("2h")
    return leave_one_out(log)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenrecConfig, pd.DataFrame, Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("train-summaries")
    config = tiny_vista_config()
    config.vista.refresh, config.vista.refresh_every_interactions = "count", 3  # cuts fall inside ties
    config.model.use_summary = True
    splits = tied_splits()
    train_summarizer(splits, config).summarizer.save(root / "summarizer.pt")
    result = materialize_user_summaries(config, splits, root / "summarizer.pt", root / "repo")
    return config, splits, result.repo.path, result.snapshots


def test_feast_join_matches_snapshot_summaries(run) -> None:  # type: ignore[no-untyped-def]
    config, splits, repo, _ = run
    users, cutoffs = summary_requests(splits, ALL_TARGETS)
    feast = FeastSummaries(repo, users, cutoffs)
    reference = feature_repo_summaries(repo)
    joined, expected = feast(users, cutoffs), reference(users, cutoffs)
    assert (feast.tokens, feast.dim) == (reference.tokens, reference.dim) == (2, 16)
    np.testing.assert_array_equal(joined, expected)
    # Not trivially equal: some requests have a summary, some (early positions) have none.
    has = expected.any(axis=(1, 2))
    assert has.any() and not has.all()
    # The same holds for what the trainer and the evaluation ask, in their own order and batches.
    codebook = tiny_codebook()
    for examples in (training_examples(splits, codebook.item_ids, 4),
                     evaluation_requests(splits, codebook.item_ids, 4, "valid"),
                     evaluation_requests(splits, codebook.item_ids, 4, "test")):
        for index in np.array_split(np.random.default_rng(0).permutation(len(examples)), 3):
            np.testing.assert_array_equal(feast(examples.users[index], examples.cutoffs[index]),
                                          reference(examples.users[index], examples.cutoffs[index]))


def test_feast_join_is_strictly_before_the_target(run) -> None:  # type: ignore[no-untyped-def]
    _, splits, repo, snapshots = run
    users, cutoffs = summary_requests(splits, ALL_TARGETS)
    out = FeastSummaries(repo, users, cutoffs)(users, cutoffs)
    snapshot_times = snapshots["event_timestamp"].dt.tz_localize(None).to_numpy("datetime64[ns]")
    decoded = np.stack([decode_summary(d, s) for d, s in zip(snapshots["summary"], snapshots["summary_shape"])])
    newest_seen = 0
    for user, cutoff, summary in zip(users, cutoffs, out):
        mine = (snapshots["user_id"] == user).to_numpy()
        older = mine & (snapshot_times < cutoff)
        if not older.any():
            assert not summary.any()
            continue
        # The newest older snapshot, and never one at or after the cutoff (which would include the
        # target or later interactions).
        newest = np.flatnonzero(older)[np.argmax(snapshot_times[older])]
        np.testing.assert_array_equal(summary, decoded[newest])
        later = mine & (snapshot_times >= cutoff)
        assert not any(np.array_equal(summary, decoded[i]) for i in np.flatnonzero(later))
        newest_seen += 1
    assert newest_seen > 0


def test_snapshot_at_the_cutoff_is_not_seen(tmp_path: Path) -> None:
    """The one-microsecond shift at its edge: a snapshot stamped at the cutoff (it includes the
    target) is skipped; one a microsecond older, and one a second older, are seen."""
    config = GenrecConfig()
    repo = FeatureRepo.create(tmp_path / "repo", config.features)
    cutoff = pd.Timestamp("2024-03-01 12:00:00", tz="UTC")
    micro, second = pd.Timedelta(1, "us"), pd.Timedelta(1, "s")
    rows = [("at", cutoff - second, 1), ("at", cutoff, 2),
            ("micro", cutoff - micro, 3), ("micro", cutoff + micro, 4),
            ("second", cutoff - second, 5)]
    encoded = [encode_summary(np.full((2, 3), value, dtype=np.float32)) for *_, value in rows]
    repo.write_user_summaries(pd.DataFrame({
        "user_id": [r[0] for r in rows], "event_timestamp": pd.to_datetime([r[1] for r in rows], utc=True),
        "summary": [e[0] for e in encoded], "summary_shape": [e[1] for e in encoded],
        "n_items": [r[2] for r in rows],
    }))
    repo.apply()
    users = np.array(["at", "micro", "second", "nobody"])
    cutoffs = np.full(len(users), cutoff.tz_localize(None).to_datetime64())
    out = FeastSummaries(repo.path, users, cutoffs)(users, cutoffs)
    assert out[:, 0, 0].tolist() == [1.0, 3.0, 5.0, 0.0]


def test_requests_outside_the_join_raise(run) -> None:  # type: ignore[no-untyped-def]
    _, splits, repo, _ = run
    users, cutoffs = summary_requests(splits, TRAINING_TARGETS)
    feast = FeastSummaries(repo, users, cutoffs)
    feast(users[:2], cutoffs[:2])
    # Every timestamp of this log is on a 2-hour grid: a second later is a request never joined.
    with pytest.raises(KeyError, match="not in the set joined"):
        feast(users[:2], cutoffs[:2] + np.timedelta64(1, "s"))


def test_training_and_evaluation_read_through_feast(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, splits, repo, _ = run
    train_config = tiny_train_config(epochs=1)
    train_config.model.use_summary = True
    provider = summary_provider_for(train_config, repo, splits, TRAINING_TARGETS)
    assert isinstance(provider, FeastSummaries)
    codebook = tiny_codebook()
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes,
                                    train_config, provider)
    # Every batch the trainer builds (training examples, validation requests) is a join hit, or fit
    # would raise the KeyError of a request outside the join.
    result = Trainer(train_config, data, tmp_path).fit()
    assert result.decoder.summary_dim == config.vista.dim and "recall@10" in result.curves[-1].metrics
    evaluation = summary_provider_for(train_config, repo, splits, EVALUATION_TARGETS)
    requests = evaluation_requests(splits, codebook.item_ids, 4, "test")
    assert evaluation(requests.users, requests.cutoffs).shape == (len(requests), 2, config.vista.dim)


def test_provider_only_when_summaries_are_on(run) -> None:  # type: ignore[no-untyped-def]
    _, splits, repo, _ = run
    config = GenrecConfig()
    assert summary_provider_for(config, repo, splits) is None
    config.model.use_summary = True
    with pytest.raises(ValueError, match="feature_repo"):
        summary_provider_for(config, None, splits)
