"""Trie-constrained beam search over semantic IDs, batched over requests, one width per level.

Scores are exact log-probabilities of the model (full softmax at each level, then masked to the
codes the trie allows), so with widths at least as large as the number of valid prefixes the search
returns exactly the top-K of `exhaustive_top_k`, the slow reference that scores every valid ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genrec.model.decoder import Context, SidDecoder
from genrec.sid.trie import INVALID, SidTrie, SparseChildren

NEG_INF = float("-inf")


@dataclass
class BeamResult:
    """items [B, K] item rows (-1 where fewer than K valid IDs exist), scores [B, K] log-probs."""

    items: Tensor
    scores: Tensor


class SparseChildTensor:
    """A `SparseChildren` level on the decoder's device: `table[nodes]` gives the rows a dense
    table's gather would, [..., width], built from the level's sorted (node * width + code) keys."""

    def __init__(self, table: SparseChildren, device: torch.device | str = "cpu") -> None:
        self.keys = torch.as_tensor(table.keys, dtype=torch.long, device=device)
        self.targets = torch.as_tensor(table.targets, dtype=torch.int32, device=device)
        self.offsets = torch.as_tensor(table.offsets, dtype=torch.long, device=device)
        self.shape = table.shape

    def __getitem__(self, nodes: Tensor) -> Tensor:
        width = self.shape[1]
        flat = nodes.reshape(-1).long()
        start = self.offsets[flat]
        count = self.offsets[flat + 1] - start
        out = torch.full((flat.numel(), width), INVALID, dtype=torch.int32, device=nodes.device)
        owner = torch.repeat_interleave(torch.arange(flat.numel(), device=nodes.device), count)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        entry = (torch.arange(owner.numel(), device=nodes.device) - first
                 + torch.repeat_interleave(start, count))
        out[owner, self.keys[entry] - flat[owner] * width] = self.targets[entry]
        return out.view(*nodes.shape, width)


class TrieTables:
    """The trie's per-level child tables on the decoder's device: `children[l][nodes]` gives the
    rows [..., K] of next nodes (item rows after the last level), -1 where a code is not allowed.
    A dense level is an int32 tensor, a sparse one (large catalogues' deep levels) a
    `SparseChildTensor` that builds the same rows."""

    def __init__(self, trie: SidTrie, device: torch.device | str = "cpu") -> None:
        self.children: list[Tensor | SparseChildTensor] = [
            SparseChildTensor(table, device) if isinstance(table, SparseChildren)
            else torch.as_tensor(table, dtype=torch.int32, device=device) for table in trie.children]
        self.trie = trie
        self.level_sizes = list(trie.level_sizes)
        # Item rows run 0..items-1 (the last level's node numbers).
        last = trie.children[-1]
        self.items = int(last.max()) + 1 if last.size else 0

    @property
    def depth(self) -> int:
        return len(self.children)


def level_widths(beam_widths: Sequence[int], levels: int) -> list[int]:
    """Per-level widths; a shorter list repeats its last entry for the deeper levels."""
    if not beam_widths:
        raise ValueError("give at least one beam width")
    return [int(beam_widths[min(level, len(beam_widths) - 1)]) for level in range(levels)]


def excluded_mask(exclude: Tensor, items: int) -> Tensor:
    """[B, items + 1] bool, True at the item rows of `exclude` [B, E] (PAD -1 allowed), shifted by
    one so that column 0 stands for "no item" and is never excluded."""
    mask = torch.zeros(exclude.shape[0], items + 1, dtype=torch.bool, device=exclude.device)
    mask.scatter_(1, exclude.clamp(min=-1) + 1, True)
    mask[:, 0] = False
    return mask


@torch.inference_mode()
def beam_search(decoder: SidDecoder, context: Context, tables: TrieTables, beam_widths: Sequence[int],
                top_k: int, exclude: Tensor | None = None) -> BeamResult:
    """Top-K items per request. Width b_l beams survive level l < L - 1; the last level keeps the
    top_k complete IDs (a wider last level cannot change the top-K of already-scored items).

    `exclude` [B, E] item rows (PAD -1 allowed) are never returned for their request, e.g. the
    items the user already has: they are masked where they become complete IDs, at the last level.
    Their prefixes still compete at the levels above, so with narrow beams a request can get fewer
    than K items; widths that cover every valid prefix give `exhaustive_top_k`'s result exactly."""
    if tables.depth != decoder.levels:
        raise ValueError(f"trie has {tables.depth} levels, decoder {decoder.levels}")
    widths = level_widths(beam_widths, decoder.levels)
    batch = context.tokens.shape[0]
    device = context.tokens.device
    if exclude is not None and exclude.shape[0] != batch:
        raise ValueError(f"exclude has {exclude.shape[0]} rows for {batch} requests")
    excluded = None
    if exclude is not None:  # rows outside the trie can never come out: dropped, not indexed
        exclude = exclude.to(device)
        excluded = excluded_mask(exclude.masked_fill(exclude >= tables.items, -1), tables.items)
    state = decoder.start(context)
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    previous: Tensor | None = None
    for level in range(decoder.levels):
        log_probs = decoder.step(state, level, previous)  # [B, W, K]
        size = log_probs.shape[-1]
        children = tables.children[level][nodes.clamp(min=0)]  # [B, W, K]
        allowed = (children >= 0) & (nodes >= 0)[..., None]
        if excluded is not None and level == decoder.levels - 1:
            allowed &= ~excluded.gather(1, (children.clamp(min=-1) + 1).view(batch, -1)).view_as(children)
        candidates = (scores[..., None] + log_probs).masked_fill(~allowed, NEG_INF).view(batch, -1)
        keep = top_k if level == decoder.levels - 1 else widths[level]
        scores, flat = candidates.topk(min(keep, candidates.shape[1]), dim=1)
        source = torch.div(flat, size, rounding_mode="floor")
        previous = flat - source * size
        nodes = children.view(batch, -1).gather(1, flat).long()
        nodes = nodes.masked_fill(torch.isinf(scores), -1)
        if level < decoder.levels - 1:
            state.reorder(source)
    if nodes.shape[1] < top_k:
        missing = top_k - nodes.shape[1]
        nodes = torch.cat([nodes, nodes.new_full((batch, missing), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch, missing), NEG_INF)], dim=1)
    return BeamResult(nodes, scores)


@torch.inference_mode()
def item_log_probs(decoder: SidDecoder, context: Context, chunk: int = 4096) -> Tensor:
    """Reference: log p(ID | context) of every item in the decoder's codebook, by the full
    teacher-forced pass, [B, n_items]. Slow (one pass per request and item); for tests."""
    codes = decoder.item_codes
    rows = []
    for request in range(context.tokens.shape[0]):
        parts = []
        for start in range(0, codes.shape[0], chunk):
            block = codes[start:start + chunk]
            one = Context(context.tokens[request:request + 1].expand(len(block), -1, -1),
                          context.pad[request:request + 1].expand(len(block), -1))
            parts.append(decoder.code_log_probs(one, block).sum(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def exhaustive_top_k(decoder: SidDecoder, context: Context, top_k: int, exclude: Tensor | None = None
                     ) -> BeamResult:
    """The exact top-K items by model log-probability over every valid ID (the beam search's
    reference), leaving out the item rows of `exclude` [B, E] (PAD -1 allowed)."""
    log_probs = item_log_probs(decoder, context)
    if exclude is not None:
        log_probs = log_probs.masked_fill(excluded_mask(exclude, log_probs.shape[1])[:, 1:], NEG_INF)
    scores, items = log_probs.topk(top_k, dim=1)
    return BeamResult(items.masked_fill(torch.isinf(scores), -1), scores)
