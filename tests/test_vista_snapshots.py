"""Training on the training split, and snapshots on a refresh schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.config import GenrecConfig
from genrec.data.split import leave_one_out
from genrec.vista.data import time_ordered
from genrec.vista.snapshot import (
    TIE_STEP,
    RefreshSchedule,
    SnapshotBuilder,
    decode_summary,
    encode_summary,
    latest_snapshots,
    looks_order_only,
    sequence_times,
)
from genrec.vista.train import TrainedSummarizer, train_summarizer
from tests.conftest import make_log


def tiny_config() -> GenrecConfig:
    cfg = GenrecConfig()
    v = cfg.vista
    v.summary_tokens, v.dim, v.heads, v.readout_hidden = 2, 16, 2, 32
    v.epochs, v.batch_size, v.positions_per_user, v.negatives = 3, 8, 4, 16
    v.eval_batch_users, v.chunk_size = 4, 3  # tiny chunks: the chunked path is exercised too
    v.threads = 1  # tiny tensors: a second thread only adds synchronisation
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedSummarizer, pd.DataFrame, Path]:
    log = leave_one_out(make_log(users=20, items=40, per_user=9))
    result = train_summarizer(log, tiny_config())
    path = tmp_path_factory.mktemp("model") / "summarizer.pt"
    result.summarizer.save(path)
    return result.summarizer, log, path


def test_training_uses_only_the_training_split(trained) -> None:  # type: ignore[no-untyped-def]
    summarizer, log, _ = trained
    assert summarizer.metrics["train_interactions"] == (log["split"] == "train").sum()
    assert summarizer.metrics["users"] == log["user_id"].nunique()
    assert {"summary_recall@10", "popularity_recall@10", "examples_per_second"} <= set(summarizer.metrics)


def test_training_loss_goes_down() -> None:
    cfg = tiny_config()
    cfg.vista.epochs = 8
    result = train_summarizer(leave_one_out(make_log(users=30, items=20, per_user=8, seed=3)), cfg)
    assert result.epochs[-1].loss < result.epochs[0].loss


def test_model_round_trip(trained) -> None:  # type: ignore[no-untyped-def]
    summarizer, _, path = trained
    loaded = TrainedSummarizer.load(path)
    history = ["i1", "i5", "i7", "not-an-item"]
    assert np.array_equal(loaded.summarize(history), summarizer.summarize(history))
    assert loaded.vocab.item_ids == summarizer.vocab.item_ids and loaded.config == summarizer.config


def test_summary_bytes_round_trip() -> None:
    summary = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    data, shape = encode_summary(summary)
    assert len(data) == 4 * 8 * 4 and shape == [4, 8]
    assert np.array_equal(decode_summary(data, shape), summary)


def test_count_schedule_snapshots(trained) -> None:  # type: ignore[no-untyped-def]
    summarizer, log, _ = trained
    cfg = tiny_config().vista
    cfg.refresh, cfg.refresh_every_interactions = "count", 4
    rows = log[log["split"] != "test"]  # 8 per user: snapshots after 4 and 8 interactions
    schedule = RefreshSchedule.resolve(cfg, rows, "2000-01-01T00:00:00Z")
    snapshots = SnapshotBuilder(summarizer, schedule, batch_users=7).build(rows)
    assert len(snapshots) == 2 * rows["user_id"].nunique()
    assert sorted(set(snapshots["n_items"])) == [4, 8]
    ordered = time_ordered(rows)
    for snapshot in snapshots.itertuples():
        history = ordered[ordered["user_id"] == snapshot.user_id]
        # Stamped with the time of the last interaction it includes; equal to summarising that prefix.
        assert snapshot.event_timestamp == history["timestamp"].iloc[snapshot.n_items - 1]
        expected = summarizer.summarize(history["item_id"].iloc[:snapshot.n_items].tolist())
        assert np.allclose(decode_summary(snapshot.summary, snapshot.summary_shape), expected, atol=1e-5)
    latest = latest_snapshots(snapshots)
    assert len(latest) == rows["user_id"].nunique() and (latest["n_items"] == 8).all()


def test_period_schedule_one_snapshot_per_active_period(trained) -> None:  # type: ignore[no-untyped-def]
    summarizer, log, _ = trained
    cfg = tiny_config().vista
    cfg.refresh, cfg.refresh_period = "period", "3h"  # make_log: one interaction per hour
    schedule = RefreshSchedule.resolve(cfg, log, "2000-01-01T00:00:00Z")
    snapshots = SnapshotBuilder(summarizer, schedule, batch_users=1000).build(log)
    ordered = time_ordered(log)
    periods = ordered.groupby(["user_id", ordered["timestamp"].dt.floor("3h")]).size()
    assert len(snapshots) == len(periods)
    for user, group in snapshots.groupby("user_id"):
        history = ordered[ordered["user_id"] == user]
        assert group["n_items"].is_monotonic_increasing and group["n_items"].iloc[-1] == len(history)
        last = history["timestamp"].iloc[group["n_items"].to_numpy() - 1].to_numpy()
        assert (group["event_timestamp"].to_numpy() == last).all()
        # Every interaction after a snapshot's cut is later than the snapshot.
        for snapshot in group.itertuples():
            assert (history["timestamp"].iloc[snapshot.n_items:] > snapshot.event_timestamp).all()


def test_auto_schedule_recognises_order_only_timestamps() -> None:
    epoch = "2000-01-01T00:00:00Z"
    order_only = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"], "item_id": list("xyzxy"),
                               "timestamp": pd.Timestamp(epoch) + pd.to_timedelta([0, 1, 2, 0, 1], unit="s")})
    assert looks_order_only(order_only, epoch)
    assert not looks_order_only(make_log(), epoch)
    cfg = tiny_config().vista
    assert RefreshSchedule.resolve(cfg, order_only, epoch).kind == "count"
    assert RefreshSchedule.resolve(cfg, make_log(), epoch).kind == "period"
    cfg.refresh_period = "1ME"
    with pytest.raises(ValueError, match="fixed-length"):
        RefreshSchedule.resolve(cfg, make_log(), epoch)


def test_ties_get_sequence_times() -> None:
    stamp = pd.Timestamp("2024-01-01", tz="UTC")
    frame = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": list("xyzx"),
                          "timestamp": [stamp, stamp, stamp + pd.Timedelta(1, "s"), stamp]})
    times = sequence_times(frame)
    assert list(times - frame["timestamp"]) == [pd.Timedelta(0), TIE_STEP, pd.Timedelta(0), pd.Timedelta(0)]


def test_untrained_snapshot_of_unknown_items_is_finite(trained) -> None:  # type: ignore[no-untyped-def]
    summarizer, _, _ = trained
    with torch.no_grad():
        summary = summarizer.summarize(["never-seen"])
    assert np.isfinite(summary).all()
