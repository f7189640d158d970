"""The VISTA summariser: K learned query tokens attend over a user's whole history.

Cost is O(history): each history item is scored against the K query tokens (never against other
items), so no N x N matrix exists. Attention logits are soft-capped to [-cap, cap], which keeps the
softmax weights exp(s - cap) inside [exp(-2 cap), 1]. Three paths compute the same summary:

- `summarize` / `summarize_batch`: chunked cross-attention with online-softmax accumulation
  (running maximum, rescaled sums), for histories of any length in bounded memory;
- `prefix_summaries`: the summaries of many prefixes of a batch of sequences at once, by masked
  sums in one batched matrix product (training: every position is a next-item example);
- `attention_sums` + `readout`: plain additive sums, which the snapshot builder adds up per
  refresh segment and accumulates across segments.

`reference_summary` is the textbook full-softmax formulation that the tests hold the fast paths to.

Downstream, `score` is target attention from a candidate item to the K summary tokens: its cost
per candidate is O(K d), whatever the history length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genrec.config import VistaConfig

# Row 0 of the item table is padding: it stands for "no item" in padded batches.
PADDING_INDEX = 0


@dataclass(frozen=True)
class SummarizerShape:
    """Everything needed to rebuild the module before loading its weights."""

    num_items: int
    tokens: int
    dim: int
    heads: int
    logit_cap: float
    readout_hidden: int
    init_std: float

    @classmethod
    def from_config(cls, config: VistaConfig, num_items: int) -> SummarizerShape:
        return cls(num_items=num_items, tokens=config.summary_tokens, dim=config.dim, heads=config.heads,
                   logit_cap=config.logit_cap, readout_hidden=config.readout_hidden,
                   init_std=config.init_std)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass
class AttentionSums:
    """Un-normalised attention over a set of items, per summary token and head.

    numerator[..., k, h, :] = sum_i w_ikh v_ih and denominator[..., k, h] = sum_i w_ikh with
    w_ikh = exp(s_ikh - offset). Sums over disjoint item sets with the same offset simply add.
    """

    numerator: Tensor  # [..., K, H, head_dim]
    denominator: Tensor  # [..., K, H]


class VistaSummarizer(nn.Module):
    def __init__(self, shape: SummarizerShape) -> None:
        super().__init__()
        self.shape = shape
        d, k, h = shape.dim, shape.tokens, shape.heads
        self.item_embedding = nn.Embedding(shape.num_items + 1, d, padding_idx=PADDING_INDEX)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.queries = nn.Parameter(torch.empty(k, h, shape.head_dim))
        # Readout: concatenated heads -> token vector, plus a learned identity per token, then a
        # residual MLP; it sees one token at a time, so its cost is O(K d^2) per summary.
        self.token_bias = nn.Parameter(torch.zeros(k, d))
        self.output = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        hidden = shape.readout_hidden
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.out_norm = nn.LayerNorm(d)
        # Target attention: a candidate item's query into the summary tokens.
        self.target_query = nn.Linear(d, d, bias=False)
        # Per-item score offset: carries popularity so that the summary need not.
        self.item_bias = nn.Embedding(shape.num_items + 1, 1, padding_idx=PADDING_INDEX)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.shape.init_std
        nn.init.normal_(self.item_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[PADDING_INDEX].zero_()
            self.item_bias.weight.zero_()
        # Queries start at unit scale so that the tokens attend differently from the first step.
        nn.init.normal_(self.queries, std=1.0)

    # -- item side -------------------------------------------------------------------------------

    @property
    def offset(self) -> float:
        """Logits never exceed the cap, so exp(s - cap) <= 1 for every item: a fixed, safe offset."""
        return self.shape.logit_cap

    def item_attention(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """Capped logits [..., K, H] and values [..., H, head_dim] of item indices [...]."""
        emb = self.item_embedding(items)
        lead = emb.shape[:-1]
        h, dh = self.shape.heads, self.shape.head_dim
        keys = self.key(emb).view(*lead, h, dh)
        values = self.value(emb).view(*lead, h, dh)
        raw = torch.einsum("...hd,khd->...kh", keys, self.queries) / math.sqrt(dh)
        cap = self.shape.logit_cap
        return cap * torch.tanh(raw / cap), values

    def attention_sums(self, items: Tensor) -> AttentionSums:
        """Per-item sums with the fixed offset: [..., K, H, head_dim] and [..., K, H], not reduced."""
        logits, values = self.item_attention(items)
        weights = torch.exp(logits - self.offset) * (items != PADDING_INDEX)[..., None, None]
        return AttentionSums(weights[..., None] * values[..., None, :, :], weights)

    # -- summary side ----------------------------------------------------------------------------

    def readout(self, sums: AttentionSums) -> Tensor:
        """Summary tokens [..., K, d] from attention sums (an empty history reads out the bias)."""
        tiny = torch.finfo(sums.numerator.dtype).tiny
        pooled = sums.numerator / sums.denominator.clamp_min(tiny)[..., None]
        pooled = pooled.to(self.output.weight.dtype).flatten(-2)  # concatenate heads: [..., K, d]
        tokens = self.norm(self.output(pooled) + self.token_bias)
        return self.out_norm(tokens + self.mlp(tokens))

    def summarize_batch(self, items: Tensor, chunk_size: int) -> Tensor:
        """Summaries [B, K, d] of padded histories [B, T] (index 0 = padding), chunk by chunk.

        Online softmax: a running maximum m per token and head; each chunk's sums are taken
        relative to the new maximum and the old sums are rescaled by exp(m_old - m_new). Memory is
        O(B * chunk_size * K * d) whatever T is.
        """
        batch = items.shape[0]
        k, h, dh = self.shape.tokens, self.shape.heads, self.shape.head_dim
        floor = -self.shape.logit_cap  # no logit is lower: a safe start for the running maximum
        running_max = torch.full((batch, k, h), floor)
        numerator = torch.zeros(batch, k, h, dh)
        denominator = torch.zeros(batch, k, h)
        for start in range(0, items.shape[1], chunk_size):
            chunk = items[:, start:start + chunk_size]
            logits, values = self.item_attention(chunk)  # [B, C, K, H], [B, C, H, dh]
            present = (chunk != PADDING_INDEX)[..., None, None]
            new_max = torch.maximum(running_max, logits.masked_fill(~present, floor).amax(dim=1))
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max[:, None]) * present
            denominator = denominator * rescale + weights.sum(dim=1)
            numerator = numerator * rescale[..., None] + torch.einsum("bckh,bchd->bkhd", weights, values)
            running_max = new_max
        return self.readout(AttentionSums(numerator, denominator))

    def summarize(self, items: Tensor, chunk_size: int) -> Tensor:
        """Summary [K, d] of one history of item indices [n]; n may be in the millions."""
        return self.summarize_batch(items[None, :], chunk_size)[0]

    def prefix_summaries(self, items: Tensor, positions: Tensor) -> Tensor:
        """Summaries [B, P, K, d] of items[b, :positions[b, p]] for padded sequences [B, T].

        The fixed offset makes the sums of any item subset add, so the P prefix sums of a sequence
        are one masked batched matrix product (B x H x (P K) x T by T x head_dim): O(P T) work in
        GEMM, against a cumulative sum over all T prefixes whose backward pass is several times
        slower. Positions must be at least 1: a summary of nothing is not an example.
        """
        length = items.shape[1]
        logits, values = self.item_attention(items)  # [B, T, K, H], [B, T, H, dh]
        present = (items != PADDING_INDEX)[..., None, None]
        weights = (torch.exp(logits - self.offset) * present).permute(0, 3, 2, 1)  # [B, H, K, T]
        in_prefix = torch.arange(length)[None, None, :] < positions[:, :, None]  # [B, P, T]
        masked = in_prefix[:, None, :, None, :] * weights[:, :, None]  # [B, H, P, K, T]
        numerator = masked.flatten(2, 3) @ values.transpose(1, 2)  # [B, H, P K, dh]
        numerator = numerator.unflatten(2, (-1, self.shape.tokens)).permute(0, 2, 3, 1, 4)  # [B, P, K, H, dh]
        denominator = masked.sum(dim=-1).permute(0, 2, 3, 1)  # [B, P, K, H]
        return self.readout(AttentionSums(numerator, denominator))

    # -- target attention ------------------------------------------------------------------------

    def score(self, summaries: Tensor, candidates: Tensor) -> Tensor:
        """Target-attention scores [M, N] of candidate items [N] (shared) or [M, N] (per row).

        Each candidate attends over the K summary tokens of its row and is scored against the
        attended vector: O(K d) per candidate, independent of the history length.
        """
        emb = self.item_embedding(candidates)
        both = torch.cat([self.target_query(emb) / math.sqrt(self.shape.dim), emb], dim=-2)  # [.., 2N, d]
        if candidates.dim() == 1:
            products = torch.einsum("mkd,nd->mnk", summaries, both)
        else:
            products = torch.einsum("mkd,mnd->mnk", summaries, both)
        attention, match = products.split(emb.shape[-2], dim=1)  # [M, N, K] each
        # Softmax over the K tokens written out: the library kernel is slow on a last dim of ~4.
        weights = torch.exp(attention - attention.amax(dim=-1, keepdim=True))
        scores = (weights * match).sum(dim=-1) / weights.sum(dim=-1)
        return scores + self.item_bias(candidates)[..., 0]

    def token_attention(self, items: Tensor) -> Tensor:
        """Attention weights [K, n] of each summary token over one history [n] (heads averaged).

        Materialises K x n weights: for inspecting a history, not for summarising long ones.
        """
        logits, _ = self.item_attention(items)  # [n, K, H]
        return logits.softmax(dim=0).mean(dim=-1).T


def reference_summary(model: VistaSummarizer, items: Tensor) -> Tensor:
    """Full-softmax attention of the K queries over the whole history at once: the definition the
    chunked, prefix and snapshot paths must reproduce."""
    logits, values = model.item_attention(items)  # [n, K, H], [n, H, dh]
    weights = logits.softmax(dim=0)
    pooled = torch.einsum("nkh,nhd->khd", weights, values)
    return model.readout(AttentionSums(pooled, torch.ones(pooled.shape[:-1])))
