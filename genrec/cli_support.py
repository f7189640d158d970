"""What every `genrec` command group shares: the consoles, the `--config`/`--set` options, and
`friendly_errors`, which turns an error the user can fix into one line on stderr and exit code 1
(never a traceback).

    @app.command("show")
    @friendly_errors(CodebookError)          # this group's own input errors, on top of the shared ones
    def show(config_path: Path | None = ConfigOption, overrides: list[str] | None = SetOption) -> None:
        cfg = load_config(config_path, overrides)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SetOption = typer.Option(None, "--set", help="Override a config field: section.key=value (repeatable).")


def fail(message: str) -> NoReturn:
    """One `error:` line on stderr (the message is text, not markup) and exit code 1."""
    err_console.print("[bold red]error:[/] " + escape(message), highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def shared_user_errors() -> tuple[type[BaseException], ...]:
    """Errors of the library that always mean bad input: the config, the data source, the contract.
    (Imported when a command fails, so `--help` loads none of the data modules.)"""
    from genrec.config import ConfigError
    from genrec.data.schema import ContractError
    from genrec.data.sources import SourceError

    return ConfigError, SourceError, ContractError


def friendly_errors(*extra: type[BaseException]) -> Callable[[F], F]:
    """A decorator: the shared input errors and `extra` become one line and exit code 1; a failed data
    validation prints its report (which names the rules and the rows)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from genrec.data.validation import DataValidationError

            try:
                return func(*args, **kwargs)
            except DataValidationError as exc:
                err_console.print("[bold red]data validation failed[/]")
                err_console.print(str(exc), markup=False, highlight=False)
                raise typer.Exit(1) from exc
            except (*shared_user_errors(), *extra) as exc:
                fail(str(exc))

        return wrapper  # type: ignore[return-value]

    return decorate
