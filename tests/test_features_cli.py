"""`genrec features show | history`: readable output, and exit 1 with a message on bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from genrec.features import materialize_user_summaries
from genrec.features.cli import features_app
from genrec.vista.train import train_summarizer
from tests.test_features_repo import tied_log
from tests.test_vista_snapshots import tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    cfg = tiny_config()
    log = tied_log()
    train_summarizer(log, cfg).summarizer.save(root / "summarizer.pt")
    return materialize_user_summaries(cfg, log, root / "summarizer.pt", root / "repo").repo.path


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(features_app, list(args), env={"COLUMNS": "200"})


def test_show_prints_summary_and_attended_items(repo: Path) -> None:
    result = invoke("show", "--user", "u3", "--repo", str(repo), "--top", "2")
    assert result.exit_code == 0, result.output
    assert "user u3: summary 2 tokens x 16" in result.output and "covers the first 7 interactions" in result.output
    assert "attends to (history)" in result.output and "2024-01-" in result.output


def test_show_errors_are_one_line(repo: Path, tmp_path: Path) -> None:
    for args, message in [(("--user", "ghost", "--repo", str(repo)), "has no summary"),
                          (("--user", "u3", "--repo", str(tmp_path)), "is not a feature repo"),
                          (("--user", "u3", "--repo", str(repo), "--model", str(tmp_path / "m.pt")),
                           "no summariser model")]:
        result = invoke("show", *args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_history_writes_a_point_in_time_parquet(repo: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("u0\nu1\nghost\n")
    out = tmp_path / "out.parquet"
    # make_log: user u has interactions from 2024-01-01 + 100u hours on.
    result = invoke("history", "--users", str(users), "--at", "2024-01-05T06:00:00", "--repo", str(repo),
                    "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "3 users" in result.output and "1 with a summary" in result.output
    frame = pd.read_parquet(out)
    assert frame["user_id"].tolist() == ["u0", "u1", "ghost"]
    assert frame["summary"].notna().tolist() == [True, False, False]
    assert (frame["event_timestamp"] == pd.Timestamp("2024-01-05T06:00:00Z")).all()


def test_history_errors(repo: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    users.write_text("who\nu1\n")
    out = str(tmp_path / "o.parquet")
    cases = [(("--users", str(users), "--at", "2024-01-05", "--repo", str(repo), "-o", out), "no user_id column"),
             (("--users", str(tmp_path / "none.txt"), "--at", "2024-01-05", "--repo", str(repo), "-o", out),
              "does not exist"),
             (("--users", str(users), "--at", "soon", "--repo", str(repo), "-o", out), "is not a time")]
    for args, message in cases:
        result = invoke("history", *args)
        assert result.exit_code == 1 and message in result.output, result.output
