"""The pipeline's baselines step: popularity and SASRec fitted on the training split and evaluated as
the evaluate step evaluates the candidate (valid and test targets of all users, the whole catalogue,
or without the user's own items when `train.exclude_history` is on)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from genrec.baselines.popularity import PopularityBaseline
from genrec.baselines.sasrec import sasrec_recommend, train_sasrec, user_sequences
from genrec.config import GenrecConfig
from genrec.evaluate import ranking_metrics
from genrec.train.data import evaluation_requests

BASELINES = ("popularity", "sasrec")
SPLITS = ("valid", "test")


def evaluate_baselines(config: GenrecConfig, splits: pd.DataFrame, item_ids: np.ndarray,
                       log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """{baseline: {"<split>_<metric>": value}}, the names the evaluate step gives the candidate's."""
    top_k = config.train.top_k
    # The same items the candidate's evaluation leaves out: its context, the model's last R items.
    exclude = config.model.recent_items if config.train.exclude_history else 0
    baselines = config.baselines
    items = len(item_ids)
    popularity = PopularityBaseline.fit(splits, item_ids)
    run = train_sasrec(user_sequences(splits, item_ids, baselines.sasrec_max_len), items, baselines,
                       config.seed, log=log)
    log(f"sasrec: {run.epochs} epochs, {run.steps} steps in {run.seconds:.0f} s")
    out: dict[str, dict[str, float]] = {name: {} for name in BASELINES}
    for split in SPLITS:
        requests = evaluation_requests(splits, item_ids, baselines.sasrec_max_len, split)
        lists = {"popularity": popularity.recommend(requests, top_k, exclude),
                 "sasrec": sasrec_recommend(run.model, requests, top_k, config.train.eval_batch_size,
                                            exclude)}
        for name, recommended in lists.items():
            figures = ranking_metrics(recommended, requests.targets, requests.values, items)
            out[name].update({f"{split}_{metric}": value for metric, value in figures.items()})
    return out


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"<baseline>_<split>_<metric>": value}: what the baselines step logs, and the evaluate step
    and the gate read back."""
    return {f"{name}_{key}": value for name, figures in results.items() for key, value in figures.items()}


def nested_metrics(flat: dict[str, float]) -> dict[str, dict[str, float]]:
    """The inverse of `flat_metrics`."""
    out: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        name, _, rest = key.partition("_")
        if name in BASELINES and rest:
            out.setdefault(name, {})[rest] = value
    return out


def compare_with(config: GenrecConfig, candidate: dict[str, float], baselines_path: str | None
                 ) -> dict[str, dict[str, float]]:
    """{model: figures} for the evaluate step's side-by-side report: the candidate, each baseline (from
    the baselines step's metrics file, when there is one), and the model deployed in the local
    registry (when `deploy.target` is local and one is)."""
    import json
    from pathlib import Path

    compared: dict[str, dict[str, float]] = {"candidate": candidate}
    if baselines_path is not None and Path(baselines_path).is_file():
        compared.update(nested_metrics(json.loads(Path(baselines_path).read_text())))
    if config.deploy.target == "local":
        from genrec.deploy.registry import LocalRegistry

        current = LocalRegistry(config.deploy.registry_dir).current()
        if current is not None and current.metrics:
            compared["deployed"] = {k: float(v) for k, v in current.metrics.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return compared


def baseline_figures(compared: dict[str, dict[str, float]]) -> dict[str, float]:
    """The baselines of `compare_with`'s answer as the evaluate step logs them for the gate:
    {"baseline_<name>_<split>_<metric>": value}."""
    from genrec.deploy.gate import BASELINE_PREFIX

    return {f"{BASELINE_PREFIX}{name}_{key}": value for name, figures in compared.items() if name in BASELINES
            for key, value in figures.items()}
