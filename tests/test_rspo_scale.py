"""RSPO past one process: requests streamed from the partitioned splits (`rspo.examples: stream`)
against the in-memory reference, and data-parallel ranks (gloo on loopback) that average their
gradients and so end with the same weights."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from genrec.config import GenrecConfig
from genrec.data.partitioned import write_partitioned
from genrec.data.split import leave_one_out
from genrec.model.artefact import load_model
from genrec.train.distributed import Distributed, init_distributed, shutdown
from genrec.train.rspo import finetune
from genrec.train.rspo.offline import memory_requests, streamed_requests
from testbed.redis import free_port
from tests.conftest import make_log
from tests.test_rspo import BATCH, rspo_config, served  # noqa: F401 (a fixture)

BUCKETS = 3


@pytest.fixture
def splits(tmp_path: Path) -> Path:
    folder = tmp_path / "splits"
    folder.mkdir()
    write_partitioned(leave_one_out(make_log(users=24, items=30, per_user=7)), folder, BUCKETS)
    return folder


def streamed_config(**rspo: object) -> GenrecConfig:
    return rspo_config(examples="stream", **rspo)


def test_streamed_requests_match_the_in_memory_ones(served: Path, splits: Path) -> None:  # noqa: F811
    """The scan counts every training request and sums the same rewards; an epoch's streamed
    batches hold each request at most once, and all but the lockstep remainder."""
    from genrec.data.partitioned import read_all

    model = load_model(served)
    memory = memory_requests(rspo_config(), read_all(splits), model, Distributed())
    stream = streamed_requests(streamed_config(), splits, model, Distributed())
    assert stream.count == memory.count > 0
    assert stream.scale == pytest.approx(memory.scale, rel=1e-12)
    assert len(stream.valid) == len(memory.valid) == 24
    seen = Counter(tuple(row) for batch in stream.batches(0) for row in
                   np.column_stack([batch.recent, batch.items]).tolist())
    reference = Counter(tuple(row) for batch in memory.batches(0) for row in
                        np.column_stack([batch.recent, batch.items]).tolist())
    assert sum(seen.values()) == stream.steps_in_epoch(0) * BATCH
    assert sum(reference.values()) == memory.count and all(seen[key] <= reference[key] for key in seen)
    # Lockstep leaves out what does not fill the last batch: less than one batch (one shard).
    assert memory.count - sum(seen.values()) < BATCH


def rank_main(rank: int, world: int, port: int, config: dict, splits: str, model: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    dist = init_distributed(use_gpu=False)
    try:
        result = finetune(GenrecConfig.from_dict(config), splits, load_model(model), model, log=lambda _: None,
                          dist=dist)
        torch.save({"state": result.policy.state_dict(), "steps": result.stats["steps"],
                    "world": result.stats["world_size"]}, Path(out) / f"rank{rank}.pt")
    finally:
        shutdown(dist)


@pytest.mark.parametrize("examples", ["stream", "memory"])
def test_two_ranks_average_their_gradients_into_the_same_weights(served: Path, splits: Path,  # noqa: F811
                                                                 tmp_path: Path, examples: str) -> None:
    config = rspo_config(examples=examples, average_from=0.0)
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(rank_main, args=(2, free_port(), config.to_dict(), str(splits), str(served), str(out)), nprocs=2,
             join=True)
    first, second = (torch.load(out / f"rank{r}.pt") for r in range(2))
    assert first["world"] == second["world"] == 2 and first["steps"] == second["steps"] > 1
    start = load_model(served).decoder.state_dict()
    moved = False
    for name, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][name]), name
        moved |= not torch.equal(tensor, start[name])
    assert moved
