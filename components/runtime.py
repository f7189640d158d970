"""Helpers that component bodies import at run time (inside the genrec image or this venv)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def log_metrics(metrics: Any, values: dict[str, Any]) -> None:
    """Logs figures to a kfp Metrics artefact and also writes them as JSON at its path.

    The file matters: kfp.local's cache treats an artefact whose file is missing as a cache miss,
    and a Metrics artefact otherwise has no file.
    """
    clean: dict[str, float] = {}
    for key, value in values.items():
        number = float(value)
        if math.isfinite(number):
            clean[key] = number
            metrics.log_metric(key, number)
    path = Path(metrics.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, sort_keys=True))
