"""Where VISTA summaries pay: long histories, three arms at an equal training budget (issue 26).

- (a) recent: the last 20 items only (`model.recent_items=20`);
- (b) summary: the last 20 items plus the K VISTA summary tokens, read point in time from the Feast
  snapshots the pipeline's own library steps write (`benchmarks.summaries.summary_repo`:
  `train_summarizer`, then `materialize_user_summaries`; training and evaluation join them with
  `get_historical_features`, strictly before each target's time);
- (c) full: the whole history up to 1,000 items with the decoder's plain attention
  (`model.recent_items=1000`): the quality and cost reference.

The three arms share the recipe: model shape, epochs, examples per user and the minutes cap
(`train.max_minutes`), and with them the training budget. Each seed changes the generator's and the
summariser's seeds. Test-target Recall/NDCG@10 over all users (history train + valid, full
catalogue), the same users in every arm, so (b) against (a) is paired: a bootstrap over users of
the relative N@10 change.

Serving cost per request, batch 1, one thread, measured side by side in one loop (arm after arm
on each request, so a busy moment of the machine costs each arm alike): a request with a history of
`--serving-history` items (10,000 by default; a real user's history, its tail made longer with
catalogue items). Each arm takes the last R items it reads (`TrainedModel.history_rows`),
embeds the context and beam-searches at the serving default rung. (b) also reads the user's newest
summary from the Feast online store (sqlite) first, as the predictor does. A summary is computed
at materialisation, never per request, so (b)'s cost does not grow with the history.

    python -m benchmarks.bench_long_history --datasets synth_long \\
        --config configs/recipes/long_history_synth.yaml --seeds 1 2 3
    python -m benchmarks.bench_long_history --datasets movielens \\
        --config configs/recipes/long_history_movielens.yaml --seeds 1 2 3

Writes benchmarks/results/long_history_<dataset>.json and .png.
"""

from __future__ import annotations

import argparse
import time
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
    paired_bootstrap,
    prepare,
    train_cached,
)
from benchmarks.harness import save_result
from benchmarks.summaries import summary_repo, train_with_summaries
from genrec.config import GenrecConfig
from genrec.evaluate import hit_ranks, ranking_metrics, recommend, user_terms
from genrec.features.read import online_summaries
from genrec.model.artefact import TrainedModel
from genrec.model.beam import beam_search
from genrec.train.data import HISTORY_SPLITS, evaluation_requests
from genrec.train.summaries import EVALUATION_TARGETS, summary_provider_for

ARMS = ("recent", "summary", "full")
ARM_OVERRIDES = {"recent": ["model.recent_items=20", "model.use_summary=false"],
                 "summary": ["model.recent_items=20", "model.use_summary=true"],
                 "full": ["model.recent_items=1000", "model.use_summary=false"]}
ARM_LABELS = {"recent": "(a) last 20 items", "summary": "(b) last 20 + summary tokens",
              "full": "(c) full history (<= 1,000)"}
CUTOFF = 10
HEADLINE = ("recall@10", "ndcg@10")
# Acceptance (issue 26): (b) over (a) on N@10 by this much, at this share of (c)'s N@10, at this
# serving p50 relative to (a) and to (c).
MIN_GAIN_OVER_RECENT = 0.05
MIN_SHARE_OF_FULL = 0.95
MAX_P50_OVER_RECENT = 1.2
MAX_P50_OVER_FULL = 0.2


def seed_overrides(seed: int) -> list[str]:
    return [f"train.seed={seed}", f"vista.seed={seed}"]


def arm_config(recipe: Recipe, arm: str, seed: int) -> GenrecConfig:
    return recipe.config(*ARM_OVERRIDES[arm], *seed_overrides(seed))


def scored(model: TrainedModel, prepared: Prepared, config: GenrecConfig,
           repo_dir: Any = None) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
    """Test figures, each user's @10 terms and the users, in one user order for every arm."""
    provider = summary_provider_for(config, repo_dir, prepared.splits, EVALUATION_TARGETS) \
        if config.model.use_summary else None
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    items, _ = recommend(model.decoder, requests, model.tables, config.train.beam_widths, config.train.top_k,
                         config.train.eval_batch_size, provider)
    figures = ranking_metrics(items, requests.targets, requests.values, model.decoder.item_codes.shape[0])
    order = np.argsort(requests.users.astype(str), kind="stable")
    terms = user_terms(hit_ranks(items, requests.targets)[order], requests.values[order], CUTOFF)
    return figures, terms, requests.users[order].astype(str)


def long_histories(prepared: Prepared, model: TrainedModel, users: int, length: int,
                   seed: int) -> list[tuple[str, list[str]]]:
    """`users` real test histories (train + valid), each made `length` items long by catalogue items
    drawn uniformly before its own (so its latest items stay the user's own)."""
    history = prepared.splits[prepared.splits["split"].isin(HISTORY_SPLITS["test"])]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(history["user_id"].unique(), users, replace=False)
    grouped = history[history["user_id"].isin(chosen)].groupby("user_id", sort=False)["item_id"]
    out = []
    for user, items in grouped:
        own = items.astype(str).tolist()[-length:]
        filler = rng.choice(model.item_ids, max(0, length - len(own))).astype(str).tolist()
        out.append((str(user), filler + own))
    return out


@torch.inference_mode()
def serving_latency(models: dict[str, TrainedModel], configs: dict[str, GenrecConfig], repo_dir: Any,
                    requests: list[tuple[str, list[str]]], repeats: int) -> dict[str, dict[str, float]]:
    """Per-request seconds of each arm, interleaved request by request (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _latency(models, configs, repo_dir, requests, repeats)
    finally:
        torch.set_num_threads(threads)


def _latency(models: dict[str, TrainedModel], configs: dict[str, GenrecConfig], repo_dir: Any,
             requests: list[tuple[str, list[str]]], repeats: int) -> dict[str, dict[str, float]]:
    serving = configs["recent"].serving
    widths, top_k = serving.beam_ladder[serving.default_rung], configs["recent"].train.top_k
    seconds: dict[str, list[float]] = {arm: [] for arm in models}
    feast: list[float] = []
    misses = 0
    for _ in range(repeats):
        for user, history in requests:
            for arm, model in models.items():
                started = time.perf_counter()
                summary = None
                if model.decoder.summary_dim:
                    read_started = time.perf_counter()
                    found = online_summaries(repo_dir, [user])[user]
                    feast.append(time.perf_counter() - read_started)
                    if found is None:
                        misses += 1
                        found = np.zeros((configs[arm].vista.summary_tokens, model.decoder.summary_dim))
                    summary = torch.as_tensor(found[None], dtype=torch.float32)
                context = model.decoder.embed_context(model.history_rows([history]), summary)
                beam_search(model.decoder, context, model.tables, widths, top_k)
                seconds[arm].append(time.perf_counter() - started)
    out = {arm: {"p50_ms": 1e3 * float(np.median(s)), "p90_ms": 1e3 * float(np.quantile(s, 0.9)),
                 "requests": len(s)} for arm, s in seconds.items()}
    out["summary"]["feast_read_p50_ms"] = 1e3 * float(np.median(feast))
    out["summary"]["feast_misses"] = misses
    return out


def arm_record(model: TrainedModel, figures: dict[str, float]) -> dict[str, Any]:
    training = model.manifest["training"]
    return {"test": {k: figures[k] for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "coverage@10")},
            "train_minutes": training["train_seconds"] / 60, "train_finished": training["finished"],
            "steps": training["steps"], "parameters": model.manifest["parameters"]}


def measure(recipe: Recipe, seeds: list[int], serving_users: int, serving_history: int,
            serving_repeats: int, tag: str = "") -> None:
    name = recipe.dataset
    loads = [load_average()]
    runs: list[dict[str, Any]] = []
    terms: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    latency: dict[str, Any] = {}
    for seed in seeds:
        configs = {arm: arm_config(recipe, arm, seed) for arm in ARMS}
        prepared = prepare(name, configs["summary"])
        for arm in ARMS:
            prepare(name, configs[arm])
        repo_dir, summaries = summary_repo(prepared, configs["summary"])
        models = {"recent": train_cached(prepared, configs["recent"], f"[{name} s{seed} recent] "),
                  "summary": train_with_summaries(prepared, configs["summary"], repo_dir)[0],
                  "full": train_cached(prepared, configs["full"], f"[{name} s{seed} full] ")}
        run: dict[str, Any] = {"seed": seed, "summariser": summaries}
        users = None
        for arm, model in models.items():
            figures, arm_terms, arm_users = scored(model, prepared, configs[arm], repo_dir)
            assert users is None or np.array_equal(users, arm_users), "the arms must score the same users"
            users = arm_users
            run[arm] = arm_record(model, figures)
            terms[arm].append(arm_terms[f"ndcg@{CUTOFF}"])
            print(f"[{name} s{seed} {arm}] test " + " ".join(f"{k} {figures[k]:.4f}" for k in HEADLINE),
                  flush=True)
        runs.append(run)
        loads.append(load_average())
        if seed == seeds[0]:
            requests = long_histories(prepared, models["recent"], serving_users, serving_history, seed)
            latency = serving_latency(models, configs, repo_dir, requests, serving_repeats)
            latency["history_items"] = serving_history
            print(f"[{name}] serving p50 ms: " + ", ".join(f"{a} {latency[a]['p50_ms']:.2f}" for a in ARMS),
                  flush=True)
    mean = {arm: {k: float(np.mean([r[arm]["test"][k] for r in runs])) for k in HEADLINE} for arm in ARMS}
    new, old = np.concatenate(terms["summary"]), np.concatenate(terms["recent"])
    gain = float(new.mean() / max(old.mean(), 1e-12) - 1)
    interval = paired_bootstrap(new, old, seeds[0])
    share_of_full = mean["summary"]["ndcg@10"] / max(mean["full"]["ndcg@10"], 1e-12)
    p50_over_recent = latency["summary"]["p50_ms"] / latency["recent"]["p50_ms"]
    p50_over_full = latency["summary"]["p50_ms"] / latency["full"]["p50_ms"]
    verdict = {
        "ndcg@10_summary_over_recent": gain, "ndcg@10_summary_over_recent_bootstrap_95": interval,
        "ndcg@10_summary_share_of_full": share_of_full,
        "serving_p50_summary_over_recent": p50_over_recent, "serving_p50_summary_over_full": p50_over_full,
        "summary_beats_recent": gain >= MIN_GAIN_OVER_RECENT and interval[0] > 0,
        "summary_near_full": share_of_full >= MIN_SHARE_OF_FULL,
        "serving_cost_met": p50_over_recent <= MAX_P50_OVER_RECENT and p50_over_full <= MAX_P50_OVER_FULL,
    }
    verdict["meets_target"] = all(verdict[k] for k in ("summary_beats_recent", "summary_near_full",
                                                        "serving_cost_met"))
    history = prepared.splits[prepared.splits["split"].isin(HISTORY_SPLITS["test"])].groupby("user_id").size()
    figures: dict[str, Any] = {
        "dataset": DATASETS[name], "seeds": seeds,
        "protocol": "leave-one-out; test target of all users; history train+valid; full catalogue",
        "arms": {arm: ARM_LABELS[arm] for arm in ARMS},
        "history_items": {"mean": float(history.mean()), "median": float(history.median()),
                          "max": int(history.max()), "share_over_20": float((history > 20).mean())},
        "mean_over_seeds": mean, "runs": runs, "serving": latency,
        "target": {"min_gain_over_recent": MIN_GAIN_OVER_RECENT, "min_share_of_full": MIN_SHARE_OF_FULL,
                   "max_p50_over_recent": MAX_P50_OVER_RECENT, "max_p50_over_full": MAX_P50_OVER_FULL},
        "verdict": verdict, "load_average_1_5_15_at_stages": loads, **recipe.record(),
    }
    print(f"[{name}] verdict: {verdict}", flush=True)

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        colours = {"recent": "#999", "summary": "#36c", "full": "#c63"}
        for offset, metric in enumerate(HEADLINE):
            for j, arm in enumerate(ARMS):
                values = [r[arm]["test"][metric] for r in runs]
                bar = axes[0].bar(offset * 4 + j, np.mean(values), color=colours[arm],
                                  label=ARM_LABELS[arm] if offset == 0 else None)
                axes[0].scatter([offset * 4 + j] * len(values), values, color="k", s=8, zorder=3)
                axes[0].bar_label(bar, fmt="%.4f", fontsize=7)
        axes[0].set_xticks([1, 5], ["test recall@10", "test ndcg@10"])
        axes[0].set_title(f"{DATASETS[name]}: mean of seeds {seeds} (dots: each seed)\n(b) vs (a) N@10 "
                          f"{gain:+.1%} [{interval[0]:+.1%}, {interval[1]:+.1%}]", fontsize=9)
        axes[0].legend(fontsize=8)
        p50 = [latency[arm]["p50_ms"] for arm in ARMS]
        bars = axes[1].bar(range(3), p50, color=[colours[a] for a in ARMS])
        axes[1].bar_label(bars, fmt="%.2f ms", fontsize=8)
        axes[1].set_xticks(range(3), [f"({'abc'[i]}) {arm}" for i, arm in enumerate(ARMS)], fontsize=8)
        axes[1].set_ylabel("p50 per request, batch 1, 1 thread (ms)")
        axes[1].set_title(f"serving at a history of {serving_history:,} items ((b) includes its Feast read)",
                          fontsize=9)
        return fig

    save_result(f"long_history_{name}" + (f"_{tag}" if tag else ""), figures, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["synth_long"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--serving-users", type=int, default=50)
    parser.add_argument("--serving-history", type=int, default=10_000)
    parser.add_argument("--serving-repeats", type=int, default=4)
    parser.add_argument("--tag", default="", help="suffix of the result name (a variant, e.g. more tokens)")
    add_config_arguments(parser)
    args = parser.parse_args()
    for name in args.datasets:
        measure(Recipe.from_args(name, args), args.seeds, args.serving_users, args.serving_history,
                args.serving_repeats, args.tag)


if __name__ == "__main__":
    main()
