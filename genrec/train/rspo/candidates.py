"""Candidate lists: requests (a context and its rewarded items), the policy's trie-constrained beam
list for each, the gains of the items in it, and the log-probabilities of whole lists.

A request's candidates are the policy's top-n semantic IDs (every one a real item). Each candidate
gets a reward: the value of the item if it is a positive of the request (offline: the next training
item, or the next `rspo.positive_window`; continual: an impressed item with a reward in the feedback
log), else 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from genrec.config import RspoConfig
from genrec.model.beam import TrieTables, beam_search
from genrec.model.decoder import PAD_ITEM, SidDecoder
from genrec.train.data import ExampleSet, transform_values


@dataclass
class Requests:
    """Contexts to fine-tune on, each with the items whose reward is known."""

    recent: np.ndarray  # [n, R] item rows, most recent first, PAD_ITEM after the history
    lengths: np.ndarray  # [n]
    items: np.ndarray  # [n, P] item rows with a known reward, -1 padding
    rewards: np.ndarray  # [n, P] their raw rewards (values); 0 = shown, no reward
    times: np.ndarray  # [n] datetime64[ns] of the request

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, index: np.ndarray) -> Requests:
        return Requests(self.recent[index], self.lengths[index], self.items[index], self.rewards[index],
                        self.times[index])

    @classmethod
    def from_examples(cls, examples: ExampleSet, window: int = 1) -> Requests:
        """Offline: the next `window` items of the user are the positives, each rewarded with its
        value. Examples are time-ordered runs per user (training_examples keeps each user's latest
        positions), so example k + j holds the item j steps after example k's target; a window
        never reaches past the user's last training item."""
        count = len(examples)
        items = np.full((count, window), PAD_ITEM, dtype=np.int64)
        rewards = np.zeros((count, window), dtype=np.float64)
        for ahead in range(window):
            later = np.arange(count) + ahead
            inside = later < count
            same = np.zeros(count, dtype=bool)
            same[inside] = examples.users[later[inside]] == examples.users[inside]
            items[same, ahead] = examples.targets[later[same]]
            rewards[same, ahead] = examples.values[later[same]]
        return cls(examples.recent, examples.lengths, items, rewards, examples.cutoffs)


def transform_rewards(rewards: np.ndarray, transform: str) -> np.ndarray:
    """Rewards on the same scale as VSL's weights (rspo.reward_transform)."""
    return transform_values(rewards, transform)


def gain_scale(values: np.ndarray, transform: str) -> float:
    """The mean transformed value of the training targets: gains are divided by it (as VSL's
    weights are), so a mean positive has gain 1 whatever the currency of the values."""
    mean = float(transform_rewards(values, transform).mean()) if len(values) else 0.0
    return mean if math.isfinite(mean) and mean > 0 else 1.0


@dataclass
class CandidateLists:
    items: Tensor  # [B, C] item rows (-1 where invalid)
    gains: Tensor  # [B, C]
    valid: Tensor  # [B, C]
    ranks: Tensor  # [B, C] position in the policy's list; `candidates` for teacher-forced extras


def candidate_lists(policy: SidDecoder, recent: Tensor, tables: TrieTables, extras: Tensor, gains: Tensor,
                    config: RspoConfig, include_extras: bool = True) -> CandidateLists:
    """The policy's beam list plus, with include_extras, the known items it missed as extra slots.
    A rewarded item found by the beam gives its gain to that slot; its extra slot is masked."""
    with torch.inference_mode():
        found = beam_search(policy, policy.embed_context(recent), tables, config.beam_widths,
                            config.candidates).items
    beam = found.clone()  # out of inference mode: the rows index embeddings that autograd records
    size = beam.shape[1]
    match = (beam[:, :, None] == extras[:, None, :]) & (extras[:, None, :] >= 0)  # [B, n, P]
    beam_gains = torch.where(match, gains[:, None, :], 0.0).amax(-1) if extras.shape[1] else \
        torch.zeros_like(beam, dtype=gains.dtype)
    earlier = torch.ones(extras.shape[1], extras.shape[1], dtype=torch.bool, device=extras.device).tril(-1)
    repeated = ((extras[:, :, None] == extras[:, None, :]) & earlier[None]).any(-1)
    extra_valid = (extras >= 0) & ~match.any(1) & ~repeated & include_extras
    return CandidateLists(
        items=torch.cat([beam, extras.masked_fill(~extra_valid, PAD_ITEM)], dim=1),
        gains=torch.cat([beam_gains, torch.where(extra_valid, gains, 0.0)], dim=1),
        valid=torch.cat([beam >= 0, extra_valid], dim=1),
        ranks=torch.cat([torch.arange(size, device=beam.device).expand_as(beam),
                         torch.full_like(extras, config.candidates)], dim=1),
    )


def sequence_log_probs(decoder: SidDecoder, recent: Tensor, items: Tensor) -> Tensor:
    """log p(ID of items[b, c] | context b), [B, C], differentiable. The decoding path: the context
    goes through the layers once per request and every candidate is a beam teacher-forced through
    the per-beam layers (for LazyAR only the top M), which is N/M times cheaper per candidate than
    the full pass of `code_log_probs` and equal to it (tests/test_rspo.py holds them)."""
    batch, width = items.shape
    codes = decoder.item_codes[items.clamp(min=0)]  # [B, C, L]
    state = decoder.start(decoder.embed_context(recent))
    total = torch.zeros(batch, width, device=items.device)
    previous: Tensor | None = None
    for level in range(decoder.levels):
        log_probs = decoder.step(state, level, previous)  # [B, 1 at level 0 else C, K_level]
        total = total + log_probs.expand(batch, width, -1).gather(-1, codes[..., level, None]).squeeze(-1)
        if level == 0:  # one shared level-0 cache becomes one per candidate
            state.reorder(torch.zeros(batch, width, dtype=torch.long, device=items.device))
        previous = codes[..., level]
    return total
