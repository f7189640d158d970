"""VISTA cost: what a request costs with a cached summary, against target attention over the raw history.

For histories of 100, 10k, 100k and 1M items, measured in one run with the same item table:
- summary scorer: a candidate set scored by target attention to the K cached summary tokens (what
  serving does after one online-store read) — its cost depends on K, not on the history;
- full target attention: every candidate attends over the raw history (keys and values projected
  per request, chunked with an online softmax so memory stays bounded) — cost grows with length.
Plus the summariser's own throughput (history items/s) and its peak extra memory at each length,
each length probed in a fresh process so that the peak resident size belongs to that length alone.

    python -m benchmarks.bench_vista [--candidates 100] [--lengths 100 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks.harness import save_result
from genrec.config import VistaConfig
from genrec.vista.model import SummarizerShape, VistaSummarizer

LENGTHS = (100, 10_000, 100_000, 1_000_000)
# Enough reps for a stable median where a request takes microseconds, few where it takes seconds.
REQUEST_BUDGET_SECONDS = 3.0
MIN_REPS, MAX_REPS = 3, 2000
KIB = 1024
SCORER_ROUNDS, SCORER_WARMUP = 3000, 100


def build_model(items: int, seed: int) -> VistaSummarizer:
    torch.manual_seed(seed)
    return VistaSummarizer(SummarizerShape.from_config(VistaConfig(), items)).eval()


def timed(fn: Any) -> list[float]:
    """Per-call seconds of `fn`, repeated within the time budget (after one warm-up call)."""
    fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < MIN_REPS or (spent < REQUEST_BUDGET_SECONDS and len(times) < MAX_REPS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return times


@torch.no_grad()
def full_target_attention(model: VistaSummarizer, history: torch.Tensor, candidates: torch.Tensor,
                          chunk_size: int) -> torch.Tensor:
    """The raw-history baseline: each candidate attends over every history item (online softmax over
    chunks), then is scored against the attended vector. O(candidates x history x d)."""
    emb = model.item_embedding(candidates)
    query = model.target_query(emb) / math.sqrt(model.shape.dim)  # [C, d]
    running_max = torch.full((len(candidates),), -math.inf)
    numerator = torch.zeros(len(candidates), model.shape.dim)
    denominator = torch.zeros(len(candidates))
    for start in range(0, len(history), chunk_size):
        items = model.item_embedding(history[start:start + chunk_size])
        logits = query @ model.key(items).T  # [C, chunk]
        new_max = torch.maximum(running_max, logits.amax(dim=1))
        rescale = torch.exp(running_max - new_max)
        weights = torch.exp(logits - new_max[:, None])
        numerator = numerator * rescale[:, None] + weights @ model.value(items)
        denominator = denominator * rescale + weights.sum(dim=1)
        running_max = new_max
    return ((numerator / denominator[:, None]) * emb).sum(dim=1)


def memory_probe(length: int, items: int, seed: int) -> dict[str, float]:
    """Run in a fresh process: summarise one history of `length` items; extra peak RSS and speed."""
    torch.set_num_threads(1)
    model = build_model(items, seed)
    history = torch.randint(1, items + 1, (length,))
    chunk = VistaConfig().chunk_size
    with torch.no_grad():
        model.summarize(history[:chunk], chunk)  # allocator and kernels warm, baseline includes them
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        model.summarize(history, chunk)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"length": length, "seconds": seconds, "items_per_second": length / seconds,
            "extra_peak_mib": (peak - baseline) / KIB, "peak_rss_mib": peak / KIB,
            "history_mib": history.numel() * 8 / KIB / KIB}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=100, help="candidate items scored per request")
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)  # internal: one memory probe
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(memory_probe(args.probe, args.items, args.seed)))
        return

    torch.set_num_threads(args.threads)
    model = build_model(args.items, args.seed)
    chunk = VistaConfig().chunk_size
    candidates = torch.randint(1, args.items + 1, (args.candidates,))
    histories = {length: torch.randint(1, args.items + 1, (length,)) for length in args.lengths}
    with torch.no_grad():
        summaries = {length: model.summarize(h, chunk)[None] for length, h in histories.items()}  # cached
        # The summary scorer's lengths are timed round-robin, so that machine noise (shared CPUs)
        # falls on all of them alike; its cost should not depend on the length at all.
        summary_times: dict[int, list[float]] = {length: [] for length in args.lengths}
        for _ in range(SCORER_ROUNDS):
            for length, summary in summaries.items():
                start = time.perf_counter()
                model.score(summary, candidates)
                summary_times[length].append(time.perf_counter() - start)
    rows: list[dict[str, Any]] = []
    for length, history in histories.items():
        full_times = timed(lambda h=history: full_target_attention(model, h, candidates, chunk))
        times = summary_times[length][SCORER_WARMUP:]
        rows.append({"history": length,
                     "summary_scorer_ms": 1e3 * statistics.median(times),
                     "summary_scorer_p99_ms": 1e3 * float(np.percentile(times, 99)),
                     "full_attention_ms": 1e3 * statistics.median(full_times),
                     "summary_reps": len(times), "full_reps": len(full_times)})
        print(rows[-1], flush=True)

    probes = []
    for length in args.lengths:
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_vista", "--probe", str(length),
                              "--items", str(args.items), "--seed", str(args.seed)],
                             capture_output=True, text=True, check=True)
        probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(probes[-1], flush=True)

    shortest, longest = rows[0], rows[-1]
    cfg = VistaConfig()
    figures = {
        "summary_tokens": cfg.summary_tokens, "dim": cfg.dim, "heads": cfg.heads, "chunk_size": chunk,
        "candidates_per_request": args.candidates, "catalogue_items": args.items, "threads": args.threads,
        "requests": rows,
        "summary_scorer_ratio_longest_to_shortest":
            longest["summary_scorer_ms"] / shortest["summary_scorer_ms"],
        "full_attention_ratio_longest_to_shortest":
            longest["full_attention_ms"] / shortest["full_attention_ms"],
        "full_over_summary_at_longest": longest["full_attention_ms"] / longest["summary_scorer_ms"],
        "summarizer": probes,
        "summarizer_items_per_second_at_longest": probes[-1]["items_per_second"],
        "summarizer_extra_peak_mib_at_longest": probes[-1]["extra_peak_mib"],
        "target": "summary scorer ratio 1M/100 <= 1.2",
        "note": "timings from one run on a shared 2-core machine; compare ratios, not absolute times",
    }

    def plot():  # type: ignore[no-untyped-def]
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.6))
        latency, memory = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        lengths = [r["history"] for r in rows]
        latency.loglog(lengths, [r["full_attention_ms"] for r in rows], marker="o",
                       label="target attention over the raw history")
        latency.loglog(lengths, [r["summary_scorer_ms"] for r in rows], marker="o",
                       label=f"target attention to K={cfg.summary_tokens} summary tokens")
        latency.set_xlabel("history length (items)")
        latency.set_ylabel(f"ms per request ({args.candidates} candidates)")
        latency.legend(fontsize=8)
        memory.semilogx([p["length"] for p in probes], [p["extra_peak_mib"] for p in probes], marker="o",
                        label="summariser extra peak RSS")
        memory.semilogx([p["length"] for p in probes], [p["history_mib"] for p in probes], marker="o",
                        label="the history itself (int64)")
        memory.set_xlabel("history length (items)")
        memory.set_ylabel("MiB")
        memory.legend(fontsize=8)
        return fig

    save_result("vista_cost", figures, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
