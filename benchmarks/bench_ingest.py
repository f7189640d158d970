"""Ingest cost per data set: converting a source into the contract against validating it with
Great Expectations, measured side by side in one run. `python -m benchmarks.bench_ingest`"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.harness import save_result
from genrec.config import GenrecConfig
from genrec.data.bids import attach_values
from genrec.data.schema import CATALOGUE, INTERACTIONS
from genrec.data.sources import load_source
from genrec.data.validation import validate_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(dataset: str) -> dict[str, float]:
    cfg = GenrecConfig()
    cfg.data.dataset = dataset
    cfg.data.shared_data_dir = str(SHARED)
    load_source(cfg.data)  # warm the wheel cache and the file system
    start = time.perf_counter()
    raw = load_source(cfg.data)
    catalogue = raw.catalogue.assign(value=np.nan)
    interactions, catalogue, _ = attach_values(raw.interactions, catalogue, cfg.bids)
    interactions, catalogue = INTERACTIONS.conform(interactions), CATALOGUE.conform(catalogue)
    convert = time.perf_counter() - start
    # The first call pays Great Expectations' import and context set-up; time the steady state.
    validate_dataset(interactions.head(100), catalogue, min_interactions_per_user=1, max_bad_examples=1)
    start = time.perf_counter()
    report = validate_dataset(interactions, catalogue, min_interactions_per_user=5, max_bad_examples=5)
    validate = time.perf_counter() - start
    return {
        "rows": len(interactions),
        "items": len(catalogue),
        "convert_seconds": convert,
        "validate_seconds": validate,
        "validate_over_convert": validate / convert,
        "rows_per_second_end_to_end": len(interactions) / (convert + validate),
        "valid": report.success,
    }


def main() -> None:
    names = ["movielens-100k"] + [n for n in ("amazon-beauty", "amazon-scientific") if SHARED.is_dir()]
    figures = {name: measure(name) for name in names}

    def plot() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = np.arange(len(names))
        ax.bar(x - 0.2, [figures[n]["convert_seconds"] for n in names], 0.4, label="convert")
        ax.bar(x + 0.2, [figures[n]["validate_seconds"] for n in names], 0.4, label="validate (GX)")
        ax.set_xticks(x, names)
        ax.set_ylabel("seconds (one run, side by side)")
        ax.legend()
        return fig

    save_result("ingest", figures, plot)


if __name__ == "__main__":
    main()
