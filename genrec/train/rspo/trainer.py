"""The RSPO trainer: the policy, the frozen reference and AdamW, one `step` per batch of requests;
and the running mean of the weights over the tail of a run (`rspo.average_from`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genrec.config import RspoConfig
from genrec.model.beam import TrieTables
from genrec.model.decoder import SidDecoder
from genrec.train.loop import ADAM_BETAS
from genrec.train.rspo.candidates import Requests, candidate_lists, sequence_log_probs, transform_rewards
from genrec.train.rspo.loss import rspo_objective


@dataclass
class StepStats:
    loss: float
    preference: float
    kl: float
    # Share of the lists whose beam held a positive (before the teacher-forced extras).
    positive_in_beam: float


class RspoTrainer:
    """Policy + frozen reference + AdamW; one `step` per batch of requests."""

    def __init__(self, policy: SidDecoder, reference: SidDecoder, config: RspoConfig, scale: float,
                 state: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                 include_extras: bool = True, world: int = 1) -> None:
        self.config = config
        # Data-parallel ranks: each steps on its own requests, and the gradients are averaged over
        # the ranks before clipping, so every rank keeps the same weights (what DDP does; the
        # policy is not wrapped because beam search and list scoring call more than its forward).
        self.world = world
        self.include_extras = include_extras
        self.scale = scale
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.tables = TrieTables(_trie_of(policy), self.device)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay, betas=ADAM_BETAS)
        self.steps = 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.steps = int(state["steps"])
            for group in self.optimizer.param_groups:  # the config of this run, not the saved one
                group["lr"], group["weight_decay"] = config.lr, config.weight_decay

    def step(self, requests: Requests) -> StepStats:
        longest = max(1, int(requests.lengths.max()))
        recent = torch.as_tensor(requests.recent[:, :longest], device=self.device)
        extras = torch.as_tensor(requests.items, dtype=torch.long, device=self.device)
        scaled = transform_rewards(requests.rewards, self.config.reward_transform) / self.scale
        gains = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)
        lists = candidate_lists(self.policy, recent, self.tables, extras, gains, self.config,
                                self.include_extras)
        with torch.no_grad():
            log_ref = sequence_log_probs(self.reference, recent, lists.items)
        log_pi = sequence_log_probs(self.policy, recent, lists.items)
        parts = rspo_objective(log_pi, log_ref, lists.gains, lists.valid, lists.ranks, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if self.world > 1:
            self._average_gradients()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.steps += 1
        in_beam = ((lists.gains[:, :self.config.candidates] > 0).any(-1)).float().mean()
        return StepStats(float(parts.total.detach()), float(parts.preference), float(parts.kl),
                         float(in_beam))

    def _average_gradients(self) -> None:
        import torch.distributed as dist

        for parameter in self.policy.parameters():
            if parameter.grad is None:  # unused on this rank's batch: a zero share of the mean
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= self.world

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "gain_scale": self.scale}


def _trie_of(decoder: SidDecoder) -> Any:
    from genrec.sid.trie import SidTrie

    return SidTrie.from_codes(decoder.item_codes.cpu().numpy(), decoder.level_sizes)


class TailAverage:
    """Running mean of a module's parameters over the steps from `first_step` on."""

    def __init__(self, module: torch.nn.Module, first_step: int) -> None:
        self.module = module
        self.first_step = first_step
        self.count = 0
        self.mean: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step < self.first_step:
            return
        self.count += 1
        for name, parameter in self.module.named_parameters():
            if name not in self.mean:
                self.mean[name] = parameter.detach().clone()
            else:
                self.mean[name] += (parameter.detach() - self.mean[name]) / self.count

    @torch.no_grad()
    def apply(self) -> None:
        for name, parameter in self.module.named_parameters():
            parameter.copy_(self.mean[name])


def _mean_stats(window: list[StepStats], step: int, seconds: float) -> dict[str, float]:
    return {"step": float(step), "seconds": seconds,
            **{name: float(np.mean([getattr(s, name) for s in window])) if window else float("nan")
               for name in ("loss", "preference", "kl", "positive_in_beam")}}
