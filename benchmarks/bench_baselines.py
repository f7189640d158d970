"""The baselines on a data set's leave-one-out split (the same splits and catalogue bench_quality uses):
popularity, and an item-ID SASRec trained with the full softmax over the catalogue under a
wall-clock budget (`baselines.sasrec_minutes`), one run per seed. Valid and test targets of all
users, whole catalogue and with the user's own (context) items excluded. Writes
benchmarks/results/<name>.json (+ .png: the figures per model and protocol, and SASRec's loss).

    python -m benchmarks.bench_baselines --dataset beauty --seeds 0 1 2 [--set baselines.sasrec_minutes=60]

The published anchors on Beauty, and the protocol each uses, are recorded beside the figures.
"""

from __future__ import annotations

import argparse
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.common import DATASETS, Recipe, add_config_arguments, prepare
from benchmarks.harness import save_result
from genrec.baselines import PopularityBaseline, train_sasrec, user_sequences
from genrec.baselines.sasrec import sasrec_recommend
from genrec.evaluate import ranking_metrics
from genrec.train.data import evaluation_requests

SPLITS = ("valid", "test")
PROTOCOLS = {"whole_catalogue": False, "own_items_excluded": True}
CUTOFF = 10
EVAL_BATCH = 512
# Published figures on Beauty in TIGER's split (leave-one-out, test target of every user, whole
# catalogue: the candidates' own history items are not removed).
ANCHORS = {"TIGER": {"recall@10": 0.0648, "ndcg@10": 0.0384, "protocol": "whole_catalogue"},
           "ActionPiece": {"recall@10": 0.0775, "ndcg@10": 0.0424, "protocol": "whole_catalogue"},
           "RPG": {"recall@10": 0.0809, "ndcg@10": 0.0464, "protocol": "whole_catalogue"}}


def evaluate_all(recommend: Any, requests: dict[str, Any], items: int, exclude_last: int
                 ) -> dict[str, dict[str, float]]:
    """Metrics per split and protocol for a `recommend(requests, exclude_last) -> [n, K]`."""
    out = {}
    for split, examples in requests.items():
        for protocol, own in PROTOCOLS.items():
            exclude = exclude_last if own else 0
            out[f"{split}/{protocol}"] = ranking_metrics(recommend(examples, exclude), examples.targets,
                                                         examples.values, items)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="beauty")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--name", default=None, help="result name (default baselines_<dataset>)")
    add_config_arguments(parser)
    args = parser.parse_args()
    recipe = Recipe.from_args(args.dataset, args)
    config = recipe.config()
    prepared = prepare(args.dataset, config)
    item_ids = prepared.codebook.item_ids
    items = len(item_ids)
    baselines = config.baselines
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    requests = {split: evaluation_requests(prepared.splits, item_ids, baselines.sasrec_max_len, split)
                for split in SPLITS}
    popularity = PopularityBaseline.fit(prepared.splits, item_ids)
    # "Own items" are the generator's context (its last R items), so both protocols match bench_quality's.
    own_items = config.model.recent_items
    figures: dict[str, Any] = {
        "dataset": DATASETS[args.dataset], "items": items, "users": len(requests["test"]),
        "config": recipe.record(), "baselines_config": vars(baselines), "anchors": ANCHORS,
        "protocols": {"whole_catalogue": "every item may be recommended (the anchors' protocol)",
                      "own_items_excluded": "the request's last model.recent_items items (the generator's "
                                            "context, as bench_quality leaves out) are never recommended"},
        "popularity": evaluate_all(lambda ex, exclude: popularity.recommend(ex, CUTOFF, exclude), requests,
                                   items, own_items),
    }
    sequences = user_sequences(prepared.splits, item_ids, baselines.sasrec_max_len)
    runs = []
    for seed in args.seeds:
        run = train_sasrec(sequences, items, baselines, seed,
                           log=lambda line, s=seed: print(f"seed {s} {line}", flush=True))
        metrics = evaluate_all(lambda ex, exclude, m=run.model: sasrec_recommend(m, ex, CUTOFF, EVAL_BATCH,
                                                                                 exclude), requests, items,
                               own_items)
        runs.append({"seed": seed, "epochs": run.epochs, "steps": run.steps, "train_seconds": run.seconds,
                     "losses": run.losses, "metrics": metrics})
        test = metrics["test/whole_catalogue"]
        print(f"seed {seed}: test R@10 {test['recall@10']:.4f} N@10 {test['ndcg@10']:.4f} "
              f"({run.epochs} epochs, {run.seconds / 60:.1f} min)", flush=True)
    figures["sasrec_runs"] = runs
    figures["sasrec_mean"] = {key: {metric: float(np.mean([r["metrics"][key][metric] for r in runs]))
                                    for metric in ("recall@10", "ndcg@10", "recall@5", "ndcg@5")}
                              for key in runs[0]["metrics"]}

    def plot() -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        labels = [f"{split}\n{protocol.replace('_', ' ')}" for split in SPLITS for protocol in PROTOCOLS]
        keys = [f"{split}/{protocol}" for split in SPLITS for protocol in PROTOCOLS]
        x = np.arange(len(keys))
        for offset, (name, values) in enumerate((("popularity", figures["popularity"]),
                                                 ("SASRec (mean of seeds)", figures["sasrec_mean"]))):
            left.bar(x + 0.38 * offset, [values[k]["ndcg@10"] for k in keys], width=0.38, label=name)
        for anchor, data in ANCHORS.items():
            left.axhline(data["ndcg@10"], ls=":", lw=1, color="grey")
            left.text(len(keys) - 0.5, data["ndcg@10"], anchor, fontsize=7, va="bottom", ha="right")
        left.set_xticks(x + 0.19, labels, fontsize=7)
        left.set_ylabel("NDCG@10")
        left.legend(fontsize=7)
        for run in runs:
            right.plot(range(1, len(run["losses"]) + 1), run["losses"], label=f"seed {run['seed']}")
        right.set_xlabel("epoch")
        right.set_ylabel("SASRec training loss (full softmax)")
        right.legend(fontsize=7)
        fig.suptitle(f"baselines on {DATASETS[args.dataset]} (leave-one-out, all users)")
        return fig

    save_result(args.name or f"baselines_{args.dataset}", figures, plot)


if __name__ == "__main__":
    main()
