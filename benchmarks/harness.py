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


def save_result(name: str, figures: dict[str, Any], plot: Callable[[], Figure] | None = None,
                results_dir: Path = RESULTS) -> Path:
    """Writes the JSON (and the PNG if `plot` is given) and prints the figures."""
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
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
