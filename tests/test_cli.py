"""The command line turns bad input into a short message and exit code 1, never a traceback."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from genrec.cli import app
from tests.conftest import make_log

runner = CliRunner()


def _bad_log(tmp_path: Path, mutate) -> Path:
    log = make_log()
    mutate(log)
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("mutate,column,expectation", [
    (lambda f: f.__setitem__("value", f["value"].where(f.index != 4, -2.0)), "value", "expect_column_values_to_be_between"),
    (lambda f: f.__setitem__("timestamp", f["timestamp"].astype(str).where(f.index != 2, "not a time")),
     "timestamp", "expect_column_values_to_not_be_null"),
])
def test_validate_reports_column_and_expectation(tmp_path: Path, mutate, column: str, expectation: str) -> None:
    path = _bad_log(tmp_path, mutate)
    docs = tmp_path / "docs"
    result = runner.invoke(app, ["data", "validate", str(path), "--docs", str(docs)])
    assert result.exit_code == 1, result.output
    assert f"interactions.{column}" in result.output and expectation in result.output
    assert "Traceback" not in result.output
    assert (docs / "index.html").is_file()


def test_validate_and_stats_pass_on_good_data(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    make_log().to_csv(path, index=False)
    result = runner.invoke(app, ["data", "validate", str(path), "--docs", str(tmp_path / "docs")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "stats", str(path)])
    assert result.exit_code == 0 and "interactions" in result.output


def test_bad_config_and_source_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "stats", "nowhere-set"])
    assert result.exit_code == 1 and "neither a known data set" in result.output
    result = runner.invoke(app, ["data", "stats", "--set", "data.min_interactions_per_user=x"])
    assert result.exit_code == 1 and "must be an integer" in result.output
    wrong = tmp_path / "log.csv"
    pd.DataFrame({"uid": [1], "item_id": [2], "timestamp": [3]}).to_csv(wrong, index=False)
    result = runner.invoke(app, ["data", "stats", str(wrong)])
    assert result.exit_code == 1 and "'user_id' is missing" in result.output


def test_pipeline_run_requires_local_and_compile_writes_yaml(tmp_path: Path) -> None:
    assert runner.invoke(app, ["pipeline", "run"]).exit_code == 2
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "--output", str(out)])
    assert result.exit_code == 0 and out.is_file()


@pytest.mark.integration
def test_pipeline_run_failure_shows_report(tmp_path: Path) -> None:
    path = _bad_log(tmp_path, lambda f: f.__setitem__("item_id", f["item_id"].where(f.index != 1, None)))
    result = runner.invoke(app, ["pipeline", "run", "--local", "--dataset", str(path),
                                 "--root", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "item_id" in result.output and "DATA VALIDATION FAILED" in result.output
