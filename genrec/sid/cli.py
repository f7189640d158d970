"""`genrec sid ...`: read semantic IDs out of a built codebook.

Mounted by the main CLI as `genrec sid`. Bad input (a missing folder, an unknown item) ends with
one clear line and exit code 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from genrec.cli_support import console, fail
from genrec.sid.codebook import Codebook, CodebookError

sid_app = typer.Typer(help="Inspect UA-SID codebooks (semantic IDs of items).", no_args_is_help=True)



@sid_app.callback()
def _group() -> None:
    """Inspect UA-SID codebooks (semantic IDs of items)."""
    # A callback keeps `show` a named sub-command even while it is the only one.


def _load(folder: Path) -> Codebook:
    try:
        return Codebook.load(folder)
    except CodebookError as exc:
        fail(str(exc))


def _label(codebook: Codebook, item_id: str) -> str:
    # Titles are data, not markup: "[Blu-ray]" must print as is.
    title = codebook.title_of(item_id)
    return escape(f"{item_id}  {title}" if title else item_id)


@sid_app.command("show")
def show(
    item: str = typer.Argument(..., help="Item id, as in the catalogue."),
    codebook_dir: Path = typer.Option(..., "--codebook", "-b",
                                      help="Codebook folder (the build_codebook output)."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1,
                                     help="Neighbours listed per level (default: sid.show_limit)."),
) -> None:
    """Print ITEM's semantic ID and, level by level, the other items that share its prefix."""
    codebook = _load(codebook_dir)
    if item not in codebook:
        sample = ", ".join(codebook.item_ids[:3])
        message = (f"item {item!r} is not in the codebook at {codebook_dir} "
                   f"({len(codebook)} items, e.g. {sample})")
        fail(message)
    limit = limit or codebook.config.show_limit
    sid = codebook.sid_of(item)
    console.print(f"[bold]{_label(codebook, item)}[/]", highlight=False)
    names = [f"c{level}" for level in range(codebook.code_levels)] + ["dedup"]
    console.print("semantic ID: " + "  ".join(f"{n}={c}" for n, c in zip(names, sid, strict=True)),
                  highlight=False)

    table = Table(title=escape(f"items sharing a prefix of {item}'s ID"))
    table.add_column("prefix")
    table.add_column("items", justify="right")
    table.add_column(f"others (up to {limit})")
    for level in range(1, codebook.depth):
        prefix = sid[:level]
        others = [i for i in codebook.items_with_prefix(prefix) if i != item]
        shown = "\n".join(_label(codebook, i) for i in others[:limit])
        if len(others) > limit:
            shown += f"\n… and {len(others) - limit} more"
        table.add_row(" ".join(map(str, prefix)), str(len(others) + 1), shown or "-")
    console.print(table)
