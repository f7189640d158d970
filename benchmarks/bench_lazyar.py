"""LazyAR against the KV-cached AR decoder: same size, same data, same codebook, one run.

Decode throughput (requests/s, batches of --batch requests, trie-constrained beam search) at beam
widths 16, 32 and 64 on every level, model FLOPs per request (torch's FlopCounterMode), and the
test Recall@10 / NDCG@10 of each over ALL users at each width. Throughputs are timed interleaved
(LazyAR, AR, LazyAR, AR, ...) and the best of --repeats is kept, so that other jobs on the shared
machine slow both alike; the ratio is the figure to read.

    nice python -m benchmarks.bench_lazyar --dataset beauty

Both models come from bench_quality's cache when it trained the same configuration.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    DATASETS,
    Recipe,
    add_config_arguments,
    load_average,
    prepare,
    test_figures,
    train_cached,
)
from benchmarks.harness import save_result
from genrec.model.artefact import TrainedModel
from genrec.model.beam import beam_search
from genrec.train.data import ExampleSet, evaluation_requests

WIDTHS = (16, 32, 64)
TOP_K = 10


def request_batches(requests: ExampleSet, count: int, batch: int, seed: int) -> list[torch.Tensor]:
    """A fixed random sample of test requests, cut into batches (each padded to its longest)."""
    pick = np.random.default_rng(seed).choice(len(requests), min(count, len(requests)), replace=False)
    out = []
    for start in range(0, len(pick), batch):
        index = pick[start:start + batch]
        longest = max(1, int(requests.lengths[index].max()))
        out.append(torch.as_tensor(requests.recent[index, :longest]))
    return out


@torch.inference_mode()
def decode_seconds(model: TrainedModel, batches: list[torch.Tensor], width: int) -> float:
    started = time.perf_counter()
    for recent in batches:
        beam_search(model.decoder, model.decoder.embed_context(recent), model.tables, [width], TOP_K)
    return time.perf_counter() - started


@torch.inference_mode()
def flops_per_request(model: TrainedModel, batch: torch.Tensor, width: int) -> float:
    with FlopCounterMode(display=False) as counter:
        beam_search(model.decoder, model.decoder.embed_context(batch), model.tables, [width], TOP_K)
    return counter.get_total_flops() / batch.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="beauty", choices=sorted(DATASETS))
    parser.add_argument("--requests", type=int, default=2048, help="requests timed per width and decoder")
    parser.add_argument("--batch", type=int, default=64, help="requests per decoding batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while decoding")
    add_config_arguments(parser)
    args = parser.parse_args()
    started_load = load_average()
    recipe = Recipe.from_args(args.dataset, args)
    configs = {"lazyar": recipe.config("model.decoder=lazyar"), "ar": recipe.config("model.decoder=ar")}
    prepared = prepare(args.dataset, configs["lazyar"])
    models = {kind: train_cached(prepared, config, f"[{kind}] ") for kind, config in configs.items()}
    torch.set_num_threads(args.threads)
    for model in models.values():
        model.decoder.eval()
    requests = evaluation_requests(prepared.splits, models["lazyar"].item_ids,
                                   models["lazyar"].decoder.config.recent_items, "test")
    batches = request_batches(requests, args.requests, args.batch, seed=0)
    timed = sum(len(b) for b in batches)
    figures: dict[str, Any] = {"dataset": DATASETS[args.dataset], "requests_timed": timed,
                               "batch": args.batch, "threads": args.threads, "top_k": TOP_K,
                               "parameters": {k: m.manifest["parameters"] for k, m in models.items()},
                               "layers": configs["ar"].model.layers,
                               "lazy_top_layers": configs["lazyar"].model.top_layers,
                               "train_minutes": {k: m.manifest["training"]["train_seconds"] / 60
                                                 for k, m in models.items()},
                               "widths": {}}
    for width in WIDTHS:
        for model in models.values():
            decode_seconds(model, batches[:2], width)  # warm-up
        best = {kind: float("inf") for kind in models}
        for _ in range(args.repeats):
            for kind, model in models.items():
                best[kind] = min(best[kind], decode_seconds(model, batches, width))
        row: dict[str, Any] = {}
        for kind, model in models.items():
            config = configs[kind]
            config.train.beam_widths = [width]
            quality = test_figures(model, prepared, config)
            row[kind] = {"requests_per_second": timed / best[kind],
                         "flops_per_request": flops_per_request(model, batches[0], width),
                         "recall@10": quality["recall@10"], "ndcg@10": quality["ndcg@10"],
                         "recall@5": quality["recall@5"]}
        row["speedup"] = row["lazyar"]["requests_per_second"] / row["ar"]["requests_per_second"]
        row["flops_ratio"] = row["ar"]["flops_per_request"] / row["lazyar"]["flops_per_request"]
        row["recall@10_relative_difference"] = (row["lazyar"]["recall@10"]
                                                / max(row["ar"]["recall@10"], 1e-12) - 1)
        figures["widths"][str(width)] = row
        print(f"width {width}: {row}", flush=True)
    figures["load_average_start_end"] = [started_load, load_average()]

    def plot() -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        x = np.arange(len(WIDTHS))
        for offset, kind in ((-0.2, "lazyar"), (0.2, "ar")):
            rows = [figures["widths"][str(w)][kind] for w in WIDTHS]
            left.bar(x + offset, [r["requests_per_second"] for r in rows], 0.4, label=kind)
            right.bar(x + offset, [r["recall@10"] for r in rows], 0.4, label=kind)
        labels = ((left, "requests / s (one run, interleaved)"), (right, "test Recall@10, all users"))
        for ax, label in labels:
            ax.set_xticks(x, [f"beam {w}" for w in WIDTHS])
            ax.set_ylabel(label)
            ax.legend()
        for i, w in enumerate(WIDTHS):
            left.text(i, 0, f"{figures['widths'][str(w)]['speedup']:.2f}x", ha="center", va="bottom")
        fig.suptitle(f"LazyAR vs AR, {DATASETS[args.dataset]}, {args.threads} thread(s)")
        return fig

    save_result("lazyar_speed", figures, plot)


if __name__ == "__main__":
    main()
