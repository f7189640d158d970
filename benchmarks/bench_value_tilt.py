"""How much Value@10 a plain value tilt of the VSL model's own candidates buys, and at what NDCG@10.

Each user's top `--pool` items (trie-constrained beam of that width) are re-ranked by
log pi(y) + alpha * log(value(y)) for every alpha of `--alphas`; alpha 0 is the VSL ranking itself.
Valid and test targets of all users, the same protocol as bench_rspo. It asks whether the RSPO target
(Value@10 +5% with NDCG@10 at most 2% lower) can be reached by re-ordering what the VSL model already
proposes, and at which tilt; no training. Writes benchmarks/results/value_tilt_<dataset>.json + .png.

    nice python -m benchmarks.bench_value_tilt --datasets movielens --set train.threads=1
"""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.common import (
    DATASETS,
    RSPO_TARGET_NDCG_LOSS,
    RSPO_TARGET_VALUE_GAIN,
    SHARED,
    Recipe,
    add_config_arguments,
    cached_model,
    prepare,
)
from benchmarks.harness import save_result
from genrec.evaluate import ranking_metrics, recommend
from genrec.model.value_tilt import item_value_table
from genrec.train.data import evaluation_requests

SPLITS = ("valid", "test")
HEADLINE = ("recall@10", "ndcg@10", "value@10")
CUTOFF = 10


def tilted(items: np.ndarray, scores: np.ndarray, values: np.ndarray, alpha: float) -> np.ndarray:
    """The top CUTOFF of each row after adding alpha * log(value); padding (-1) stays last."""
    logv = np.log(np.maximum(values[np.maximum(items, 0)], np.finfo(float).tiny))
    key = np.where(items >= 0, scores + alpha * logv, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")[:, :CUTOFF]
    return np.take_along_axis(items, order, axis=1)


def measure(recipe: Recipe, pool: int, alphas: list[float], allow_train: bool) -> None:
    name = recipe.dataset
    config = recipe.config()
    prepared = prepare(name, config)
    model = cached_model(prepared, config, allow_train)
    values = item_value_table(prepared.splits, model.item_ids)
    rows: dict[str, list[dict[str, float]]] = {}
    for split in SPLITS:
        recent = model.decoder.config.recent_items
        requests = evaluation_requests(prepared.splits, model.item_ids, recent, split)
        items, scores = recommend(model.decoder, requests, model.tables, [pool], pool,
                                  config.train.eval_batch_size)
        rows[split] = []
        for alpha in alphas:
            figures = ranking_metrics(tilted(items, scores, values, alpha), requests.targets, requests.values,
                                      model.decoder.item_codes.shape[0], cutoffs=(CUTOFF,))
            rows[split].append({"alpha": alpha, **{k: figures[k] for k in HEADLINE}})
        base = rows[split][0]
        for row in rows[split]:
            row["relative"] = {k: row[k] / base[k] - 1.0 if base[k] else float("nan") for k in HEADLINE}
            row["meets_rspo_target"] = (row["relative"]["value@10"] >= RSPO_TARGET_VALUE_GAIN
                                        and row["relative"]["ndcg@10"] >= -RSPO_TARGET_NDCG_LOSS)
            print(f"[{name} {split}] alpha {row['alpha']:.2f}: " + " ".join(
                f"{k} {row[k]:.4f} ({row['relative'][k]:+.1%})" for k in HEADLINE), flush=True)

    def plot() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for split, marker in zip(SPLITS, "os"):
            x = [100 * row["relative"]["ndcg@10"] for row in rows[split]]
            y = [100 * row["relative"]["value@10"] for row in rows[split]]
            ax.plot(x, y, marker=marker, label=split)
            for row, xi, yi in zip(rows[split], x, y):
                ax.annotate(f"{row['alpha']:g}", (xi, yi), fontsize=7)
        ax.axhline(100 * RSPO_TARGET_VALUE_GAIN, color="#999", ls="--", lw=0.8)
        ax.axvline(-100 * RSPO_TARGET_NDCG_LOSS, color="#999", ls="--", lw=0.8)
        ax.set_xlabel("NDCG@10 change vs VSL (%)")
        ax.set_ylabel("Value@10 change vs VSL (%)")
        ax.set_title(f"{DATASETS[name]}: VSL top-{pool} re-ranked by log p + alpha log value")
        ax.legend()
        fig.tight_layout()
        return fig

    save_result(f"value_tilt_{name}", {"dataset": DATASETS[name], "pool": pool, "cutoff": CUTOFF,
                                       "protocol": "leave-one-out; all users; full catalogue",
                                       "value_source": prepared.value_source, "rows": rows,
                                       **recipe.record()}, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["movielens"], choices=sorted(DATASETS))
    add_config_arguments(parser)
    parser.add_argument("--pool", type=int, default=40, help="beam width and candidates re-ranked per user")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    parser.add_argument("--allow-train", action="store_true", help="train a missing VSL model into the cache")
    args = parser.parse_args()
    if args.pool < CUTOFF:
        parser.error(f"--pool must be at least {CUTOFF} (the cutoff re-ranked into)")
    if not args.alphas or args.alphas[0] != 0.0:
        parser.error("--alphas must start with 0 (the VSL ranking every other tilt is compared with)")
    for name in args.datasets:
        if name != "movielens" and not SHARED.is_dir():
            print(f"skipping {name}: {SHARED} is absent")
            continue
        measure(Recipe.from_args(name, args), args.pool, args.alphas, args.allow_train)


if __name__ == "__main__":
    main()
