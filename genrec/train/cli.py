"""`genrec train ...`: fine-tune a trained generator.

    genrec train rspo --model models/v0001 --splits splits.parquet
    genrec train rspo --model models/v0001 --feedback feedback.parquet --history interactions.parquet

Both write a new version folder beside the model (models/v0002, or under --models-dir) and only
read the model they start from, so the one being served is never touched. `--model` may also name
the versions folder itself: the highest version is taken.

Feedback log (parquet), one row per impression:

| column | type | meaning |
| --- | --- | --- |
| user_id | string | the user the item was shown to |
| item_id | string | the impressed item, as in the catalogue |
| timestamp | datetime (or ISO 8601 text) | when the request was served; rows of one request share it |
| reward | float >= 0 | the value the impression earned, 0 for no conversion |

The history log (user_id, item_id, timestamp; e.g. the splits parquet) gives each request its
context: the user's interactions strictly before the request time.

Bad input ends with one clear line naming the field and the fix, and exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genrec.cli_support import ConfigOption, SetOption, console, friendly_errors

F = TypeVar("F", bound=Callable[..., Any])

train_app = typer.Typer(help="Fine-tune a trained generator (RSPO, continual updates).", no_args_is_help=True)



class TrainInputError(ValueError):
    """A command-line input the user can fix; the message says how."""


@train_app.callback()
def _group() -> None:
    """Fine-tune a trained generator (RSPO, continual updates)."""
    # A callback keeps `rspo` a named sub-command even while it is the only one.


def _friendly(func: F) -> F:
    """The shared input errors plus this group's own: an unreadable model folder or file, a bad
    option combination."""
    from genrec.model.artefact import ModelArtefactError

    return friendly_errors(TrainInputError, ModelArtefactError, FileNotFoundError)(func)


def _read_parquet(path: Path, option: str) -> Any:
    import pandas as pd

    if not path.is_file():
        raise TrainInputError(f"{option} {path} does not exist: pass a parquet file")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise TrainInputError(f"{option} {path} is not a readable parquet file ({exc})") from exc


def _model_dir(path: Path) -> Path:
    """A model folder, or the newest version inside a versions folder."""
    from genrec.config import RspoConfig
    from genrec.model.artefact import MANIFEST_FILE
    from genrec.train.rspo import latest_version_dir

    if (path / MANIFEST_FILE).is_file():
        return path
    latest = latest_version_dir(path, RspoConfig())
    if latest is None:
        raise TrainInputError(f"--model {path} is neither a model folder (no {MANIFEST_FILE}) nor a folder "
                              "of versions (v0001, v0002, ...): pass the model being served")
    return latest


@train_app.command("rspo")
@_friendly
def rspo(
    model: Path = typer.Option(..., "--model", "-m", help="The model to start from (read only), or its "
                               "versions folder (the newest version is taken)."),
    feedback: Path | None = typer.Option(None, "--feedback", "-f", help="Continual mode: a feedback log "
                                         "(parquet: user_id, item_id, timestamp, reward)."),
    history: Path | None = typer.Option(None, "--history", help="Continual mode: the interaction log the "
                                        "contexts come from (user_id, item_id, timestamp)."),
    splits: Path | None = typer.Option(None, "--splits", help="Offline mode: leave-one-out splits parquet; "
                                       "only its train rows are used."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Where the new version goes "
                                           "(default: beside the model)."),
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """RSPO fine-tuning into a new model version: on a feedback log (--feedback, --history) or on
    the training split (--splits)."""
    from genrec.config import load_config
    from genrec.model.artefact import load_model
    from genrec.train.rspo import continual_update, finetune, next_version_dir, save_rspo_model

    if (feedback is None) == (splits is None):
        raise TrainInputError("pass either --feedback LOG (with --history) or --splits SPLITS, "
                              "not both or neither")
    if feedback is not None and history is None:
        raise TrainInputError("--feedback needs --history: the interaction log the request contexts "
                              "come from")
    cfg = load_config(config_path, list(overrides or []))
    source = _model_dir(model)
    with Progress(TextColumn("[bold]rspo[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("steps", total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def log(line: str) -> None:
            progress.console.print(line, highlight=False, markup=False)

        if feedback is not None and history is not None:
            result = continual_update(cfg, source, _read_parquet(feedback, "--feedback"),
                                      _read_parquet(history, "--history"), models_dir, log, on_step)
            folder = result.folder
        else:
            assert splits is not None
            trained = load_model(source)
            outcome = finetune(cfg, _read_parquet(splits, "--splits"), trained, source, log, on_step)
            folder = next_version_dir(models_dir or source.parent, cfg.rspo)
            save_rspo_model(folder, outcome, trained.item_ids, source, value_tilt=trained.value_tilt)
    console.print(f"[green]new model version[/]: {folder}  (started from {source}, which is unchanged)")
