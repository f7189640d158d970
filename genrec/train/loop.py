"""The training loop: teacher-forced VSL, a warm-up + decay-to-zero schedule, length-grouped
batches, atomic resumable checkpoints, validation curves, and DDP when run under torchrun.

Resuming is exact: the checkpoint holds the model, optimiser, schedule position, RNG state and the
position inside the epoch, and every epoch's batches are a pure function of (seed, epoch), so a
killed run that resumes ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from genrec.config import GenrecConfig
from genrec.evaluate import evaluate
from genrec.model.beam import TrieTables
from genrec.model.decoder import SidDecoder, SidSpace, build_decoder
from genrec.sid.trie import SidTrie
from genrec.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from genrec.train.data import (
    Batch,
    ExampleSet,
    batch_order,
    evaluation_requests,
    example_weights,
    make_batch,
    training_examples,
    vsl_weights,
    weights_over_mean,
)
from genrec.train.distributed import Distributed
from genrec.train.stream import ExampleRecipe, RequestSample, StreamedExamples, scan_splits
from genrec.train.summaries import SummaryProvider

# Adam's second-moment decay: 0.98 (as in most transformer recipes) follows the fast early changes
# of a short schedule better than the default 0.999.
ADAM_BETAS = (0.9, 0.98)


@dataclass
class TrainingData:
    """Everything a run reads: the codebook's items and IDs, the examples (in memory, or streamed
    from the partitioned splits) and the validation users."""

    item_ids: np.ndarray
    space: SidSpace
    train: ExampleSet | StreamedExamples
    valid: ExampleSet
    summaries: SummaryProvider | None = None

    @classmethod
    def from_splits(cls, splits: pd.DataFrame, item_ids: np.ndarray, codes: np.ndarray,
                    level_sizes: list[int], config: GenrecConfig,
                    summaries: SummaryProvider | None = None) -> TrainingData:
        recent = config.model.recent_items
        valid = evaluation_requests(splits, item_ids, recent, "valid")
        if config.train.valid_users and len(valid) > config.train.valid_users:
            rng = np.random.default_rng(config.train.seed)
            valid = valid.subset(np.sort(rng.choice(len(valid), config.train.valid_users, replace=False)))
        return cls(np.asarray(item_ids), SidSpace(list(level_sizes), np.asarray(codes, dtype=np.int64)),
                   training_examples(splits, item_ids, recent, config.train.max_examples_per_user,
                                     config.train.skip_latest), valid,
                   summaries)

    @classmethod
    def streamed(cls, splits: str | Path, item_ids: np.ndarray, codes: np.ndarray, level_sizes: list[int],
                 config: GenrecConfig, dist: Distributed | None = None) -> TrainingData:
        """The examples of the partitioned `splits` as a stream (`train.examples: stream`): one pass
        counts them per bucket, and validation takes a seeded sample of users from every bucket;
        nothing holds the log."""
        train = config.train
        recipe = ExampleRecipe(np.asarray(item_ids).astype(object), config.model.recent_items,
                               train.max_examples_per_user, train.skip_latest)
        plan, valid = scan_splits(splits, recipe, train.value_transform,
                                  RequestSample("valid", train.valid_users, train.seed), dist=dist)
        assert valid is not None  # a sample was asked for
        return cls(np.asarray(item_ids), SidSpace(list(level_sizes), np.asarray(codes, dtype=np.int64)),
                   StreamedExamples(plan, recipe, train.batch_size, train.seed, train.loader_workers,
                                    group_by_length=train.group_by_length), valid)


class InMemoryBatches:
    """The batches of an in-memory `ExampleSet`: `batch_order` of its indices, with each example's
    VSL weight and value target computed once over all of them."""

    def __init__(self, examples: ExampleSet, config: GenrecConfig, rank: int, world: int) -> None:
        self.examples, self.config, self.rank, self.world = examples, config, rank, world
        train = config.train
        self.value_targets = example_weights(examples.values, train.value_transform)
        self.weights = (vsl_weights(self.value_targets, train.value_weight) if train.vsl
                        else np.ones(len(examples)))

    def order(self, epoch: int) -> list[np.ndarray]:
        train = self.config.train
        return batch_order(self.examples.lengths, train.batch_size, train.seed, epoch, train.group_by_length,
                           self.rank, self.world)

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.order(epoch))

    def batches(self, epoch: int, start: int) -> Iterator[tuple[ExampleSet, np.ndarray, np.ndarray]]:
        for index in self.order(epoch)[start:]:
            yield self.examples.subset(index), self.weights[index], self.value_targets[index]


class StreamedBatches:
    """The batches of a `StreamedExamples` for this rank, weights from the plan's value mean."""

    def __init__(self, examples: StreamedExamples, config: GenrecConfig, rank: int, world: int) -> None:
        self.examples, self.config = examples.for_rank(rank, world), config
        if not self.examples.batches_in_epoch(0):
            shards = world * max(1, examples.workers)
            filled = sum(1 for count in examples.plan.examples if count)
            raise ValueError(
                f"train.examples=stream: {shards} shards ({world} ranks x {max(1, examples.workers)} loader "
                f"workers) share {filled} buckets with examples, and the smallest shard has less than one "
                f"batch of {examples.batch_size}: lower train.loader_workers or train.batch_size, or cut the "
                "splits into more buckets (data.bucket_rows)")

    def batches_in_epoch(self, epoch: int) -> int:
        return self.examples.batches_in_epoch(epoch)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[ExampleSet, np.ndarray, np.ndarray]]:
        train, mean = self.config.train, self.examples.plan.value_mean
        for batch in self.examples.batches(epoch, start):
            value_targets = weights_over_mean(batch.values, train.value_transform, mean)
            weights = vsl_weights(value_targets, train.value_weight) if train.vsl else np.ones(len(batch))
            yield batch, weights, value_targets


@dataclass
class CurvePoint:
    epoch: int
    step: int
    train_seconds: float
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Progress:
    """Where a run is; saved in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    samples: int = 0
    epoch_loss: float = 0.0
    epoch_batches: int = 0
    curves: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    decoder: SidDecoder
    curves: list[CurvePoint]
    steps: int
    train_seconds: float
    samples_per_second: float
    finished: bool
    stats: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine or linear decay that reaches 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, config: GenrecConfig, data: TrainingData, work_dir: str | Path,
                 dist: Distributed | None = None, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.data = data
        self.work_dir = Path(work_dir)
        self.dist = dist or Distributed()
        self.log = log if self.dist.is_main else (lambda _: None)
        self.device = torch.device(self.dist.device)
        train = config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        summary_dim = 0
        if config.model.use_summary:
            if data.summaries is None:
                raise ValueError("model.use_summary is on but no summary provider was given")
            summary_dim = data.summaries.dim
        self.summaries = data.summaries if summary_dim else None
        torch.manual_seed(train.seed)
        self.decoder = build_decoder(config.model, data.space, summary_dim=summary_dim,
                                     value_head=train.value_head).to(self.device)
        self.module: torch.nn.Module = self.decoder
        if self.dist.active:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            # forward_sync_buffers off: the decoder's one buffer, item_codes (every item's SID), is
            # synced once here and never changed by a step, and DDP would otherwise send it from
            # rank 0 before every forward (16 MB a step at 500k items). A buffer that a step changes
            # fails tests/test_train.py.
            self.module = DistributedDataParallel(self.decoder, device_ids=ids,
                                                  find_unused_parameters=not config.model.code_embedding,
                                                  forward_sync_buffers=False)
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self.decoder.named_parameters():
            (no_decay if param.ndim < 2 or "embedding" in name else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=train.lr, betas=ADAM_BETAS)
        self.source: InMemoryBatches | StreamedBatches
        if isinstance(data.train, ExampleSet):
            self.source = InMemoryBatches(data.train, config, self.dist.rank, self.dist.world)
            self.weights = self.source.weights
        else:
            self.source = StreamedBatches(data.train, config, self.dist.rank, self.dist.world)
        self.batches_per_epoch = self.source.batches_in_epoch(0)
        # A stream's epochs may differ by a batch (its shards are dealt anew each epoch).
        self.total_steps = sum(self.source.batches_in_epoch(epoch) for epoch in range(train.epochs))
        self.warmup_steps = int(train.warmup_fraction * self.total_steps)
        self.tables = TrieTables(SidTrie.from_codes(data.space.codes, data.space.level_sizes), self.device)

    def _set_lr(self, step: int) -> None:
        factor = lr_factor(step, self.total_steps, self.warmup_steps, self.config.train.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.train.lr * factor

    def loss(self, batch: Batch) -> torch.Tensor:
        """VSL: per-example summed code cross-entropy times the example's weight (1 when off)."""
        logits, value = self.module(batch.recent, batch.codes, batch.summaries)
        per_example = sum(F.cross_entropy(level_logits, batch.codes[:, level], reduction="none")
                          for level, level_logits in enumerate(logits))
        loss = (batch.weights * per_example).mean()  # type: ignore[union-attr]
        if value is not None:
            loss = loss + self.config.train.value_head_weight * F.mse_loss(value, batch.value_targets)
        return loss

    def validate(self) -> dict[str, float]:
        train = self.config.train
        return evaluate(self.decoder, self.data.valid, self.tables, train.beam_widths, train.top_k,
                        train.eval_batch_size, self.summaries, device=self.device,
                        exclude_history=train.exclude_history)

    def _state(self, progress: _Progress) -> dict[str, Any]:
        return {"model": self.decoder.state_dict(), "optimizer": self.optimizer.state_dict(),
                "progress": dataclasses.asdict(progress), "rng": rng_state(), "total_steps": self.total_steps}

    def fit(self, stop_after_steps: int | None = None) -> TrainResult:
        """Trains to the end of the schedule (or `train.max_minutes`), resuming from the work
        folder's checkpoint if there is one. `stop_after_steps` stops right after that global step
        without saving anything, as if the process had been killed there (tests)."""
        train = self.config.train
        progress = self._resume()
        deadline = train.max_minutes * 60.0 if train.max_minutes else math.inf
        finished = True
        self.module.train()
        while progress.epoch < train.epochs:
            started = time.perf_counter()
            base_seconds = progress.train_seconds
            first = progress.batch_in_epoch
            for position, (examples, weights, value_targets) in enumerate(
                    self.source.batches(progress.epoch, first), start=first):
                batch = make_batch(examples, np.arange(len(examples)), self.data.space.codes, weights,
                                   value_targets, self.summaries, self.device)
                self._set_lr(progress.step)
                loss = self.loss(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), train.grad_clip)
                self.optimizer.step()
                progress.step += 1
                progress.batch_in_epoch = position + 1
                progress.samples += len(examples) * self.dist.world
                progress.epoch_loss += float(loss.detach())
                progress.epoch_batches += 1
                progress.train_seconds = base_seconds + time.perf_counter() - started
                if progress.step % train.checkpoint_every == 0:
                    self._save(progress)
                if stop_after_steps and progress.step >= stop_after_steps:  # a kill: nothing more saved
                    return self._result(progress, finished=False)
                if deadline < math.inf and self.dist.any_rank(progress.train_seconds > deadline):
                    finished = False
                    break
            point = CurvePoint(progress.epoch + 1, progress.step, progress.train_seconds,
                               progress.epoch_loss / max(progress.epoch_batches, 1))
            progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
            progress.epoch_loss, progress.epoch_batches = 0.0, 0
            last = progress.epoch == train.epochs or not finished
            if self.dist.is_main and (progress.epoch % train.eval_every == 0 or last):
                eval_started = time.perf_counter()
                point.metrics = self.validate()
                point.metrics["eval_seconds"] = time.perf_counter() - eval_started
                self.module.train()
            progress.curves.append(dataclasses.asdict(point))
            shown = " ".join(f"{k} {v:.4f}" for k, v in point.metrics.items()
                             if k.startswith(("recall", "ndcg")))
            self.log(f"epoch {point.epoch}/{train.epochs} step {point.step} loss {point.loss:.4f} "
                     f"{point.train_seconds:.0f}s train {shown}")
            self._save(progress)
            if not finished:
                self.log(f"stopped after train.max_minutes={train.max_minutes}")
                break
        return self._result(progress, finished)

    def _resume(self) -> _Progress:
        saved = load_checkpoint(self.work_dir)
        if saved is None:
            return _Progress()
        if saved["total_steps"] != self.total_steps:
            raise ValueError(f"checkpoint in {self.work_dir} is from a run with {saved['total_steps']} "
                             f"steps, this one has {self.total_steps}: use a fresh work folder")
        self.decoder.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        restore_rng(saved["rng"])
        progress = _Progress(**saved["progress"])
        self.log(f"resumed from step {progress.step} (epoch {progress.epoch}, "
                 f"batch {progress.batch_in_epoch})")
        return progress

    def _save(self, progress: _Progress) -> None:
        if self.dist.is_main:
            save_checkpoint(self.work_dir, self._state(progress))
        self.dist.barrier()

    def _result(self, progress: _Progress, finished: bool) -> TrainResult:
        stats = {"train_examples": len(self.data.train), "valid_users": len(self.data.valid),
                 "steps_per_epoch": self.batches_per_epoch, "world_size": self.dist.world,
                 "parameters": sum(p.numel() for p in self.decoder.parameters())}
        return TrainResult(self.decoder, [CurvePoint(**c) for c in progress.curves], progress.step,
                           progress.train_seconds, progress.samples / max(progress.train_seconds, 1e-9),
                           finished, stats)
