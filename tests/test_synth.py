"""`genrec data synth`: a seeded ad log with the shapes of real traffic, in the partitioned generic
format, readable by ingest and validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genrec.cli import app
from genrec.config import SynthConfig
from genrec.data.partitioned import user_buckets
from genrec.data.synth import CATALOGUE_FILE, INTERACTIONS_DIR, SynthError, generate

EVENTS = 120_000
# Small buckets and chunks, so that a small log still spans several files and chunks; ultra-long
# users sized to the small log.
CONFIG = SynthConfig(events_per_bucket=30_000, events_per_chunk=25_000, ultra_events=10_000)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("synth") / "log"
    generate(EVENTS, folder, seed=5, config=CONFIG)
    return folder, pd.read_parquet(folder / INTERACTIONS_DIR), pd.read_parquet(folder / CATALOGUE_FILE)


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*.parquet")):
        sha.update(pd.read_parquet(path).to_csv().encode())
    return sha.hexdigest()


def test_sizes_follow_the_event_count(log: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    folder, events, catalogue = log
    assert len(events) == EVENTS
    assert events["user_id"].nunique() == EVENTS // 50
    assert len(catalogue) == EVENTS // 200 and set(events["item_id"]) <= set(catalogue["item_id"])
    parts = sorted((folder / INTERACTIONS_DIR).glob("*.parquet"))
    assert len(parts) == 4  # 120k events / 30k per bucket


def test_users_live_in_one_file_each_in_time_order(log: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    folder, _, _ = log
    seen: set[str] = set()
    for bucket, part in enumerate(sorted((folder / INTERACTIONS_DIR).glob("*.parquet"))):
        frame = pd.read_parquet(part)
        users = frame["user_id"].unique()
        assert not seen & set(users), "a user spans two files"
        seen |= set(users)
        assert (user_buckets(users, 4) == bucket).all()
        # Each user's rows are contiguous and in time order.
        runs = (frame["user_id"] != frame["user_id"].shift()).cumsum()
        assert runs.groupby(frame["user_id"]).nunique().max() == 1
        assert frame.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


def test_the_shapes_of_ad_traffic(log: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, events, catalogue = log
    lengths = events.groupby("user_id").size()
    assert lengths.min() >= CONFIG.min_events
    assert (lengths == CONFIG.ultra_events).sum() == CONFIG.ultra_users, "a few ultra-long users"
    assert lengths.median() < lengths.mean(), "long-tailed history lengths"
    popularity = events["item_id"].value_counts()
    top = popularity.iloc[: len(catalogue) // 100].sum() / len(events)
    assert top > 0.1, f"the top 1% of items hold {top:.0%} of events: power-law popularity"
    values = catalogue["value"]
    assert values.min() > 0 and values.max() / values.min() > 1e3, "bids span several orders of magnitude"
    assert catalogue["title"].str.len().gt(0).all() and catalogue["brand"].notna().all()
    assert catalogue["categories"].map(len).eq(1).all()
    gaps = events.groupby("user_id")["timestamp"].diff().dropna().dt.total_seconds()
    short, long = (gaps < 600).mean(), (gaps > 3600).mean()
    assert short > 0.6 and long > 0.05, "events come in sessions"
    span = events.groupby("user_id")["timestamp"].agg(lambda t: (t.max() - t.min()).days)
    assert span.max() <= CONFIG.max_history_days


def test_same_seed_same_log_other_seed_other_log(tmp_path: Path,
                                                 log: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    folder, _, _ = log
    generate(EVENTS, tmp_path / "again", seed=5, config=CONFIG)
    generate(EVENTS, tmp_path / "other", seed=6, config=CONFIG)
    assert digest(tmp_path / "again") == digest(folder)
    assert digest(tmp_path / "other") != digest(folder)


def test_too_few_events_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="at least synth.min_events=5"):
        generate(3, tmp_path / "tiny", seed=0, config=SynthConfig())
    assert not (tmp_path / "tiny").exists(), "nothing half-written"


def test_the_cli_writes_a_log_that_validates(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["data", "synth", "--events", "20000", "--output", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "20,000 events" in result.output
    result = runner.invoke(app, ["data", "validate", str(out), "--docs", str(tmp_path / "docs")])
    assert result.exit_code == 0 and "valid" in result.output, result.output
    again = runner.invoke(app, ["data", "synth", "--events", "20000", "--output", str(out)])
    assert again.exit_code != 0 and "exists" in again.output
    assert np.isfinite(pd.read_parquet(out / INTERACTIONS_DIR)["value"]).all()


def test_no_two_events_of_a_user_share_a_time(tmp_path: Path) -> None:
    """Squeezed ultra-long histories and gaps that round to nothing still give each event of a user
    its own microsecond (a 100M-event log once held a duplicate (user, item, timestamp))."""
    config = SynthConfig(ultra_users=2, ultra_events=30_000, in_session_gap_seconds=1e-7, max_history_days=1)
    generate(60_000, tmp_path / "log", seed=5, config=config)
    frame = pd.read_parquet(tmp_path / "log" / INTERACTIONS_DIR)
    assert frame.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing and t.is_unique).all()
    assert not frame.duplicated(["user_id", "item_id", "timestamp"]).any()


def far_past_share(folder: Path, window: int) -> tuple[float, float]:
    """Of each user's last event: the share whose item the user had before but not in the `window`
    events before it, and the share whose item is in that window."""
    log = pd.read_parquet(folder / INTERACTIONS_DIR)
    far = near = 0
    users = log.groupby("user_id", sort=False)["item_id"]
    for items in users:
        *history, target = items[1].tolist()
        near += target in history[-window:]
        far += target not in history[-window:] and target in history
    return far / users.ngroups, near / users.ngroups


def test_long_term_interests_put_signal_beyond_the_last_20_items(tmp_path: Path) -> None:
    """The long-history log of issue 26 (docs/synth.md): with interests that return after other
    episodes, more of a user's next items are favourites last seen beyond their latest 20 events
    than under the home-category model, at the same sizes and seed."""
    sizes = {"events_per_user": 200, "events_per_item": 50, "length_sigma": 0.5, "ultra_users": 0,
             "min_events": 20}
    generate(200_000, tmp_path / "home", seed=3, config=SynthConfig(**sizes))
    long_term = SynthConfig(**sizes, interests=12, episode_mean_events=3, interest_pool_items=6,
                            interest_pool_share=0.8)
    generate(200_000, tmp_path / "interests", seed=3, config=long_term)
    home_far, _ = far_past_share(tmp_path / "home", 20)
    interest_far, _ = far_past_share(tmp_path / "interests", 20)
    assert interest_far > home_far + 0.05 and interest_far > 0.2
    # Every event of the interest model is a catalogue item, and the log is as deterministic as ever.
    catalogue = pd.read_parquet(tmp_path / "interests" / CATALOGUE_FILE)
    assert set(pd.read_parquet(tmp_path / "interests" / INTERACTIONS_DIR)["item_id"]) <= set(catalogue["item_id"])
    generate(200_000, tmp_path / "again", seed=3, config=long_term)
    assert digest(tmp_path / "again") == digest(tmp_path / "interests")


def test_interests_come_due_in_turn_with_a_return_bias() -> None:
    """The vectorised episode draw against a per-user replay of its own output: with a large bias
    almost every episode takes the interest longest away; with none, about 1 in `interests` does."""
    from genrec.data.synth import _due_interests

    episodes = np.array([1, 40, 7, 0, 25])
    for bias, low, high in ((60.0, 0.95, 1.0), (0.0, 0.0, 0.3)):
        drawn = _due_interests(episodes, 6, bias, np.random.default_rng(0))
        assert len(drawn) == episodes.sum() and drawn.min() >= 0 and drawn.max() < 6
        oldest = total = 0
        for start, count in zip(np.r_[0, np.cumsum(episodes)[:-1]], episodes):
            last_seen = {}  # interest -> episode index (unseen interests tie as oldest)
            for step, interest in enumerate(drawn[start:start + count]):
                if step >= 6 and len(last_seen) == 6:  # once every interest's age is known
                    total += 1
                    oldest += last_seen[interest] == min(last_seen.values())
                last_seen[interest] = step
        assert total > 30 and low <= oldest / total <= high, (bias, oldest, total)
