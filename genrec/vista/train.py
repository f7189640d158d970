"""Training the summariser on the TRAINING interactions only (split == "train").

Every position p >= 1 of a training sequence is a next-item example: the summary of items[:p] must
score items[p] above sampled negatives by target attention (the next-item loss), and must score
items drawn from items[:p] above the same negatives (the reconstruction loss: the summary has to
keep its history's bag of items recoverable). All prefixes of a sequence are summarised at once by
cumulative sums, so an epoch costs O(total sequence length).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from genrec.config import GenrecConfig, VistaConfig
from genrec.data.schema import SPLIT_COLUMN
from genrec.io import atomic_path
from genrec.vista.data import ItemVocab, UserSequences, time_ordered
from genrec.vista.model import SummarizerShape, VistaSummarizer


@dataclass
class TrainedSummarizer:
    """A summariser with the vocabulary it was trained on: what the model artefact holds."""

    model: VistaSummarizer
    vocab: ItemVocab
    config: VistaConfig
    metrics: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        payload = {
            "shape": self.model.shape.to_dict(),
            "state_dict": self.model.state_dict(),
            "item_ids": self.vocab.item_ids,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "metrics": self.metrics,
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | Path) -> TrainedSummarizer:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        model = VistaSummarizer(SummarizerShape(**payload["shape"]))
        model.load_state_dict(payload["state_dict"])
        model.eval()
        config = VistaConfig(**json.loads(payload["config"]))
        return cls(model, ItemVocab(list(payload["item_ids"])), config, dict(payload["metrics"]))

    @torch.no_grad()
    def summarize(self, item_ids: list[str] | pd.Series) -> np.ndarray:
        """Summary [K, d] (float32) of one history given as item ids in time order."""
        items = torch.from_numpy(self.vocab.encode(item_ids))
        return self.model.summarize(items, self.config.chunk_size).numpy()


@dataclass
class EpochLog:
    epoch: int
    loss: float
    next_item_loss: float
    reconstruction_loss: float
    seconds: float


@dataclass
class TrainingResult:
    summarizer: TrainedSummarizer
    epochs: list[EpochLog]
    metrics: dict[str, float]
    # Rank of each validation target under the summary scorer (for the report's histogram).
    valid_ranks: np.ndarray


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Sets torch's intra-op threads for a block (0 keeps the current setting)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SummarizerTrainer:
    """Fits a `VistaSummarizer` to training sequences; `fit` may be called once."""

    def __init__(self, config: VistaConfig, vocab: ItemVocab) -> None:
        self.config = config
        self.vocab = vocab
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model = VistaSummarizer(SummarizerShape.from_config(config, len(vocab)))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)

    def fit(self, train: UserSequences) -> list[EpochLog]:
        cfg = self.config
        trainable = np.flatnonzero(train.lengths >= 2)  # one history item and one target at least
        batches = self._length_buckets(train, trainable)
        total_steps = cfg.epochs * len(batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: max(0.0, 1.0 - step / max(total_steps, 1)))  # linear decay to 0
        logs = []
        self.model.train()
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            totals = np.zeros(3)
            for batch in self.rng.permutation(len(batches)):
                items = torch.from_numpy(train.padded(batches[batch], cfg.train_max_history))
                next_loss, reconstruction = self._losses(items)
                loss = next_loss + cfg.reconstruction_weight * reconstruction
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                schedule.step()
                totals += [loss.item(), next_loss.item(), reconstruction.item()]
            totals /= max(len(batches), 1)
            mean_loss, mean_next, mean_reconstruction = (float(v) for v in totals)
            logs.append(EpochLog(epoch + 1, mean_loss, mean_next, mean_reconstruction,
                                 time.perf_counter() - start))
        self.model.eval()
        return logs

    def _length_buckets(self, train: UserSequences, users: np.ndarray) -> list[np.ndarray]:
        """Batches of users of similar length: padding, and so wasted work, stays small."""
        ordered = users[np.argsort(train.lengths[users], kind="stable")]
        size = self.config.batch_size
        return [ordered[i:i + size] for i in range(0, len(ordered), size)]

    def _positions(self, lengths: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to `positions_per_user` distinct positions p in [1, length_b - 1] per sequence: all of
        them for short sequences, a uniform sample without replacement for long ones. Returns the
        positions [B, P] and which of them are real (every sequence has at least two items)."""
        per_user = min(self.config.positions_per_user, length - 1)
        candidates = torch.arange(1, length)[None, :]
        keys = torch.rand(lengths.shape[0], length - 1).masked_fill(candidates >= lengths[:, None], 2.0)
        positions = keys.argsort(dim=1)[:, :per_user] + 1  # past-the-end positions sort last
        real = positions < lengths[:, None]
        return positions.masked_fill(~real, 1), real

    def _losses(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        lengths = (items != 0).sum(dim=1)
        positions, real = self._positions(lengths, items.shape[1])
        # The summary of items[:p] predicts items[p].
        summaries = self.model.prefix_summaries(items, positions)[real]  # [M, K, d]
        targets = items.gather(1, positions)[real]
        prefix_lengths = positions[real]
        negatives = torch.randint(1, len(self.vocab) + 1, (cfg.negatives,))
        negative_scores = self.model.score(summaries, negatives)  # [M, N]

        positive = self.model.score(summaries, targets[:, None])
        next_loss = _sampled_softmax_loss(positive, targets[:, None], negative_scores, negatives)

        # Reconstruction: items drawn uniformly from each example's own history items[:p].
        drawn = (torch.rand(len(targets), cfg.reconstruction_samples) * prefix_lengths[:, None]).long()
        rows = torch.nonzero(real)[:, 0]
        recalled = items[rows[:, None], drawn]  # [M, R]
        recalled_scores = self.model.score(summaries, recalled)
        reconstruction = _sampled_softmax_loss(recalled_scores, recalled, negative_scores, negatives)
        return next_loss, reconstruction


def _sampled_softmax_loss(positive: torch.Tensor, positive_items: torch.Tensor, negative: torch.Tensor,
                          negative_items: torch.Tensor) -> torch.Tensor:
    """Mean over [M, R] positives of -log softmax(positive vs the negatives), where a negative that is
    the positive item itself is left out (an accidental hit is not a negative)."""
    hits = positive_items[:, :, None] == negative_items[None, None, :]  # [M, R, N]
    masked = negative[:, None, :].masked_fill(hits, float("-inf"))
    negative_mass = torch.logsumexp(masked, dim=-1)  # [M, R]
    return F.softplus(negative_mass - positive).mean()


@torch.no_grad()
def evaluate_next_item(summarizer: TrainedSummarizer, history: UserSequences, targets: pd.DataFrame,
                       popularity: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Recall/NDCG@k of the summary scorer over the whole catalogue, for each user's target item
    (a `user_id, item_id` frame) given their history; the same for most-popular, side by side."""
    cfg, model = summarizer.config, summarizer.model
    row_of_user = {u: i for i, u in enumerate(history.user_ids)}
    targets = targets[targets["user_id"].astype(str).isin(row_of_user)]
    users = np.array([row_of_user[str(u)] for u in targets["user_id"]], dtype=np.int64)
    target_rows = summarizer.vocab.encode(targets["item_id"])
    catalogue = torch.arange(1, len(summarizer.vocab) + 1)
    ranks = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), cfg.eval_batch_users):
        chunk = slice(start, start + cfg.eval_batch_users)
        summaries = model.summarize_batch(torch.from_numpy(history.padded(users[chunk])), cfg.chunk_size)
        scores = model.score(summaries, catalogue)  # [B, I]; column j is item row j + 1
        target_scores = scores.gather(1, torch.from_numpy(target_rows[chunk] - 1)[:, None])
        ranks[chunk] = (scores > target_scores).sum(dim=1).numpy()
    popular_rank = np.argsort(np.argsort(-popularity, kind="stable"), kind="stable")
    k = cfg.eval_top_k
    metrics = {**_ranking_metrics(ranks, k, "summary"),
               **_ranking_metrics(popular_rank[target_rows - 1], k, "popularity")}
    return metrics, ranks


def _ranking_metrics(ranks: np.ndarray, k: int, name: str) -> dict[str, float]:
    hit = ranks < k
    return {f"{name}_recall@{k}": float(hit.mean()) if len(ranks) else 0.0,
            f"{name}_ndcg@{k}": float((hit / np.log2(ranks + 2)).mean()) if len(ranks) else 0.0}


def train_summarizer(interactions: pd.DataFrame, config: GenrecConfig) -> TrainingResult:
    """Trains on the rows with split == "train" and validates on the "valid" targets.

    The vocabulary covers every item in `interactions` (ids only, no behaviour), so that summaries
    of later interactions can embed items first seen after training.
    """
    if SPLIT_COLUMN not in interactions.columns:
        raise ValueError(f"interactions have no {SPLIT_COLUMN!r} column: run the leave-one-out split first")
    cfg = config.vista
    with torch_threads(cfg.threads):
        vocab = ItemVocab.from_items(interactions["item_id"])
        train_rows = time_ordered(interactions[interactions[SPLIT_COLUMN] == "train"])
        train = UserSequences.from_interactions(train_rows, vocab)
        trainer = SummarizerTrainer(cfg, vocab)
        start = time.perf_counter()
        epochs = trainer.fit(train)
        train_seconds = time.perf_counter() - start
        summarizer = TrainedSummarizer(trainer.model, vocab, cfg)
        popularity = np.bincount(train.items, minlength=len(vocab) + 1)[1:].astype(np.float64)
        valid = interactions[interactions[SPLIT_COLUMN] == "valid"]
        quality, ranks = evaluate_next_item(summarizer, train, valid, popularity)
    examples = cfg.epochs * int(np.minimum(train.lengths - 1, cfg.positions_per_user).clip(0).sum())
    metrics: dict[str, Any] = {
        "users": len(train),
        "items": len(vocab),
        "train_interactions": len(train.items),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_seconds": train_seconds,
        "examples_per_second": examples / max(train_seconds, 1e-9),
        "final_loss": epochs[-1].loss if epochs else float("nan"),
        **quality,
    }
    summarizer.metrics = {k: float(v) for k, v in metrics.items()}
    return TrainingResult(summarizer, epochs, summarizer.metrics, ranks)
