"""A pre-norm transformer block that runs either over a whole sequence (training, reference) or one
new token per beam against cached keys and values (decoding).

Decoding attends to two key sets: the request's context ("memory", shared by all its beams, so it is
stored once per request and never copied per beam) and the beam's own earlier level tokens. Scores
for both are computed with broadcasting and normalised by one softmax over their union, which is
exactly the attention the full sequence pass computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KeyValues:
    """Keys and values of one layer, shaped [..., heads, tokens, head_dim]."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys = keys
        self.values = values


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[..., T, 3d] -> three [..., heads, T, head_dim]."""
        *lead, tokens, _ = x.shape
        q, k, v = x.view(*lead, tokens, 3, self.heads, self.head_dim).unbind(-3)
        return q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)

    def _residual(self, x: Tensor, attended: Tensor) -> Tensor:
        """Adds the attention output (merged heads) and the feed-forward branch to x."""
        merged = attended.transpose(-3, -2).flatten(-2)
        x = x + F.dropout(self.attn_out(merged), self.dropout, self.training)
        return x + F.dropout(self.ffn(self.ffn_norm(x)), self.dropout, self.training)

    def forward(self, x: Tensor, allowed: Tensor | None, return_kv: bool = False, real: Tensor | None = None
                ) -> tuple[Tensor, KeyValues | None]:
        """Full-sequence pass. x [B, T, d]; allowed [B, 1, T, T] bool (True: may attend).

        `real` [B, T] (True: a real token) runs the per-token layers on real tokens only: with
        requests of mixed history length most of a padded batch is padding, and those layers are
        most of the arithmetic. Padding positions then keep their input (they are never attended)."""
        if real is None:
            q, k, v = self._split(self.qkv(self.attn_norm(x)))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            return self._residual(x, attended), (KeyValues(k, v) if return_kv else None)
        tokens = x[real]  # [N, d]
        qkv = x.new_zeros(*x.shape[:-1], 3 * x.shape[-1])
        qkv[real] = self.qkv(self.attn_norm(tokens))
        q, k, v = self._split(qkv)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        tokens = tokens + F.dropout(self.attn_out(attended.transpose(-3, -2).flatten(-2)[real]), self.dropout,
                                    self.training)
        tokens = tokens + F.dropout(self.ffn(self.ffn_norm(tokens)), self.dropout, self.training)
        out = x.clone()
        out[real] = tokens
        return out, (KeyValues(k, v) if return_kv else None)

    def step(self, x: Tensor, memory: KeyValues, memory_pad: Tensor, cache: KeyValues | None
             ) -> tuple[Tensor, KeyValues]:
        """One new token per beam.

        x [B, W, d]; memory keys/values [B, heads, C, hd] with memory_pad [B, C] (True: padding);
        cache keys/values [B, W, heads, l, hd] for the beam's l earlier level tokens, or None.
        Returns the new hidden state and the cache with this token appended.
        """
        q, k, v = self._split(self.qkv(self.attn_norm(x)).unsqueeze(-2))  # [B, W, heads, 1, hd] each
        if cache is not None:
            k = torch.cat([cache.keys, k], dim=-2)
            v = torch.cat([cache.values, v], dim=-2)
        scale = 1.0 / math.sqrt(self.head_dim)
        query = q.squeeze(-2)  # [B, W, heads, hd]
        # Context scores, broadcast over beams: [B, heads, W, C].
        memory_scores = torch.matmul(query.transpose(1, 2), memory.keys.transpose(-1, -2)) * scale
        memory_scores = memory_scores.masked_fill(memory_pad[:, None, None, :], float("-inf"))
        prefix_scores = torch.matmul(q, k.transpose(-1, -2)).squeeze(-2) * scale  # [B, W, heads, l + 1]
        scores = torch.cat([memory_scores.transpose(1, 2), prefix_scores], dim=-1)
        weights = torch.softmax(scores, dim=-1)
        context_len = memory.keys.shape[-2]
        from_memory = torch.matmul(weights[..., :context_len].transpose(1, 2), memory.values)
        from_prefix = torch.matmul(weights[..., context_len:].unsqueeze(-2), v).squeeze(-2)
        attended = (from_memory.transpose(1, 2) + from_prefix).unsqueeze(-2)  # [B, W, heads, 1, hd]
        out = self._residual(x.unsqueeze(-2), attended).squeeze(-2)
        return out, KeyValues(k, v)

    def verify(self, x: Tensor, memory: KeyValues, memory_pad: Tensor, rows: Tensor,
               groups: list[tuple[int, Tensor]]) -> Tensor:
        """All L level tokens of N full-length sequences at once, causal among themselves, each
        attending to the context of its request `rows[n]`: what `step` computes level by level.

        x [N, L, d]; memory keys/values [B, heads, C, hd] and memory_pad [B, C] per request; groups
        lists (request, indices of its sequences). Attention to the context is computed per request
        against its one cached copy of the keys/values: gathering them per sequence would copy C x d
        floats for each of the N sequences, which at batch 1 costs more than the attention itself."""
        count, levels = x.shape[0], x.shape[1]
        q, k, v = self._split(self.qkv(self.attn_norm(x)))  # [N, heads, L, hd]
        heads, head_dim = q.shape[1], q.shape[-1]
        context_len = memory.keys.shape[-2]
        scale = 1.0 / math.sqrt(head_dim)
        causal = torch.ones(levels, levels, dtype=torch.bool, device=x.device).tril()
        memory_scores = q.new_empty(count, heads, levels, context_len)
        for row, index in groups:
            # [n, heads, L, hd] -> [heads, n * L, hd]: one matmul against this request's keys.
            grouped = q[index].transpose(0, 1).reshape(heads, -1, head_dim)
            scores = torch.matmul(grouped, memory.keys[row].transpose(-1, -2)) * scale
            memory_scores[index] = scores.view(heads, len(index), levels, context_len).transpose(0, 1)
        memory_scores = memory_scores.masked_fill(memory_pad[rows][:, None, None, :], float("-inf"))
        prefix_scores = (torch.matmul(q, k.transpose(-1, -2)) * scale).masked_fill(~causal, float("-inf"))
        weights = torch.softmax(torch.cat([memory_scores, prefix_scores], dim=-1), dim=-1)
        attended = torch.matmul(weights[..., context_len:], v)  # [N, heads, L, hd]
        for row, index in groups:
            grouped = weights[index, :, :, :context_len].transpose(0, 1).reshape(heads, -1, context_len)
            from_memory = torch.matmul(grouped, memory.values[row])  # [heads, n * L, hd]
            attended[index] += from_memory.view(heads, len(index), levels, head_dim).transpose(0, 1)
        return self._residual(x, attended)
