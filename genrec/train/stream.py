"""Training examples as a stream from the partitioned splits artefact, sharded by rank and by loader
worker, in a fixed order per (seed, epoch) that a resumed run repeats.

A user's rows sit in one bucket, and a training example needs only its user's earlier rows, so a
bucket's examples are built from that bucket alone (`training_examples` on it): memory holds one
bucket per loader worker, whatever the size of the log.

- **Plan** (`scan_splits`, one read of every bucket per run, which also samples the validation
  requests): each bucket's example count, and the sum of the examples' transformed values (the VSL
  weights are divided by their mean over every example).
- **Shards.** A run has `world` ranks of `workers` loader workers: `world * workers` shards. Every
  epoch, the buckets (in an order drawn from (seed, epoch)) are dealt to shards, each bucket to the
  shard with the fewest examples so far, so each example belongs to exactly one shard.
- **Order within a shard.** Its buckets in that order; each bucket's examples shuffled by (seed,
  epoch, bucket); cut into batches of `batch_size`, a batch running on into the next bucket. With
  `group_by_length` (`train.group_by_length`), as in memory: each bucket's shuffled examples are
  sorted by history length within pools (`sorted_in_pools`) and cut into runs on the shard's batch
  boundaries; the runs then take the length order of `length_phases`, which every rank shares at the
  same step. All of it comes from (seed, epoch, bucket) and the bucket's place in the shard, so a
  resume still skips whole examples.
- **Lockstep.** DDP steps all ranks together, so every shard yields the same number of batches per
  epoch, `batches_per_shard` (the smallest shard's full batches); the rest of each shard is left out
  of that epoch (`StreamPlan.left_out`), as `drop_last` would. A rank's DataLoader takes its workers'
  batches in turn, so rank batch j is worker j % workers' batch j // workers.
- **Resume.** Starting at rank batch k, worker w skips its first k // workers (+1 if w < k % workers)
  batches: whole buckets are skipped from the plan's counts, unread.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genrec.data.partitioned import read_bucket, read_partitioning
from genrec.progress import LineProgress
from genrec.train.data import (
    ExampleSet,
    evaluation_requests,
    item_lookup,
    sorted_in_pools,
    training_examples,
    transform_values,
)
from genrec.train.distributed import Distributed

# progress(done, total)
Progress = Callable[[int, int], None]
# frac(b / golden ratio) over consecutive b is the most evenly spread sequence in [0, 1).
GOLDEN_RATIO_CONJUGATE = (math.sqrt(5.0) - 1.0) / 2.0
# The third entry of the length phase's seed (seed, epoch, this): above any bucket number, so its draw
# is never a bucket order's (seed, epoch, bucket).
LENGTH_PHASE_STREAM = 2**32 + 1
# The columns an example is built from.
COLUMNS = ["user_id", "item_id", "timestamp", "value", "split"]


@dataclass(frozen=True)
class ExampleRecipe:
    """How a bucket's examples are made (the arguments of `training_examples`)."""

    item_ids: np.ndarray
    recent_items: int
    max_per_user: int = 0
    skip_latest: int = 0

    def examples(self, splits: str | Path, bucket: int) -> ExampleSet:
        return self.examples_of(read_bucket(splits, bucket, COLUMNS))

    @functools.cached_property
    def item_index(self) -> pd.Index:
        """`item_ids` hashed once per process, not once per bucket."""
        return item_lookup(self.item_ids)

    def examples_of(self, frame: pd.DataFrame) -> ExampleSet:
        return training_examples(frame, self.item_index, self.recent_items, self.max_per_user,
                                 self.skip_latest)


@dataclass(frozen=True)
class RequestSample:
    """Evaluation requests of `split` ("valid" or "test") for a seeded sample of about `users` users
    (0: all), drawn from every bucket in proportion to its rows."""

    split: str
    users: int
    seed: int


@dataclass(frozen=True)
class StreamPlan:
    """Per bucket of the splits artefact: how many training examples it gives, and the sum of their
    transformed values."""

    splits: str
    examples: tuple[int, ...]
    value_sum: float
    value_transform: str

    @classmethod
    def of_splits(cls, splits: str | Path, recipe: ExampleRecipe, value_transform: str,
                  progress: Progress | None = None) -> StreamPlan:
        return scan_splits(splits, recipe, value_transform, None, progress)[0]

    @property
    def total(self) -> int:
        return sum(self.examples)

    @property
    def value_mean(self) -> float:
        return self.value_sum / self.total if self.total else 0.0

    def shards(self, seed: int, epoch: int, shards: int) -> list[list[int]]:
        """The buckets of each shard for an epoch, in the order the shard reads them."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.examples))
        dealt: list[list[int]] = [[] for _ in range(shards)]
        # (examples so far, shard): the emptiest shard takes the next bucket; ties go to the lowest shard.
        heap = [(0, shard) for shard in range(shards)]
        for bucket in order:
            if not self.examples[bucket]:
                continue
            load, shard = heapq.heappop(heap)
            dealt[shard].append(int(bucket))
            heapq.heappush(heap, (load + self.examples[bucket], shard))
        return dealt

    def batches_per_shard(self, seed: int, epoch: int, shards: int, batch_size: int) -> int:
        return min(sum(self.examples[b] for b in buckets) for buckets in self.shards(seed, epoch, shards)) \
            // batch_size

    def left_out(self, seed: int, epoch: int, shards: int, batch_size: int) -> int:
        """Examples no shard yields in this epoch (lockstep: every shard stops at the same count)."""
        return self.total - shards * self.batches_per_shard(seed, epoch, shards, batch_size) * batch_size


class ExampleStream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """One rank's batches for one epoch (use with `DataLoader(stream, batch_size=None,
    num_workers=workers)`; `workers` must match). Yields `ExampleSet`s of `batch_size` examples.
    `lockstep=False` (scoring, where ranks need not step together) yields every example of the
    rank's shards, the last batch of each shard short."""

    def __init__(self, plan: StreamPlan, recipe: ExampleRecipe, batch_size: int, seed: int, epoch: int,
                 rank: int = 0, world: int = 1, workers: int = 0, start_batch: int = 0,
                 lockstep: bool = True, group_by_length: bool = False) -> None:
        if batch_size < 1 or not 0 <= rank < world or workers < 0 or start_batch < 0:
            raise ValueError("ExampleStream needs batch_size >= 1, 0 <= rank < world, workers >= 0 "
                             "and start_batch >= 0")
        self.plan, self.recipe = plan, recipe
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world, self.workers, self.start_batch = rank, world, workers, start_batch
        self.lockstep, self.group_by_length = lockstep, group_by_length

    @property
    def shard_count(self) -> int:
        return self.world * max(1, self.workers)

    def __len__(self) -> int:
        """This rank's batches in the epoch, from start_batch on (lockstep)."""
        if not self.lockstep:
            raise TypeError("a stream without lockstep has no length known in advance")
        per_rank = self.plan.batches_per_shard(self.seed, self.epoch, self.shard_count, self.batch_size) \
            * max(1, self.workers)
        return max(0, per_rank - self.start_batch)

    def __iter__(self) -> Iterator[ExampleSet]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(1, self.workers):
            raise RuntimeError(f"ExampleStream was made for {self.workers} loader workers, "
                               f"the DataLoader runs {workers}: give both the same number")
        yield from self.worker_batches(worker)

    def worker_batches(self, loader_worker: int) -> Iterator[ExampleSet]:
        """What loader worker `loader_worker` of this rank yields. A DataLoader always asks its
        worker 0 first, so on a resume at rank batch k the workers' roles turn by k: worker i reads
        shard role (i + k) % workers, and the rank's batches come out in the uninterrupted order."""
        workers = max(1, self.workers)
        role = (loader_worker + self.start_batch) % workers
        skip = self.start_batch // workers + (1 if role < self.start_batch % workers else 0)
        yield from self.shard_batches(self.rank * workers + role, skip)

    def shard_batches(self, shard: int, skip: int = 0) -> Iterator[ExampleSet]:
        """Shard `shard`'s batches of the epoch, the first `skip` left out."""
        count = (self.plan.batches_per_shard(self.seed, self.epoch, self.shard_count, self.batch_size)
                 if self.lockstep else np.inf)
        buckets = self.plan.shards(self.seed, self.epoch, self.shard_count)[shard]
        skip_examples = skip * self.batch_size
        pending: list[ExampleSet] = []
        pending_size, made = 0, skip
        before = 0  # the shard's examples before this bucket, read or skipped
        for bucket in buckets:
            if made >= count:
                return
            size = self.plan.examples[bucket]
            if skip_examples >= size:  # a bucket wholly before the resume point is never read
                skip_examples -= size
                before += size
                continue
            examples = self.recipe.examples(self.plan.splits, bucket)
            if len(examples) != size:
                raise RuntimeError(f"bucket {bucket} of {self.plan.splits} gives {len(examples)} examples, "
                                   f"its plan says {size}: the splits changed since the plan was made")
            order = self.bucket_order(examples, bucket, before)[skip_examples:]
            skip_examples = 0
            before += size
            pending.append(examples.subset(order))
            pending_size += len(order)
            while pending_size >= self.batch_size and made < count:
                batch, pending = take(pending, self.batch_size)
                pending_size -= self.batch_size
                made += 1
                yield batch
        if not self.lockstep and pending_size:
            yield ExampleSet.concat(pending)


    def bucket_order(self, examples: ExampleSet, bucket: int, before: int) -> np.ndarray:
        """The order of a bucket's examples this epoch: a permutation of all of them, drawn from
        (seed, epoch, bucket) and, grouped by length, from where the bucket begins in its shard
        (`before`, the shard's earlier examples), all known before the bucket is read, so a resume
        can skip a number of them. Grouped, the first examples complete the batch the previous
        bucket began, and the whole batches after them are the length-sorted runs in the order of
        `length_phases`."""
        rng = np.random.default_rng([self.seed, self.epoch, bucket])
        order = rng.permutation(len(examples))
        if not self.group_by_length:
            return order
        grouped = sorted_in_pools(order, examples.lengths, self.batch_size)
        head = min(len(grouped), -before % self.batch_size)
        runs = [grouped[i:i + self.batch_size] for i in range(head, len(grouped), self.batch_size)]
        tail = runs.pop() if runs and len(runs[-1]) < self.batch_size else grouped[:0]
        # The shard batch the first whole run becomes: its place in the lockstep.
        first_batch = (before + head) // self.batch_size
        longest = np.asarray([examples.lengths[run].max() for run in runs], dtype=np.int64)
        slots = length_phases(self.seed, self.epoch, first_batch, len(runs))
        by_length = np.argsort(longest, kind="stable")
        return np.concatenate([grouped[:head], *(runs[by_length[k]] for k in slots), tail])


def length_phases(seed: int, epoch: int, first_batch: int, runs: int) -> np.ndarray:
    """For shard batches first_batch .. first_batch + runs - 1, the length rank (0 = shortest) of the
    bucket's run each one takes. DDP steps all ranks together, so a step lasts as long as its
    longest batch on any rank: with runs shuffled independently per shard, a rank with short
    histories waits for one with long ones at almost every step (two ranks reached 1.4x one rank
    on the 1M log, whose history lengths vary most). Shard batch b takes the run at quantile
    frac(c + b / golden ratio) of its bucket, with c drawn from (seed, epoch): the same b on every
    rank gives the same quantile, and consecutive batches still sweep every length evenly."""
    if runs == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.random.default_rng([seed, epoch, LENGTH_PHASE_STREAM]).random()
    phases = np.mod(start + np.arange(first_batch, first_batch + runs) * GOLDEN_RATIO_CONJUGATE, 1.0)
    return np.argsort(np.argsort(phases, kind="stable"), kind="stable")


def take(parts: list[ExampleSet], size: int) -> tuple[ExampleSet, list[ExampleSet]]:
    """The first `size` examples of `parts` (in order) as one set, and what remains."""
    taken, rest, need = [], list(parts), size
    while need:
        head = rest.pop(0)
        if len(head) <= need:
            taken.append(head)
            need -= len(head)
        else:
            taken.append(head.subset(np.arange(need)))
            rest.insert(0, head.subset(np.arange(need, len(head))))
            need = 0
    return ExampleSet.concat(taken), rest


def _as_is(batch: Any) -> Any:
    """The DataLoader's collate function: a stream's item is already a batch."""
    return batch


@dataclass(frozen=True)
class StreamedExamples:
    """A run's training examples as a stream: what the Trainer iterates in place of an in-memory
    `ExampleSet` (`train.examples: stream`). Bound to a rank with `for_rank`."""

    plan: StreamPlan
    recipe: ExampleRecipe
    batch_size: int
    seed: int
    workers: int = 0
    rank: int = 0
    world: int = 1
    group_by_length: bool = False

    def __len__(self) -> int:
        return self.plan.total

    def for_rank(self, rank: int, world: int) -> StreamedExamples:
        return dataclasses.replace(self, rank=rank, world=world)

    def stream(self, epoch: int, start: int = 0) -> ExampleStream:
        return ExampleStream(self.plan, self.recipe, self.batch_size, self.seed, epoch, self.rank, self.world,
                             self.workers, start, group_by_length=self.group_by_length)

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.stream(epoch))

    def batches(self, epoch: int, start: int = 0) -> Iterator[ExampleSet]:
        """This rank's batches of `epoch` from batch `start` on, through `workers` loader processes."""
        stream = self.stream(epoch, start)
        if not self.workers:
            yield from stream
            return
        # The loader draws its workers' seeds from the generator it is given, else from torch's
        # global one, which would shift the dropout masks of a resumed run. The stream's own order
        # needs no torch randomness.
        seeds = torch.Generator().manual_seed(self.seed)
        yield from torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.workers,
                                               collate_fn=_as_is, generator=seeds)


def scan_splits(splits: str | Path, recipe: ExampleRecipe, value_transform: str, sample: RequestSample | None,
                progress: Progress | None = None,
                dist: Distributed | None = None) -> tuple[StreamPlan, ExampleSet | None]:
    """One read of every bucket: the plan of the training examples and, with `sample`, the sampled
    evaluation requests (a streamed run's validation users). With `dist` of several ranks, each rank
    reads every world-th bucket and the ranks swap what they found, so a run of N nodes scans a log
    N times faster; plan and sample are one process's, bit for bit (sums taken in bucket order)."""
    dist = dist or Distributed()
    partitioning = read_partitioning(splits)
    total_rows = max(1, sum(partitioning.rows))
    progress = progress or LineProgress("training examples: counting per bucket")
    mine = range(dist.rank, partitioning.buckets, dist.world)
    # bucket -> (examples, sum of their transformed values, sampled requests)
    scanned: dict[int, tuple[int, float, ExampleSet | None]] = {}
    for done, bucket in enumerate(mine, 1):
        frame = read_bucket(splits, bucket, COLUMNS, partitioning)
        examples = recipe.examples_of(frame)
        part = None
        if sample is not None:
            part = evaluation_requests(frame, recipe.item_index, recipe.recent_items, sample.split)
            if sample.users and len(part):
                share = min(len(part), math.ceil(sample.users * partitioning.rows[bucket] / total_rows))
                pick = np.random.default_rng([sample.seed, bucket]).choice(len(part), share, replace=False)
                part = part.subset(np.sort(pick))
        bucket_value_sum = float(transform_values(examples.values, value_transform).sum())
        scanned[bucket] = (len(examples), bucket_value_sum, part)
        progress(done, len(mine))
    if dist.active:
        for found in dist.gather(scanned):
            scanned.update(found)
    counts, value_sum, requests = [], 0.0, []
    for bucket in range(partitioning.buckets):
        count, bucket_value_sum, part = scanned[bucket]
        counts.append(count)
        value_sum += bucket_value_sum
        if part is not None:
            requests.append(part)
    plan = StreamPlan(str(splits), tuple(counts), value_sum, value_transform)
    return plan, (ExampleSet.concat(requests) if sample is not None else None)
