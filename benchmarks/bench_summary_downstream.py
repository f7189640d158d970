"""Do VISTA summary tokens help a downstream next-item model on Beauty?

Two arms, one run, the same recipe and budget (bench_quality's Beauty recipe, `train.epochs`
reduced equally for both on this shared CPU), both with the last `model.recent_items` = 20 items:

- summary: LazyAR with `model.use_summary=true`. Its summary tokens come from the pipeline's own
  library steps: `genrec.vista.train.train_summarizer` on Beauty's training split (what the
  `train_summarizer` component runs), then `genrec.features.materialize.materialize_user_summaries`
  (what `materialize_summaries` runs) into a Feast repo on the refresh schedule; training and
  evaluation read them through Feast `get_historical_features` (`genrec.train.summaries`), strictly
  before each target's time;
- recent only: the same with `model.use_summary=false`.

Test-target Recall/NDCG@5,10 over ALL users (history train + valid, full catalogue,
`genrec.evaluate`: `recommend` + `ranking_metrics`, i.e. `evaluate` keeping the per-user lists);
a test request's cutoff is its target's time, so it sees the newest snapshot before it (snapshots
cover train + valid only). The same users are scored by both arms, so the difference is also given
as a paired mean over users with its standard error.

    nice python -m benchmarks.bench_summary_downstream --set train.epochs=4 --set train.threads=1

The summariser, the feature repo and both models are cached under ~/.cache/genrec/bench; the
recent-only arm is bench_quality's own cache entry, so `python -m benchmarks.bench_quality
--datasets beauty --train-only --set ...` with the same overrides can train it concurrently.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.common import (
    DATASETS,
    Prepared,
    Recipe,
    add_config_arguments,
    load_average,
    prepare,
    train_cached,
)
from benchmarks.harness import save_result
from benchmarks.summaries import summary_repo, train_with_summaries
from genrec.config import GenrecConfig
from genrec.evaluate import hit_ranks, ranking_metrics, recommend
from genrec.model.artefact import TrainedModel
from genrec.train.data import HISTORY_SPLITS, evaluation_requests
from genrec.train.summaries import EVALUATION_TARGETS, SummaryProvider, summary_provider_for

NAME = "beauty"
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10")


def test_figures(model: TrainedModel, prepared: Prepared, config: GenrecConfig,
                 provider: SummaryProvider | None = None) -> tuple[dict[str, float], np.ndarray]:
    """bench_quality's test figures (test target of every user, history train + valid, full
    catalogue), plus each user's 0-based rank of the target (-1: not in the top K) for pairing."""
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    started = time.perf_counter()
    items, _ = recommend(model.decoder, requests, model.tables, config.train.beam_widths, config.train.top_k,
                         config.train.eval_batch_size, provider)
    figures = ranking_metrics(items, requests.targets, requests.values, model.decoder.item_codes.shape[0])
    figures["eval_seconds"] = time.perf_counter() - started
    order = np.argsort(requests.users.astype(str), kind="stable")  # the same user order in both arms
    return figures, hit_ranks(items, requests.targets)[order]


def summary_test_figures(model: TrainedModel, prepared: Prepared, config: GenrecConfig,
                         repo_dir: Path) -> tuple[dict[str, float], np.ndarray, dict[str, Any]]:
    """test_figures with summaries joined for the evaluation targets (cutoff = target time)."""
    started = time.perf_counter()
    provider = summary_provider_for(config, repo_dir, prepared.splits, EVALUATION_TARGETS)
    join = {"rows": provider.rows, "rows_with_summary": provider.joined_rows,
            "seconds": time.perf_counter() - started}
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    has_summary = provider(requests.users, requests.cutoffs).any(axis=(1, 2))
    join["test_requests_with_summary"] = float(has_summary.mean())
    figures, ranks = test_figures(model, prepared, config, provider)
    return figures, ranks, join


def paired(on_ranks: np.ndarray, off_ranks: np.ndarray, k: int) -> dict[str, float]:
    """Per-user difference of hit@k (summary arm minus recent-only arm): mean, standard error, and
    the users only one arm hits."""
    on = (on_ranks >= 0) & (on_ranks < k)
    off = (off_ranks >= 0) & (off_ranks < k)
    diff = on.astype(np.float64) - off
    return {"mean_difference": float(diff.mean()),
            "standard_error": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "users_only_summary_hits": int((on & ~off).sum()),
            "users_only_recent_hits": int((off & ~on).sum())}


def history_coverage(prepared: Prepared, recent_items: int) -> dict[str, float]:
    """How much of a test request's history the recent window already holds."""
    history = prepared.splits[prepared.splits["split"].isin(HISTORY_SPLITS["test"])]
    lengths = history.groupby("user_id").size().to_numpy()
    return {"mean_history_items": float(lengths.mean()), "median_history_items": float(np.median(lengths)),
            f"share_of_users_with_history_over_{recent_items}": float((lengths > recent_items).mean())}


def arm_record(model: TrainedModel, test: dict[str, float]) -> dict[str, Any]:
    training = model.manifest["training"]
    return {
        "test": {k: test[k] for k in METRICS if k in test},
        "train_minutes": training["train_seconds"] / 60,
        "train_finished": training["finished"],
        "steps": training["steps"],
        "parameters": model.manifest["parameters"],
        "summary_dim": model.decoder.summary_dim,
        "valid_subset_curve": [{"minutes": c["train_seconds"] / 60, "epoch": c["epoch"], **c["metrics"]}
                               for c in training["curves"]],
        "eval_seconds": test["eval_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args()
    loads = [load_average()]
    recipe = Recipe(NAME, (*args.set, "model.recent_items=20"), args.config)
    on_config = recipe.config("model.use_summary=true")
    off_config = recipe.config("model.use_summary=false")
    if on_config.train.threads:
        torch.set_num_threads(on_config.train.threads)
    prepared = prepare(NAME, on_config)
    prepare(NAME, off_config)

    started = time.perf_counter()
    repo_dir, summaries = summary_repo(prepared, on_config)
    summaries["seconds"] = time.perf_counter() - started
    loads.append(load_average())
    on_model, train_join = train_with_summaries(prepared, on_config, repo_dir)
    loads.append(load_average())
    on_test, on_ranks, test_join = summary_test_figures(on_model, prepared, on_config, repo_dir)
    loads.append(load_average())
    off_model = train_cached(prepared, off_config, "[recent only] ")
    off_test, off_ranks = test_figures(off_model, prepared, off_config)
    loads.append(load_average())

    on, off = arm_record(on_model, on_test), arm_record(off_model, off_test)
    figures: dict[str, Any] = {
        "dataset": DATASETS[NAME],
        "protocol": "leave-one-out; test target of all users; history train+valid; full catalogue",
        "question": "do VISTA summary tokens improve the next-item model over the last 20 items alone?",
        "summary_plus_recent_20": on,
        "recent_20_only": off,
        "recall@10_summary_over_recent": on["test"]["recall@10"] / max(off["test"]["recall@10"], 1e-12),
        "ndcg@10_summary_over_recent": on["test"]["ndcg@10"] / max(off["test"]["ndcg@10"], 1e-12),
        "paired_over_users": {f"hit@{k}": paired(on_ranks, off_ranks, k) for k in (5, 10)},
        "history": history_coverage(prepared, on_config.model.recent_items),
        "training_rows_with_summary": train_join["rows_with_summary"] / max(train_join["rows"], 1),
        "summaries": summaries,
        "feast_join_training": train_join,
        "feast_join_evaluation": test_join,
        "config_both": recipe.record(),
        "load_average_1_5_15_at_stages": loads,
        "torch_threads": torch.get_num_threads(),
    }

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        arms = [("recent 20 only", off, "#999"), ("summary + recent 20", on, "#36c")]
        for offset, metric in enumerate(("recall@10", "ndcg@10")):
            for j, (label, arm, color) in enumerate(arms):
                bar = axes[0].bar(offset * 3 + j, arm["test"][metric], color=color,
                                  label=label if offset == 0 else None)
                axes[0].bar_label(bar, fmt="%.4f", fontsize=7)
        axes[0].set_xticks([0.5, 3.5], ["test recall@10", "test ndcg@10"])
        delta = figures["paired_over_users"]["hit@10"]
        axes[0].set_title(f"{DATASETS[NAME]}, all users, full catalogue\npaired recall@10 difference "
                          f"{delta['mean_difference']:+.4f} ± {delta['standard_error']:.4f} (s.e.)",
                          fontsize=9)
        axes[0].legend(fontsize=8)
        for label, arm, color in arms:
            curve = arm["valid_subset_curve"]
            axes[1].plot([c["epoch"] for c in curve], [c["recall@10"] for c in curve], marker="o",
                         color=color, label=f"{label}: valid subset recall@10")
        # Epochs, not minutes: the budget is equal epochs, and the arms' minutes mostly measure how
        # busy the shared machine was at the time.
        axes[1].set_xlabel("epoch")
        axes[1].legend(fontsize=8)
        return fig

    save_result("summary_downstream_beauty", figures, plot)


if __name__ == "__main__":
    main()
