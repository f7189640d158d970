"""Leave-one-out evaluation of every user as batch inference over the partitioned splits, on Ray.

`genrec.evaluate.evaluate` scores every user in one process, from splits held whole in memory. Here
each bucket of users (all of a user's rows sit in one bucket) is a Ray task: it reads its bucket,
builds the valid and test requests, runs the same beam search with the same model (loaded once per
worker process), and returns sums, not lists: per cutoff the sum of each user's recall, NDCG and
value terms, and the catalogue rows shown in some top-K. The driver adds the sums, so what it holds
is a few numbers and one boolean per catalogue row, whatever the number of users. The metrics are
those of `evaluate` (`tests/test_evaluate_buckets.py` holds them equal).

On a cluster the tasks run on the RayCluster's workers; the model folder is copied to a staging
folder under `ray.shared_dir` that they mount.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec.config import GenrecConfig
from genrec.data.partitioned import Partitioning, read_bucket, read_partitioning
from genrec.distributed import RaySession
from genrec.evaluate import CUTOFFS, hit_ranks, recommend, user_terms
from genrec.model.artefact import TrainedModel, load_model
from genrec.train.data import evaluation_requests, item_lookup

SPLITS = ("valid", "test")


@dataclass
class MetricSums:
    """What a share of the users adds to the metrics: their count, the sums of their per-user terms,
    and per cutoff which catalogue rows appeared in one of their top-K lists."""

    users: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    shown: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, recommended: np.ndarray, targets: np.ndarray, values: np.ndarray, catalogue_size: int,
           cutoffs: Sequence[int] = CUTOFFS) -> MetricSums:
        ranks = hit_ranks(recommended, targets)
        out = cls(users=len(targets))
        for k in cutoffs:
            for name, terms in user_terms(ranks, values, k).items():
                out.sums[name] = float(terms.sum())
            rows = recommended[:, :k]
            shown = np.zeros(catalogue_size, dtype=bool)
            shown[rows[rows >= 0]] = True
            out.shown[k] = shown
        return out

    def add(self, other: MetricSums) -> MetricSums:
        if not self.shown:
            return other
        if not other.shown:
            return self
        return MetricSums(self.users + other.users,
                          {name: self.sums[name] + other.sums[name] for name in self.sums},
                          {k: self.shown[k] | other.shown[k] for k in self.shown})

    def metrics(self, catalogue_size: int, cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
        """The figures `genrec.evaluate.ranking_metrics` reports, from the sums."""
        out: dict[str, float] = {"users": float(self.users)}
        for k in cutoffs:
            for name in (f"recall@{k}", f"ndcg@{k}", f"value@{k}"):
                out[name] = self.sums.get(name, 0.0) / self.users if self.users else 0.0
            shown = self.shown.get(k)
            out[f"coverage@{k}"] = float(shown.sum() / max(catalogue_size, 1)) if shown is not None else 0.0
        return out


@dataclass(frozen=True)
class BucketTask:
    splits: str
    # Read once by the driver: a task then opens only its part, which is where the workers can see
    # it (on the shared volume, with a cluster), not the step's own artefact folder.
    partitioning: Partitioning
    bucket: int
    model: str
    beam_widths: tuple[int, ...]
    top_k: int
    batch_size: int
    exclude_history: bool
    threads: int


@functools.lru_cache(maxsize=1)
def _model(path: str) -> TrainedModel:
    # A worker scores many buckets: the model is loaded once per worker process.
    return load_model(path)


def evaluate_bucket(task: BucketTask) -> dict[str, MetricSums]:
    """One bucket's users, scored for every split."""
    import torch

    if task.threads:
        torch.set_num_threads(task.threads)
    trained = _model(task.model)
    frame = read_bucket(task.splits, task.bucket, partitioning=task.partitioning)
    catalogue = trained.decoder.item_codes.shape[0]
    out = {}
    item_index = item_lookup(trained.item_ids)
    for split in SPLITS:
        requests = evaluation_requests(frame, item_index, trained.decoder.config.recent_items, split)
        items, _ = recommend(trained.decoder, requests, trained.tables, task.beam_widths, task.top_k,
                             task.batch_size, exclude_history=task.exclude_history,
                             value_tilt=trained.value_tilt)
        out[split] = MetricSums.of(items, requests.targets, requests.values, catalogue)
    return out


def evaluate_partitioned(config: GenrecConfig, splits_dir: str | Path, model_dir: str | Path
                         ) -> dict[str, dict[str, float]]:
    """Valid and test metrics of the model in `model_dir` on every user of the partitioned splits,
    a Ray task per bucket; as `genrec.evaluate.evaluate` on each split read whole."""
    train = config.train
    if train.top_k < max(CUTOFFS):
        raise ValueError(f"train.top_k {train.top_k} is below the largest cutoff {max(CUTOFFS)}")
    trained = load_model(model_dir)
    if trained.decoder.summary_dim:
        raise ValueError("a model that reads summary tokens is evaluated in one process "
                         "(train.evaluate_engine: process): its summaries come from the feature store")
    catalogue = trained.decoder.item_codes.shape[0]
    partitioning = read_partitioning(splits_dir)
    totals = {split: MetricSums() for split in SPLITS}
    with RaySession.open(config.ray) as session, session.staging(model_dir, "model") as staging:
        model = Path(model_dir).resolve()
        if not session.embedded:  # the cluster's workers see the shared volume, not this pod
            model = staging / "model"
            shutil.copytree(model_dir, model)
        tasks = [BucketTask(str(Path(splits_dir).resolve()), partitioning, bucket, str(model),
                            tuple(train.beam_widths), train.top_k, train.eval_batch_size,
                            train.exclude_history, train.threads)
                 for bucket in range(partitioning.buckets)]
        for _, sums in session.imap(evaluate_bucket, tasks, "evaluate: score every user, bucket by bucket"):
            for split in SPLITS:
                totals[split] = totals[split].add(sums[split])
    return {split: totals[split].metrics(catalogue) for split in SPLITS}
