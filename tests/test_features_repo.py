"""A run's Feast feature repo: definitions, sqlite online round trip, and point-in-time correctness
through Feast's real get_historical_features on the file offline store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from genrec.config import GenrecConfig
from genrec.data.split import leave_one_out
from genrec.features import (
    FeatureRepo,
    FeatureRepoError,
    decode_summaries,
    example_times,
    historical_summaries,
    materialize_user_summaries,
    online_summaries,
    point_in_time_summaries,
)
from genrec.features.schema import ITEM_SID_VIEW, SID, USER_SUMMARY_FIELDS, USER_SUMMARY_VIEW
from genrec.vista.data import time_ordered
from genrec.vista.snapshot import latest_snapshots
from genrec.vista.train import train_summarizer
from tests.conftest import make_log
from tests.test_vista_snapshots import tiny_config


def tied_log() -> pd.DataFrame:
    """Interactions in pairs that share a timestamp (as MovieLens often has), in sequence order."""
    log = make_log(users=10, items=30, per_user=8, seed=5)
    log["timestamp"] = log["timestamp"].dt.floor("2h")
    return leave_one_out(log)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("features")
    cfg = tiny_config()
    cfg.vista.refresh, cfg.vista.refresh_every_interactions = "count", 3  # cuts fall inside ties too
    log = tied_log()
    model_path = root / "summarizer.pt"
    train_summarizer(log, cfg).summarizer.save(model_path)
    sids = pd.DataFrame({"item_id": [f"i{i}" for i in range(30)], "c0": np.arange(30) % 4,
                         "c1": np.arange(30) % 7, "c2": np.arange(30)})
    result = materialize_user_summaries(cfg, log, model_path, root / "repo", item_sids=sids)
    return cfg, log, result


def test_definitions_match_the_library(run) -> None:  # type: ignore[no-untyped-def]
    from feast import FeatureView
    from feast.types import Array, Bytes, Int64

    _, _, result = run
    views = {v.name: v for v in result.repo.definitions() if isinstance(v, FeatureView)}
    assert set(views) == {USER_SUMMARY_VIEW, ITEM_SID_VIEW}
    fields = {f.name: f.dtype for f in views[USER_SUMMARY_VIEW].schema}
    assert set(fields) == set(USER_SUMMARY_FIELDS)
    # Bytes + shape, never Array(Float32): ten times faster in the sqlite online store.
    assert fields["summary"] == Bytes and fields["summary_shape"] == Array(Int64)
    assert {f.name for f in views[ITEM_SID_VIEW].schema} == {SID}


def test_repo_folder_is_self_contained(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _, result = run
    settings = yaml.safe_load((result.repo.path / "feature_store.yaml").read_text())
    assert settings["online_store"] == {"type": "sqlite", "path": "data/online_store.db"}
    assert settings["offline_store"]["type"] == "file" and not Path(settings["registry"]).is_absolute()
    assert result.repo.model_path is not None and result.repo.history_path is not None
    assert result.repo.manifest["rows"] == len(result.snapshots)
    moved = FeatureRepo.open(shutil.copytree(result.repo.path, tmp_path / "moved"))
    user = result.snapshots["user_id"].iloc[0]
    assert online_summaries(moved, [user])[user] is not None


def test_sqlite_online_round_trip(run) -> None:  # type: ignore[no-untyped-def]
    _, _, result = run
    latest = latest_snapshots(result.snapshots).set_index("user_id")
    read = online_summaries(result.repo, [*latest.index, "nobody"])
    assert read["nobody"] is None
    for user, row in latest.iterrows():
        assert read[user].tobytes() == row["summary"] and list(read[user].shape) == list(row["summary_shape"])
    assert result.metrics()["materialize_users_per_second"] > 0


def test_point_in_time_join_never_sees_the_target(run) -> None:  # type: ignore[no-untyped-def]
    _, log, result = run
    examples = time_ordered(log)
    examples["position"] = examples.groupby("user_id").cumcount()  # interactions before the target
    examples["event_timestamp"] = example_times(examples)
    raw = examples[["user_id", "timestamp", "position"]].rename(columns={"timestamp": "event_timestamp"})
    joined = historical_summaries(result.repo, pd.concat([examples[["user_id", "event_timestamp", "position"]],
                                                           raw], ignore_index=True))
    exact, conservative = joined.iloc[:len(examples)], joined.iloc[len(examples):]
    snapshots = result.snapshots
    for row in exact.itertuples():
        # The newest snapshot that includes only interactions before the target, exactly.
        earlier = snapshots[(snapshots["user_id"] == row.user_id) & (snapshots["n_items"] <= row.position)]
        if earlier.empty:
            assert row.summary is None and pd.isna(row.n_items)
        else:
            best = earlier.loc[earlier["n_items"].idxmax()]
            assert row.n_items == best["n_items"] and row.summary == best["summary"]
    # With raw timestamps (ties unresolved) the join is more conservative, never leaky.
    assert (conservative["n_items"].fillna(0).to_numpy() <= conservative["position"].to_numpy()).all()
    assert (conservative["n_items"].fillna(0).to_numpy() <= exact["n_items"].fillna(0).to_numpy()).all()
    summaries, present = decode_summaries(exact)
    assert summaries.shape[1:] == (2, 16) and present.sum() == exact["summary"].notna().sum()
    # The pandas join for bulk training sets gives exactly what Feast gives.
    local = point_in_time_summaries(result.repo, joined[["user_id", "event_timestamp", "position"]])
    pd.testing.assert_frame_equal(local, joined)


def test_historical_keeps_rows_without_a_snapshot_in_order(run) -> None:  # type: ignore[no-untyped-def]
    _, log, result = run
    users = log["user_id"].unique()[:3]
    entity_df = pd.DataFrame({"user_id": [users[0], users[1], users[2], "ghost"],
                              "event_timestamp": [pd.Timestamp("1990-01-01")] + [pd.Timestamp("2030-01-01")] * 3,
                              "label": [1, 2, 3, 4]})
    joined = historical_summaries(result.repo, entity_df)
    assert joined["label"].tolist() == [1, 2, 3, 4]
    assert joined["summary"].isna().tolist() == [True, False, False, True]
    with pytest.raises(FeatureRepoError, match="event_timestamp"):
        historical_summaries(result.repo, entity_df.drop(columns="event_timestamp"))


def test_item_sid_view_online(run) -> None:  # type: ignore[no-untyped-def]
    _, _, result = run
    response = result.repo.store.get_online_features(
        features=[f"{ITEM_SID_VIEW}:{SID}"], entity_rows=[{"item_id": "i9"}, {"item_id": "nope"}]).to_dict()
    assert response[SID] == [[1, 2, 9], None]


def test_create_refuses_a_used_folder_and_open_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(FeatureRepoError, match="not empty"):
        FeatureRepo.create(tmp_path / "used", GenrecConfig().features)
    with pytest.raises(FeatureRepoError, match="not a feature repo"):
        FeatureRepo.open(tmp_path / "missing")


def test_the_redis_config_plans_nothing_against_the_sqlite_repo(run) -> None:  # type: ignore[no-untyped-def]
    """`feast -f feature_store.redis.yaml plan` on a run's (sqlite) repo: the Redis config has its own
    registry, so Feast plans to create its views there and to delete nothing; the sqlite tables the
    local default reads are untouched (a shared registry made this plan tear them down)."""
    import subprocess
    import sys

    _, _, result = run
    repo = result.repo.path
    feast = Path(sys.executable).with_name("feast")
    tables_before = _sqlite_tables(repo / "data" / "online_store.db")
    out = subprocess.run([str(feast), "-c", str(repo), "-f", str(repo / "feature_store.redis.yaml"), "plan"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = out.stdout + out.stderr
    assert "Deleted" not in plan and "deleted" not in plan.lower().replace("undeleted", ""), plan[-2000:]
    assert USER_SUMMARY_VIEW in plan  # planned into the Redis registry, which starts empty
    assert _sqlite_tables(repo / "data" / "online_store.db") == tables_before
    redis_settings = yaml.safe_load((repo / "feature_store.redis.yaml").read_text())
    sqlite_settings = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert redis_settings["registry"] != sqlite_settings["registry"]
    user = result.snapshots["user_id"].iloc[0]
    assert online_summaries(result.repo, [user])[user] is not None


def _sqlite_tables(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return sorted(r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'"))
