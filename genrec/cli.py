"""The `genrec` command line.

Errors that come from bad input (config, source files, data that breaks the contract) end the
command with exit code 1 and a short message that names the field and the fix, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from genrec.cli_support import ConfigOption, SetOption, console, err_console, friendly_errors
from genrec.config import GenrecConfig, load_config

app = typer.Typer(help="genrec: a generative recommender for advertising.", no_args_is_help=True)
data_app = typer.Typer(help="Fetch, validate and describe data sets.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Run the Kubeflow pipeline locally, or compile it.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
config_app = typer.Typer(help="Show the typed configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _mount_subcommands() -> None:
    # Each library area owns its command group; they are mounted here so `genrec --help` lists all.
    from genrec.controller.cli import controller_app
    from genrec.features.cli import features_app
    from genrec.sid.cli import sid_app
    from genrec.train.cli import train_app

    app.add_typer(sid_app, name="sid")
    app.add_typer(features_app, name="features")
    from genrec.serving.cli import serve

    app.command("serve")(serve)
    app.add_typer(controller_app, name="controller")
    app.add_typer(train_app, name="train")


_mount_subcommands()

DatasetArgument = typer.Argument(
    None, help="movielens-100k, amazon-beauty, amazon-scientific, or a path. Default: data.dataset."
)


def _config(
    config_path: Path | None, overrides: list[str] | None, dataset: str | None = None
) -> GenrecConfig:
    extra = list(overrides or [])
    if dataset:
        extra.append(f"data.dataset={json.dumps(dataset)}")
    return load_config(config_path, extra)


@config_app.command("show")
@friendly_errors()
def config_show(config_path: Path | None = ConfigOption, overrides: list[str] | None = SetOption) -> None:
    """Print the full configuration (defaults, then the file, then --set) as YAML."""
    import yaml

    cfg = _config(config_path, overrides)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)


# ------------------------------------------------------------------------------------------------
# genrec data ...
# ------------------------------------------------------------------------------------------------


@data_app.command("fetch")
@friendly_errors()
def data_fetch(
    dataset: str | None = DatasetArgument,
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Make a data set available locally (downloads the MovieLens wheel into the cache)."""
    from genrec.data.sources import recbole_wheel_path, resolve_source

    cfg = _config(config_path, overrides, dataset)
    kind, _ = resolve_source(cfg.data)
    if kind == "recbole-atomic":
        console.print(f"movielens-100k: {recbole_wheel_path(cfg.data)}")
    else:
        console.print(f"{cfg.data.dataset}: local {kind} source, nothing to fetch")


@data_app.command("validate")
@friendly_errors()
def data_validate(
    dataset: str | None = DatasetArgument,
    docs: Path = typer.Option(Path("runs/data-docs"), help="Folder for the Great Expectations Data Docs."),
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Convert a source into the data contract and validate it; exit 1 with a report on failure."""
    from genrec.data.ingest import ingest

    cfg = _config(config_path, overrides, dataset)
    with console.status(f"validating {cfg.data.dataset}"):
        try:
            result = ingest(cfg, data_docs_dir=docs)
        finally:
            index = docs / "index.html"
            if index.exists():
                err_console.print(f"Data Docs: {index}")
    stats = result.validation.statistics
    console.print(f"[green]valid[/]: {cfg.data.dataset} ({len(result.interactions)} interactions, "
                  f"{len(result.catalogue)} items); {stats}")


@data_app.command("stats")
@friendly_errors()
def data_stats(
    dataset: str | None = DatasetArgument,
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Print figures that describe a data set (after ingest and validation)."""
    from genrec.data.ingest import ingest
    from genrec.data.stats import DatasetProfile, dataset_stats

    cfg = _config(config_path, overrides, dataset)
    with console.status(f"loading {cfg.data.dataset}"):
        result = ingest(cfg)
    table = Table(title=f"{result.info.name} (value: {result.info.value_source})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in dataset_stats(DatasetProfile.of(result.interactions), result.catalogue).items():
        table.add_row(key, _number(value))
    console.print(table)
    for note in result.info.notes:
        console.print(f"note: {note}")


@data_app.command("synth")
@friendly_errors()
def data_synth(
    events: int = typer.Option(..., "--events", min=1,
                               help="Events in the log (1e8 is fine: memory stays flat)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (it must not exist)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same log."),
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Write a synthetic ad log: partitioned parquet (by user hash) and a catalogue (see synth.* in the
    config)."""
    from genrec.data.synth import SynthError, generate

    cfg = _config(config_path, overrides)
    if output.exists():
        raise typer.BadParameter(f"{output} exists: give a new folder", param_hint="--output")
    columns = (TextColumn("synth"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} events"),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("synth", total=events)
        try:
            summary = generate(events, output, seed, cfg.synth,
                               progress=lambda done, _: bar.update(task, completed=done))
        except SynthError as exc:
            raise typer.BadParameter(str(exc), param_hint="--events") from exc
    sizes = summary.sizes
    console.print(f"[green]wrote[/] {output}: {sizes.events:,} events, {sizes.users:,} users, "
                  f"{sizes.items:,} items, {sizes.advertisers:,} advertisers, {sizes.buckets} files; "
                  f"ultra-long users {', '.join(summary.ultra_users) or 'none'}; "
                  f"{summary.first_event} .. {summary.last_event}")


# ------------------------------------------------------------------------------------------------
# genrec pipeline ...
# ------------------------------------------------------------------------------------------------

_TASK_START = re.compile(r"Executing task '?([\w-]+)")
_TASK_DONE = re.compile(r"Task '?([\w-]+)'? (finished with status|cache hit)")


class _TaskProgress(io.TextIOBase):
    """Receives kfp.local's stdout: keeps it in a log file and advances a progress bar per task."""

    def __init__(self, log: io.TextIOBase, progress: Progress, task_id: Any, echo: bool) -> None:
        self.log, self.progress, self.task_id, self.echo = log, progress, task_id, echo
        self.finished: set[str] = set()

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.echo and sys.__stdout__ is not None:
            sys.__stdout__.write(text)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
        for match in _TASK_START.finditer(plain):
            self.progress.update(self.task_id, description=f"running {match.group(1)}")
        for match in _TASK_DONE.finditer(plain):
            if match.group(1) not in self.finished:
                self.finished.add(match.group(1))
                self.progress.advance(self.task_id)
        return len(text)

    def flush(self) -> None:
        self.log.flush()


@contextlib.contextmanager
def _pipeline_progress(total: int, log_path: Path, echo: bool) -> Iterator[None]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn())
    with open(log_path, "w") as log, Progress(*columns, console=Console(file=sys.__stdout__)) as progress:
        task_id = progress.add_task("starting", total=total)
        sink = _TaskProgress(log, progress, task_id, echo)
        with contextlib.redirect_stdout(sink):  # type: ignore[type-var]
            yield
        progress.update(task_id, description="done", completed=total)


@pipeline_app.command("run")
@friendly_errors()
def pipeline_run(
    local_run: bool = typer.Option(False, "--local", help="Run the DAG here with kfp.local."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Data set name or path."),
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    root: Path | None = typer.Option(None, help="Where task outputs go (default: pipeline.local_root)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every step even if cached."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream every step's logs."),
) -> None:
    """Run the whole pipeline; `--local` runs it here on kfp.local's SubprocessRunner."""
    if not local_run:
        err_console.print("error: only --local runs are started from here; for a cluster use "
                          "`genrec pipeline compile` and submit the YAML")
        raise typer.Exit(2)
    from pipelines.genrec_pipeline import count_tasks, run_local

    cfg = _config(config_path, overrides, dataset)
    if no_cache:
        cfg.pipeline.enable_caching = False
    run_root = Path(root or cfg.pipeline.local_root).resolve()
    log_path = run_root / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    console.print(f"genrec pipeline on [bold]{cfg.data.dataset}[/] (kfp.local, outputs in {run_root})")
    try:
        with _pipeline_progress(count_tasks(cfg), log_path, verbose):
            result = run_local(cfg, run_root)
    except RuntimeError as exc:
        tail = log_path.read_text().splitlines()[-60:] if log_path.exists() else []
        err_console.print("\n".join(tail), markup=False, highlight=False)
        err_console.print(f"[bold red]pipeline failed:[/] {exc}\nfull log: {log_path}")
        raise typer.Exit(1) from exc
    _print_run_summary(result, log_path)


def _print_run_summary(result: Any, log_path: Path) -> None:
    from pipelines.genrec_pipeline import headline, write_run_report

    cached = f", {len(result.cached_steps)} step(s) from cache" if result.cached_steps else ""
    table = Table(title=f"genrec run finished in {result.seconds:.1f}s{cached}")
    table.add_column("step")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for step, figures in headline(result).items():
        for key, value in figures.items():
            table.add_row(step, key, _number(value))
    console.print(table)
    for name, path in result.reports().items():
        console.print(f"report [bold]{name}[/]: {path}")
    run_report = write_run_report(result, log_path.with_suffix(".html"))
    console.print(f"run report (every figure): [bold]{run_report}[/]")
    console.print(f"log: {log_path}")


@pipeline_app.command("compile")
@friendly_errors()
def pipeline_compile(
    output: Path = typer.Option(Path("genrec_pipeline.yaml"), "--output", "-o", help="IR YAML to write."),
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Compile the pipeline to Kubeflow IR YAML (parameter defaults come from the config)."""
    from pipelines.genrec_pipeline import compile_pipeline

    cfg = _config(config_path, overrides)
    path = compile_pipeline(cfg, output)
    console.print(f"compiled {cfg.pipeline.name} to {path} (image {cfg.pipeline.image})")


@pipeline_app.command("submit")
@friendly_errors()
def pipeline_submit(
    host: str = typer.Option("", "--host", help="Kubeflow Pipelines API URL (default: pipeline.host)."),
    run_name: str | None = typer.Option(None, "--run-name", help="Name shown in the Kubeflow UI."),
    token_env: str = typer.Option("KFP_TOKEN", "--token-env",
                                  help="Environment variable holding a bearer token, if the endpoint "
                                       "needs one."),
    package: Path | None = typer.Option(None, "--package", help="Submit this compiled YAML instead."),
    config_path: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Compile the pipeline and start a run on a Kubeflow cluster; prints the run's URL."""
    import os

    from pipelines.genrec_pipeline import SubmitError, submit_pipeline

    cfg = _config(config_path, overrides)
    endpoint = host or cfg.pipeline.host
    if not endpoint:
        raise typer.BadParameter("no Kubeflow endpoint: pass --host URL or set pipeline.host",
                                 param_hint="--host")
    try:
        run = submit_pipeline(cfg, endpoint, run_name=run_name, token=os.environ.get(token_env) or None,
                              package=package)
    except SubmitError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"submitted run {run.run_id} (experiment {run.experiment})")
    console.print(f"run URL: [bold]{run.url}[/]")


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
