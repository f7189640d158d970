"""Training examples streamed from the partitioned splits: each example exactly once per epoch across
ranks and loader workers (the DataLoader's own worker processes included), the same order again on
a resume, and the same examples as the in-memory builder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from genrec.data.partitioned import read_all, write_partitioned
from genrec.train.data import training_examples
from genrec.train.distributed import init_distributed, shutdown
from genrec.train.stream import ExampleRecipe, ExampleStream, RequestSample, StreamPlan, scan_splits
from testbed.redis import free_port

BATCH = 7


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Users of every length (one of 300 rows), in six buckets; each user's last two rows held out."""
    rng = np.random.default_rng(5)
    return partitioned_users(np.r_[rng.integers(1, 30, 70), 300], rng, tmp_path_factory.mktemp("stream"))


def partitioned_users(lengths: np.ndarray, rng: np.random.Generator, parent: Path) -> Path:
    """Users of these row counts, each one's last two rows held out (valid, test), written in six
    buckets under `parent`."""
    users = np.repeat(np.arange(len(lengths)).astype(str), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    from_end = np.concatenate([np.arange(n)[::-1] for n in lengths])
    frame = pd.DataFrame({
        "user_id": users, "item_id": rng.integers(0, 90, len(users)).astype(str),
        "timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(position, unit="s"),
        "value": rng.random(len(users)),
        "split": np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train"))})
    folder = parent / "splits"
    folder.mkdir()
    write_partitioned(frame, folder, 6)
    return folder


@pytest.fixture(scope="module")
def recipe() -> ExampleRecipe:
    return ExampleRecipe(np.array(sorted(map(str, range(85))), dtype=object), recent_items=4)  # 5 items unknown


@pytest.fixture(scope="module")
def plan(splits: Path, recipe: ExampleRecipe) -> StreamPlan:
    return StreamPlan.of_splits(splits, recipe, "log1p", progress=lambda done, total: None)


def keys(batch) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return list(zip(batch.users.tolist(), batch.cutoffs.astype(np.int64).tolist(), strict=True))


def test_the_plan_counts_what_the_in_memory_builder_makes(splits: Path, recipe: ExampleRecipe,
                                                          plan: StreamPlan) -> None:
    whole = training_examples(read_all(splits), recipe.item_ids, recipe.recent_items)
    assert plan.total == len(whole) and len(plan.examples) == 6
    assert plan.value_mean == pytest.approx(np.log1p(whole.values).mean(), rel=1e-12)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(("world", "workers"), [(1, 0), (1, 3), (2, 2), (3, 1)])
def test_every_example_exactly_once_per_epoch(splits: Path, recipe: ExampleRecipe, plan: StreamPlan,
                                              world: int, workers: int, grouped: bool) -> None:
    whole = training_examples(read_all(splits), recipe.item_ids, recipe.recent_items)
    expected = sorted(keys(whole))
    for epoch in (0, 1):
        # without lockstep (scoring): all of them
        seen = [key for rank in range(world)
                for shard in range(rank * max(1, workers), (rank + 1) * max(1, workers))
                for batch in ExampleStream(plan, recipe, BATCH, 3, epoch, rank, world, workers,
                                           lockstep=False, group_by_length=grouped).shard_batches(shard)
                for key in keys(batch)]
        assert sorted(seen) == expected
        # lockstep (training): no example twice, every rank the same number of full batches
        per_rank = [[keys(b) for b in shard_stream(plan, recipe, epoch, rank, world, workers, grouped=grouped)]
                    for rank in range(world)]
        assert all(len(batches) == len(per_rank[0]) > 0 for batches in per_rank)
        assert all(len(batch) == BATCH for batches in per_rank for batch in batches)
        flat = [key for batches in per_rank for batch in batches for key in batch]
        assert len(flat) == len(set(flat)) == plan.total - plan.left_out(3, epoch, world * max(1, workers), BATCH)
        assert set(flat) <= set(expected)
        assert len(ExampleStream(plan, recipe, BATCH, 3, epoch, 0, world, workers)) == len(per_rank[0])


def shard_stream(plan: StreamPlan, recipe: ExampleRecipe, epoch: int, rank: int, world: int, workers: int,
                 start: int = 0, grouped: bool = False) -> list:  # type: ignore[type-arg]
    """One rank's batches as its DataLoader gives them (its workers in turn), in this process."""
    stream = ExampleStream(plan, recipe, BATCH, 3, epoch, rank, world, workers, start, group_by_length=grouped)
    count = max(1, workers)
    per_worker = [list(stream.worker_batches(w)) for w in range(count)]
    out = []
    for j in range(max(len(b) for b in per_worker)):
        for w in range(count):
            if j < len(per_worker[w]):
                out.append(per_worker[w][j])
    return out


@pytest.mark.parametrize("start", [0, 3])
def test_the_dataloaders_worker_processes_give_the_rank_stream(plan: StreamPlan, recipe: ExampleRecipe,
                                                               start: int) -> None:
    stream = ExampleStream(plan, recipe, BATCH, 3, 0, rank=1, world=2, workers=2, start_batch=start)
    loaded = [keys(b) for b in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2,
                                                            collate_fn=lambda batch: batch)]
    assert loaded == [keys(b) for b in shard_stream(plan, recipe, 0, 1, 2, 2)][start:]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("start", [0, 1, 5, 12])
def test_a_resume_gives_the_rest_of_the_same_order(plan: StreamPlan, recipe: ExampleRecipe, start: int,
                                                   grouped: bool) -> None:
    for workers in (0, 2):
        whole = [keys(b) for b in shard_stream(plan, recipe, 1, 0, 2, workers, grouped=grouped)]
        resumed = [keys(b) for b in shard_stream(plan, recipe, 1, 0, 2, workers, start, grouped=grouped)]
        assert resumed == whole[start:]
        assert len(ExampleStream(plan, recipe, BATCH, 3, 1, 0, 2, workers, start)) == len(whole[start:])


def test_grouping_by_length_pads_less_and_keeps_the_batches_random(plan: StreamPlan,
                                                                    recipe: ExampleRecipe) -> None:
    """`train.group_by_length` on a stream, as in memory: batches of similar history lengths (less of
    each batch is padding), still a fresh order every epoch."""
    def padding(batches) -> int:  # type: ignore[no-untyped-def]
        return sum(int(b.lengths.max() * len(b) - b.lengths.sum()) for b in batches)

    def every(grouped: bool) -> list:  # type: ignore[type-arg]
        stream = ExampleStream(plan, recipe, BATCH, 3, 0, lockstep=False, group_by_length=grouped)
        return list(stream.shard_batches(0))

    plain, grouped = every(False), every(True)
    assert sorted(k for b in grouped for k in keys(b)) == sorted(k for b in plain for k in keys(b))
    assert padding(grouped) < 0.5 * padding(plain)
    # the runs are shuffled: the batches' longest histories do not fall in order
    longest = [int(b.lengths.max()) for b in grouped]
    assert longest != sorted(longest, reverse=True)
    assert [keys(b) for b in grouped] != [keys(b) for b in shard_stream(plan, recipe, 1, 0, 1, 0, grouped=True)]


def test_epochs_and_seeds_change_the_order_and_the_same_ones_repeat_it(plan: StreamPlan,
                                                                       recipe: ExampleRecipe) -> None:
    first = [keys(b) for b in shard_stream(plan, recipe, 0, 0, 1, 0)]
    assert first == [keys(b) for b in shard_stream(plan, recipe, 0, 0, 1, 0)]
    assert first != [keys(b) for b in shard_stream(plan, recipe, 1, 0, 1, 0)]


def test_a_changed_bucket_and_a_wrong_worker_count_are_errors(splits: Path, recipe: ExampleRecipe,
                                                              plan: StreamPlan) -> None:
    stale = StreamPlan(plan.splits, tuple(n + 1 for n in plan.examples), plan.value_sum, plan.value_transform)
    with pytest.raises(RuntimeError, match="splits changed since the plan"):
        list(ExampleStream(stale, recipe, BATCH, 3, 0).shard_batches(0))
    with pytest.raises(RuntimeError, match="loader workers"):
        list(ExampleStream(plan, recipe, BATCH, 3, 0, workers=2))
    with pytest.raises(ValueError, match="rank < world"):
        ExampleStream(plan, recipe, BATCH, 3, 0, rank=2, world=2)


def scanning_rank(rank: int, world: int, port: int, splits: str, recipe: ExampleRecipe, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    dist = init_distributed(use_gpu=False)
    try:
        found = scan_splits(splits, recipe, "log1p", RequestSample("valid", 20, 3), lambda done, total: None, dist)
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(found))
    finally:
        shutdown(dist)


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_out_the_scan_and_agree_with_one_process(splits: Path, recipe: ExampleRecipe,
                                                             tmp_path: Path, world: int) -> None:
    """Each rank reads every world-th bucket (4 ranks over 6 buckets: some read one); after the swap
    every rank holds the one-process plan and validation sample, bit for bit."""
    alone, sample = scan_splits(splits, recipe, "log1p", RequestSample("valid", 20, 3), lambda done, total: None)
    assert sample is not None
    mp.spawn(scanning_rank, args=(world, free_port(), str(splits), recipe, str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        plan, valid = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert plan == alone
        assert valid.users.tolist() == sample.users.tolist() and np.array_equal(valid.recent, sample.recent)
        assert np.array_equal(valid.targets, sample.targets)


def test_the_hashed_item_index_finds_the_rows_the_plain_lookup_does() -> None:
    """item_rows with a prebuilt index (the streamed path) against the per-call lookup (its reference)."""
    from genrec.train.data import item_lookup, item_rows

    catalogue = np.array([5, "a", 7, "x9", 11], dtype=object)
    asked = pd.Series(["7", 5, "missing", "x9", 11, "5", None])
    expected = np.array([2, 0, -1, 3, 4, 0, -1])
    assert item_rows(asked, catalogue).tolist() == expected.tolist()
    assert item_rows(asked, item_lookup(catalogue)).tolist() == expected.tolist()
    assert item_rows(pd.Series([], dtype=object), item_lookup(catalogue)).dtype == np.int64


@pytest.fixture(scope="module")
def even_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 users of 3-40 rows in six buckets: every bucket holds histories of every length, as the
    buckets of a large log do."""
    rng = np.random.default_rng(11)
    return partitioned_users(rng.integers(3, 41, 600), rng, tmp_path_factory.mktemp("even"))


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_step_together_on_batches_of_like_length(even_splits: Path, workers: int) -> None:
    """Grouped by length, the ranks' batches at one step have similar longest histories (DDP waits for
    the longest): closer than the same batches paired at random, as independent shuffles would."""
    recipe = ExampleRecipe(np.array(sorted(map(str, range(85))), dtype=object), recent_items=30,
                           max_per_user=8)
    plan = StreamPlan.of_splits(even_splits, recipe, "log1p", progress=lambda done, total: None)
    for epoch in (0, 1):
        longest = [[int(b.lengths.max()) for b in shard_stream(plan, recipe, epoch, rank, 2, workers, grouped=True)]
                   for rank in range(2)]
        first, second = (np.asarray(ranks) for ranks in longest)
        assert len(first) == len(second) > 100 and first.std() > 3  # lengths vary across the epoch
        together = np.abs(first - second).mean()
        rng = np.random.default_rng(0)
        apart = np.mean([np.abs(first - rng.permutation(second)).mean() for _ in range(200)])
        assert together < 0.3 * apart, (together, apart)
