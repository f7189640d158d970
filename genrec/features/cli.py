"""`genrec features ...`: look into a run's feature repo as an analyst.

    genrec features show --user 42 --repo runs/.../feature_repo
    genrec features history --users users.txt --at 1998-03-01T00:00:00Z --repo DIR --output out.parquet

Bad input (no such repo, unknown user, unreadable time) ends with a one-line message and exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from genrec.cli_support import console, friendly_errors
from genrec.config import FeatureStoreConfig

features_app = typer.Typer(help="Inspect the VISTA user summaries in a run's Feast feature repo.",
                           no_args_is_help=True)


F = TypeVar("F", bound=Callable[..., Any])

RepoOption = typer.Option(..., "--repo", "-r", help="A feature repo folder written by a pipeline run.")


class CliInputError(ValueError):
    """Input the user can fix: the message says how."""


def _friendly(func: F) -> F:
    from genrec.features.repo import FeatureRepoError

    return friendly_errors(CliInputError, FeatureRepoError, FileNotFoundError)(func)


def _parse_time(text: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as exc:
        raise CliInputError(f"--at {text!r} is not a time; use ISO 8601, e.g. 1998-03-01T12:00:00Z") from exc
    if stamp is pd.NaT:
        raise CliInputError(f"--at {text!r} is not a time; use ISO 8601, e.g. 1998-03-01T12:00:00Z")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _read_users(path: Path) -> list[str]:
    if not path.is_file():
        raise CliInputError(f"--users {path} does not exist; pass a text file with one user id per line, "
                            "or a CSV/parquet file with a user_id column")
    if path.suffix in (".parquet", ".csv"):
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
        if "user_id" not in frame.columns:
            columns = ", ".join(map(str, frame.columns))
            raise CliInputError(f"{path} has no user_id column (columns: {columns})")
        users = frame["user_id"].astype(str).tolist()
    else:
        users = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not users:
        raise CliInputError(f"{path} lists no users")
    return users


@features_app.command("show")
@_friendly
def show(
    user: str = typer.Option(..., "--user", "-u", help="The user id."),
    repo_dir: Path = RepoOption,
    model: Path | None = typer.Option(None, "--model", "-m",
                                      help="Summariser model file (default: the copy inside the repo)."),
    top: int = typer.Option(FeatureStoreConfig.show_top_items, help="Items listed per summary token."),
) -> None:
    """Print a user's newest summary (shape, norm, time) and the items its tokens attend to most."""
    from genrec.features.read import SNAPSHOT_TIMESTAMP, online_summary_records
    from genrec.features.repo import FeatureRepo

    repo = FeatureRepo.open(repo_dir)
    record = online_summary_records(repo, [user])[user]
    if record is None:
        raise CliInputError(f"user {user!r} has no summary in the online store of {repo.path} "
                            "(unknown user, or no snapshot was taken for them)")
    summary = record["summary"]
    console.print(f"user [bold]{user}[/]: summary {summary.shape[0]} tokens x {summary.shape[1]}, "
                  f"norm {np.linalg.norm(summary):.3f}, covers the first {record['n_items']} interactions, "
                  f"snapshot at {_as_time(record[SNAPSHOT_TIMESTAMP])}")
    model_path = model or repo.model_path
    if model_path is None or not Path(model_path).is_file():
        raise CliInputError(f"no summariser model at {model_path or repo.path}: pass --model")
    _print_token_items(repo, user, summary, int(record["n_items"]), Path(model_path), top)


def _as_time(value: Any) -> str:
    """The online store reports event times as Unix seconds."""
    if isinstance(value, (int, float)):
        return pd.Timestamp(value, unit="s", tz="UTC").isoformat()
    return str(value)


def _print_token_items(repo: Any, user: str, summary: np.ndarray, n_items: int, model_path: Path,
                       top: int) -> None:
    import torch

    from genrec.vista.data import time_ordered
    from genrec.vista.train import TrainedSummarizer

    summarizer = TrainedSummarizer.load(model_path)
    table = Table(title="per summary token: the history items it attends to most (weight), and the "
                        "catalogue items its vector matches best")
    table.add_column("token", justify="right")
    table.add_column("norm", justify="right")
    table.add_column("attends to (history)")
    table.add_column("recalls (catalogue)")
    attended: list[list[str]] = [[] for _ in range(len(summary))]
    history = repo.user_history(user)
    if history is not None:
        items = time_ordered(history)["item_id"].head(n_items)
        rows = torch.from_numpy(summarizer.vocab.encode(items))
        with torch.no_grad():
            weights = summarizer.model.token_attention(rows).numpy()  # [K, n]
        for token, row in enumerate(weights):
            best = np.argsort(-row, kind="stable")[:top]
            attended[token] = [f"{items.iat[i]} ({row[i]:.3f})" for i in best]
    with torch.no_grad():
        # Each token against every item embedding, without the popularity bias: what it "remembers".
        embeddings = summarizer.model.item_embedding.weight[1:]
        scores = (torch.from_numpy(summary.copy()) @ embeddings.T).numpy()  # [K, I]
    for token in range(len(summary)):
        best = np.argsort(-scores[token], kind="stable")[:top]
        recalled = summarizer.vocab.decode(best + 1)
        table.add_row(str(token), f"{np.linalg.norm(summary[token]):.3f}", ", ".join(attended[token]) or "-",
                      ", ".join(recalled))
    console.print(table)


@features_app.command("history")
@_friendly
def history(
    users: Path = typer.Option(..., "--users", help="User ids: one per line, or CSV/parquet with user_id."),
    at: str = typer.Option(..., "--at", help="Point in time (ISO 8601; UTC when no zone is given)."),
    repo_dir: Path = RepoOption,
    output: Path = typer.Option(..., "--output", "-o", help="Parquet file to write."),
) -> None:
    """Point-in-time join: each user's latest summary taken strictly before --at, written to parquet."""
    from genrec.features.read import historical_summaries
    from genrec.features.repo import FeatureRepo
    from genrec.io import write_parquet

    when = _parse_time(at)
    user_ids = _read_users(users)
    repo = FeatureRepo.open(repo_dir)
    entity_df = pd.DataFrame({"user_id": user_ids, "event_timestamp": when})
    joined = historical_summaries(repo, entity_df)
    write_parquet(joined, output)
    found = int(joined["summary"].notna().sum())
    console.print(f"{len(joined)} users at {when.isoformat()}: {found} with a summary, "
                  f"{len(joined) - found} without; written to {output}")
