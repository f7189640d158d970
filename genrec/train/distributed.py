"""Data-parallel training: the same script runs alone or under `torchrun --nproc_per_node=P`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with more than one process the group uses NCCL on
GPUs and gloo on CPUs, and each rank trains on its own share of every epoch's batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if it is True on any. A decision taken from each rank's own clock
        (a time limit) must be shared: a rank that stops alone leaves the others blocked in the
        next gradient all-reduce."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)


    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered


def init_distributed(use_gpu: bool = True) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = use_gpu and torch.cuda.is_available()
    device = f"cuda:{local_rank}" if gpu else "cpu"
    if gpu:
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if gpu else "gloo")
    return Distributed(rank, world, local_rank, device)


def shutdown(ctx: Distributed) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
