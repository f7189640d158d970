"""DARE against exact beam search, in one run, on the Beauty LazyAR model (bench_quality's cache):
decoder passes per request, p50 latency at batch 1, Recall@10 on the test target, and the overlap of
the two top-10 lists. Writes benchmarks/results/dare.json (+ .png).

    nice python -m benchmarks.bench_dare [--users 1000] [--set serving.dare_drafts=4 ...]

The retrieval pool is built from the training split only (clusters of users by the model's history
vector). Requests alternate exact / DARE relaxed / DARE strict per user, so the three see the same
machine load. "Passes" counts the prefix-dependent decoder passes (beam steps, or verify passes);
the per-request context pass (`decoder.start`) is the same for all and is reported separately.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.common import CACHE, cache_key, prepare, run_config, train_cached
from benchmarks.harness import save_result
from genrec.config import GenrecConfig
from genrec.model.beam import beam_search
from genrec.serving.model import build_pool_from_frame
from genrec.serving.speculative import RetrievalPool, cluster_of_requests, dare_beam_search
from genrec.train.data import evaluation_requests

TOP_K = 10


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    args = parser.parse_args()
    torch.set_num_threads(1)  # batch-1 latency on one core, as the predictor decodes
    serving = GenrecConfig().with_overrides(args.set).serving
    config = run_config("beauty", [])
    prepared = prepare("beauty", config)
    model = train_cached(prepared, config)
    decoder, tables = model.decoder, model.tables
    widths = list(serving.beam_ladder[serving.default_rung])
    load_start = load_average()

    pool_key = cache_key(serving.dare_clusters, serving.dare_drafts, serving.max_beam_width)
    pool_path = CACHE / f"dare-pool-beauty-{pool_key}.npz"
    codes = decoder.item_codes.cpu().numpy()
    started = time.perf_counter()
    if pool_path.is_file():
        pool = RetrievalPool.load(pool_path, codes)
    else:
        train = prepared.splits[prepared.splits["split"] == "train"]
        pool_config = GenrecConfig()
        pool_config.serving = serving
        pool = build_pool_from_frame(model, train, pool_config)
        pool.save(pool_path)
    pool_seconds = time.perf_counter() - started

    requests = evaluation_requests(prepared.splits, model.item_ids, decoder.config.recent_items, "test")
    chosen = np.random.default_rng(config.seed).choice(len(requests), size=min(args.users, len(requests)),
                                                      replace=False)
    sample = requests.subset(np.sort(chosen))
    recent = torch.as_tensor(sample.recent)
    runs: dict[str, dict[str, list[float]]] = {name: {"ms": [], "passes": [], "hit": [], "overlap": []}
                                               for name in ("exact", "dare", "dare_strict")}
    # The floor of any drafting scheme: the context pass plus ONE verify pass over the W sequences
    # that the last level's W beams need, with no drafting or bookkeeping at all.
    floor_ms: list[float] = []
    floor_rows = torch.zeros(widths[-1], dtype=torch.long)
    floor_codes = decoder.item_codes[:widths[-1]]
    drafted = accepted = 0
    start_ms = []
    with torch.inference_mode():
        for i in range(len(sample)):
            row = recent[i:i + 1]
            target = int(sample.targets[i])
            t0 = time.perf_counter()
            context = decoder.embed_context(row)
            decoder.start(context)
            start_ms.append((time.perf_counter() - t0) * 1000)

            t0 = time.perf_counter()
            exact = beam_search(decoder, decoder.embed_context(row), tables, widths, TOP_K)
            runs["exact"]["ms"].append((time.perf_counter() - t0) * 1000)
            runs["exact"]["passes"].append(decoder.levels)
            exact_items = exact.items[0].tolist()
            runs["exact"]["hit"].append(target in exact_items)
            runs["exact"]["overlap"].append(1.0)

            t0 = time.perf_counter()
            decoder.verify(decoder.start(decoder.embed_context(row)), floor_rows, floor_codes)
            floor_ms.append((time.perf_counter() - t0) * 1000)

            for name, strict in (("dare", False), ("dare_strict", True)):
                t0 = time.perf_counter()
                context = decoder.embed_context(row)
                clusters = cluster_of_requests(pool, decoder, row, None)
                result, stats = dare_beam_search(decoder, context, tables, widths, TOP_K, pool,
                                                 clusters.tolist(), serving.dare_drafts, serving.dare_top_k,
                                                 serving.dare_min_prob, strict=strict)
                runs[name]["ms"].append((time.perf_counter() - t0) * 1000)
                runs[name]["passes"].append(stats.passes[0])
                items = result.items[0].tolist()
                runs[name]["hit"].append(target in items)
                runs[name]["overlap"].append(len(set(items) & set(exact_items)) / TOP_K)
                if not strict:
                    drafted += stats.draft_tokens
                    accepted += stats.accepted_tokens

    def summary(name: str) -> dict[str, float]:
        run = runs[name]
        return {"passes_per_request": float(np.mean(run["passes"])),
                "passes_per_request_with_context_pass": float(np.mean(run["passes"])) + 1,
                "p50_ms": float(np.median(run["ms"])), "p90_ms": float(np.percentile(run["ms"], 90)),
                "recall@10": float(np.mean(run["hit"])),
                "overlap@10_with_exact": float(np.mean(run["overlap"]))}

    exact_s, dare_s, strict_s = summary("exact"), summary("dare"), summary("dare_strict")
    recall_rel = (dare_s["recall@10"] - exact_s["recall@10"]) / max(exact_s["recall@10"], 1e-12)
    figures: dict[str, Any] = {
        "model": "amazon-beauty LazyAR (bench_quality cache)",
        "users": len(sample),
        "beam_widths": widths,
        "levels": decoder.levels,
        "dare": {"drafts_per_beam": serving.dare_drafts, "top_k": serving.dare_top_k,
                 "min_prob": serving.dare_min_prob, "clusters": pool.clusters, "pool_mode": pool.mode,
                 "pool_seconds": pool_seconds},
        "exact": exact_s,
        "dare_relaxed": dare_s,
        "dare_strict": strict_s,
        "context_pass_p50_ms": float(np.median(start_ms)),
        "single_pass_floor": {
            "what": "context pass + one verify pass over the last level's W sequences: the latency of "
                    "a drafting scheme that always finished in one pass with no bookkeeping",
            "p50_ms": float(np.median(floor_ms)),
            "p50_speedup_vs_exact": exact_s["p50_ms"] / float(np.median(floor_ms))},
        "acceptance_rate": accepted / max(drafted, 1),
        "pass_reduction": exact_s["passes_per_request"] / dare_s["passes_per_request"],
        "p50_speedup": exact_s["p50_ms"] / dare_s["p50_ms"],
        "recall@10_relative_change": recall_rel,
        "targets": {"pass_reduction>=2": exact_s["passes_per_request"] / dare_s["passes_per_request"] >= 2,
                    "p50_speedup>=1.5": exact_s["p50_ms"] / dare_s["p50_ms"] >= 1.5,
                    "recall_within_2pct": abs(recall_rel) <= 0.02},
        "load_average_start_end": [load_start, load_average()],
        "torch_threads": torch.get_num_threads(),
    }

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
        names = ["exact", "DARE relaxed", "DARE strict"]
        stats = [exact_s, dare_s, strict_s]
        for ax, key, title in zip(axes, ("passes_per_request", "p50_ms", "recall@10"),
                                  ("decoder passes / request", "p50 latency, batch 1 (ms)",
                                   "Recall@10 (test)")):
            ax.bar(names, [s[key] for s in stats], color=["#999", "#36c", "#6a6"])
            ax.set_title(title)
            ax.tick_params(axis="x", labelsize=8)
        fig.suptitle(f"DARE vs exact beam search, Beauty, widths {widths}, {len(sample)} users")
        return fig

    save_result("dare", figures, plot)


if __name__ == "__main__":
    main()
