"""Benchmark harness: every benchmark saves `benchmarks/results/<name>.json` (figures, command,
machine, date) and `<name>.png`, and prints its figures.

Timings are only ever reported as ratios measured side by side in one run: the machines are
shared and noisy, so an absolute time from one run says little about another.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


REPO = RESULTS.parents[1]


def command_line(argv: list[str] | None = None) -> str:
    """The command as run from the repository root: `python -m benchmarks.<name> ...` for a module
    run, else the script's path relative to the repository; never a path of the machine it ran on."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_relative_to(REPO):
        relative = script.relative_to(REPO)
        if relative.parts[0] == "benchmarks":
            head = ["python", "-m", ".".join(relative.with_suffix("").parts)]
        else:
            head = ["python", str(relative)]
    else:
        head = ["python", Path(argv[0]).name if argv else "?"]
    return " ".join(shlex.quote(a) for a in [*head, *(beside_repo(arg) for arg in argv[1:])])


def beside_repo(arg: str) -> str:
    """An absolute path inside the checkout or beside it (`../shared/data`) as the repository root
    sees it; other arguments (scratch folders such as /tmp/scale) as given."""
    option, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    path = Path(value)
    if path.is_absolute() and path.is_relative_to(REPO.parent):
        value = os.path.relpath(path, REPO)
    return f"{option}{equals}{value}"


def git_state() -> dict[str, Any]:
    """The commit the run was made from, and whether tracked files differed from it."""
    import subprocess

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


# Read when a benchmark starts (it imports this module first): the commit its code came from, even if
# the tree changes while it runs.
STARTED_FROM = git_state()


def save_result(name: str, figures: dict[str, Any], plot: Callable[[], Figure] | None = None,
                results_dir: Path = RESULTS) -> Path:
    """Writes the JSON (and the PNG if `plot` is given) and prints the figures. The record names the
    commit the benchmark started from (and whether the tree was dirty) and the command relative to
    the repository."""
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": command_line(),
        **STARTED_FROM,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
    }
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    if plot is not None:
        fig = plot()
        fig.savefig(results_dir / f"{name}.png", dpi=110, bbox_inches="tight")
    print(json.dumps({"name": name, "figures": figures}, indent=2, default=_plain))
    print(f"saved {path}")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
