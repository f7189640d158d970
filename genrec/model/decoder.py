"""Semantic-ID decoders: the standard autoregressive (AR) baseline and LazyAR.

Both are one stack of N transformer blocks over [context tokens; one token per SID level]. Context
tokens (a learned start token, optional summary tokens, the last R items) attend only to the
context, bidirectionally. The token of level l attends to the context and to the level tokens <= l
and predicts code c_l. The two decoders differ in one place, `prefix_layer`: where the embedding of
the previous code c_{l-1} enters the level token's residual stream.

- AR (`prefix_layer = 0`): the prefix enters at the bottom, so every layer depends on the beam.
  Decoding caches each beam's keys and values in all N layers.
- LazyAR (`prefix_layer = N - M`): the lower N - M layers see only the context and a learned query
  per level, so they are computed once per request, for every level and every beam together. Only
  the top M layers take the beam's prefix; per beam and level the cost is M layers, not N.

Training is one teacher-forced pass for both. `start` + `step` are the fast decoding path; the
parity tests hold them to the full pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import ModelConfig
from genrec.model.layers import KeyValues, TransformerBlock

# Marks padding in item-row tensors (recent items); never a valid row.
PAD_ITEM = -1
# Standard deviation of the learned position, query and start vectors: small next to the
# embeddings, as in GPT-2, so that they start as gentle offsets.
INIT_STD = 0.02


@dataclass(frozen=True)
class SidSpace:
    """What the decoder must know about the codebook: per-level vocabulary sizes and each item's ID."""

    level_sizes: list[int]
    # [n_items, levels] int64; row i is the SID of item row i.
    codes: np.ndarray

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def items(self) -> int:
        return int(self.codes.shape[0])


@dataclass
class Context:
    """Embedded context tokens [B, C, d] and their padding mask [B, C] (True: padding)."""

    tokens: Tensor
    pad: Tensor


@dataclass
class DecodingState:
    """Per-request work done once, plus the per-beam caches that grow one level at a time."""

    # Keys/values of the context in every layer from prefix_layer up: [B, heads, C, hd].
    memory: list[KeyValues]
    memory_pad: Tensor
    # The level tokens as they enter layer prefix_layer, before the prefix is added: [B, L, d].
    level_inputs: Tensor
    # One cache per layer from prefix_layer up: [B, W, heads, l, hd]; None before level 0.
    caches: list[KeyValues] | None = None

    def reorder(self, source_beam: Tensor) -> None:
        """Keeps, for each new beam, the cache of the beam it extends. source_beam [B, W']."""
        if self.caches is None:
            return
        rows = torch.arange(source_beam.shape[0], device=source_beam.device)[:, None]
        self.caches = [KeyValues(c.keys[rows, source_beam], c.values[rows, source_beam]) for c in self.caches]


class SidDecoder(nn.Module):
    """Context embedding + N blocks + one output head per SID level (+ an optional value head)."""

    item_codes: Tensor  # buffer [n_items, L]: the SID of every item row

    def __init__(self, config: ModelConfig, space: SidSpace, prefix_layer: int, summary_dim: int = 0,
                 value_head: bool = False) -> None:
        super().__init__()
        if not 0 <= prefix_layer < config.layers:
            raise ValueError(f"prefix_layer must be in [0, {config.layers}), got {prefix_layer}")
        d = config.d_model
        self.config = config
        self.level_sizes = list(space.level_sizes)
        self.prefix_layer = prefix_layer
        self.summary_dim = summary_dim
        self.register_buffer("item_codes", torch.as_tensor(space.codes, dtype=torch.long), persistent=True)
        # Code embeddings serve twice: as the prefix input of the decoder and inside item vectors.
        self.code_embeddings = nn.ModuleList(nn.Embedding(size, d) for size in self.level_sizes)
        self.item_embedding = nn.Embedding(space.items, d) if config.item_embedding else None
        self.recency = nn.Parameter(torch.randn(config.recent_items, d) * INIT_STD)
        self.context_start = nn.Parameter(torch.randn(1, 1, d) * INIT_STD)
        self.summary_projection = nn.Linear(summary_dim, d) if summary_dim else None
        self.level_queries = nn.Parameter(torch.randn(space.levels, d) * INIT_STD)
        self.first_prefix = nn.Parameter(torch.randn(d) * INIT_STD)  # the "previous code" of level 0
        ffn_dim = config.ffn_multiplier * d
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.heads, ffn_dim, config.dropout) for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, size) for size in self.level_sizes)
        self.value_head = nn.Linear(d, 1) if value_head else None

    @property
    def kind(self) -> str:
        return "ar" if self.prefix_layer == 0 else "lazyar"

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    # -- context -----------------------------------------------------------------------------------

    def item_vectors(self, rows: Tensor) -> Tensor:
        """Embeds item rows (any shape; PAD_ITEM allowed, its vector is meaningless and masked)."""
        safe = rows.clamp(min=0)
        vectors = self.item_embedding(safe) if self.item_embedding is not None else 0.0
        if self.config.code_embedding:
            codes = self.item_codes[safe]
            for level, table in enumerate(self.code_embeddings):
                vectors = vectors + table(codes[..., level])
        return vectors  # type: ignore[return-value]

    def embed_context(self, recent: Tensor, summaries: Tensor | None = None) -> Context:
        """recent [B, R'] item rows, most recent first, PAD_ITEM-padded at the end (R' <= R);
        summaries [B, K, summary_dim] or None."""
        batch, length = recent.shape
        parts = [self.context_start.expand(batch, 1, -1)]
        pads = [torch.zeros(batch, 1, dtype=torch.bool, device=recent.device)]
        if self.summary_projection is not None:
            if summaries is None:
                raise ValueError("this decoder was built with summary tokens: pass summaries")
            parts.append(self.summary_projection(summaries))
            pads.append(torch.zeros(summaries.shape[:2], dtype=torch.bool, device=recent.device))
        parts.append(self.item_vectors(recent) + self.recency[:length])
        pads.append(recent < 0)
        tokens = F.dropout(torch.cat(parts, dim=1), self.config.dropout, self.training)
        return Context(tokens, torch.cat(pads, dim=1))

    # -- teacher-forced pass (training and the reference) ----------------------------------------

    def prefix_embeddings(self, codes: Tensor) -> Tensor:
        """The "previous code" input of every level: [..., L] codes -> [..., L, d] (c_{l-1}, l >= 1)."""
        first = self.first_prefix.expand(*codes.shape[:-1], 1, -1)
        previous = [self.code_embeddings[level](codes[..., level]) for level in range(self.levels - 1)]
        return torch.cat([first, torch.stack(previous, dim=-2)], dim=-2) if previous else first

    def attention_mask(self, pad: Tensor) -> Tensor:
        """[B, 1, C + L, C + L]: context attends to context; level l to context and levels <= l."""
        batch, context_len = pad.shape
        levels = self.levels
        total = context_len + levels
        allowed = torch.zeros(total, total, dtype=torch.bool, device=pad.device)
        allowed[:, :context_len] = True
        allowed[context_len:, context_len:] = torch.ones(levels, levels, dtype=torch.bool,
                                                         device=pad.device).tril()
        return (allowed[None] & ~torch.cat([pad, pad.new_zeros(batch, levels)], 1)[:, None, :])[:, None]

    def forward(self, recent: Tensor, codes: Tensor, summaries: Tensor | None = None
                ) -> tuple[list[Tensor], Tensor | None]:
        """Training pass (one call, so DDP sees every parameter): context, then teacher forcing."""
        return self.teacher_forced(self.embed_context(recent, summaries), codes)

    def teacher_forced(self, context: Context, codes: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """Teacher forcing: codes [B, L] are the targets. Returns per-level logits [B, K_l] and the
        value prediction [B] (None without a value head)."""
        hidden = self.level_hidden(context, codes)
        logits = [head(hidden[:, level]) for level, head in enumerate(self.heads)]
        value = self.value_head(hidden[:, 0]).squeeze(-1) if self.value_head is not None else None
        return logits, value

    def level_hidden(self, context: Context, codes: Tensor) -> Tensor:
        """Final hidden states of the level tokens, [B, L, d]."""
        batch, context_len, _ = context.tokens.shape
        allowed = self.attention_mask(context.pad)
        x = torch.cat([context.tokens, self.level_queries.expand(batch, -1, -1)], dim=1)
        prefix = F.dropout(self.prefix_embeddings(codes), self.config.dropout, self.training)
        for index, block in enumerate(self.blocks):
            if index == self.prefix_layer:
                x = torch.cat([x[:, :context_len], x[:, context_len:] + prefix], dim=1)
            x, _ = block(x, allowed)
        return self.final_norm(x[:, context_len:])

    def code_log_probs(self, context: Context, codes: Tensor) -> Tensor:
        """Reference scorer: log p(c_l | context, c_<l) of given IDs, [B, L], by the full pass."""
        logits, _ = self.teacher_forced(context, codes)
        return torch.stack([
            torch.log_softmax(level_logits, -1).gather(-1, codes[:, level, None]).squeeze(-1)
            for level, level_logits in enumerate(logits)
        ], dim=-1)

    # -- fast decoding -----------------------------------------------------------------------------

    def start(self, context: Context) -> DecodingState:
        """Work done once per request: the context through every layer (its keys/values are the
        memory of the layers that decode per beam) and, for LazyAR, the level queries through the
        lower layers."""
        batch, context_len, _ = context.tokens.shape
        allowed = self.attention_mask(context.pad)
        real = ~torch.cat([context.pad, context.pad.new_zeros(batch, self.levels)], dim=1)
        x = torch.cat([context.tokens, self.level_queries.expand(batch, -1, -1)], dim=1)
        for block in self.blocks[: self.prefix_layer]:
            x, _ = block(x, allowed, real=real)
        level_inputs = x[:, context_len:]
        memory = []
        context_x = x[:, :context_len]
        context_allowed = allowed[:, :, :context_len, :context_len]
        for block in self.blocks[self.prefix_layer:]:
            context_x, kv = block(context_x, context_allowed, return_kv=True, real=real[:, :context_len])
            memory.append(kv)  # type: ignore[arg-type]
        return DecodingState(memory, context.pad, level_inputs)

    def step(self, state: DecodingState, level: int, previous_codes: Tensor | None) -> Tensor:
        """Log-probabilities of level `level`'s codes for every beam: [B, W, K_level].

        previous_codes [B, W] are the beams' codes at level - 1 (None at level 0, one beam each);
        the beams' caches must already be reordered to match them."""
        batch = state.level_inputs.shape[0]
        if previous_codes is None:
            prefix = self.first_prefix.expand(batch, 1, -1)
        else:
            prefix = self.code_embeddings[level - 1](previous_codes)
        x = state.level_inputs[:, level, None] + prefix  # [B, W, d]
        caches: list[KeyValues | None] = [None] * len(state.memory)
        if state.caches is not None:
            caches = [*state.caches]
        new_caches = []
        blocks: list[TransformerBlock] = list(self.blocks[self.prefix_layer:])  # type: ignore[arg-type]
        for block, memory, cache in zip(blocks, state.memory, caches):
            x, kv = block.step(x, memory, state.memory_pad, cache)
            new_caches.append(kv)
        state.caches = new_caches
        return torch.log_softmax(self.heads[level](self.final_norm(x)), dim=-1)

    @torch.inference_mode()
    def verify(self, state: DecodingState, rows: Tensor, sequences: Tensor) -> list[Tensor]:
        """Log-probabilities at every level of full-length code sequences [N, L], sequence n belonging
        to request `rows[n]` of `state`: element l is [N, K_l], the distribution of code l given the
        sequence's codes < l. One pass through the prefix-dependent layers, causal over the level
        tokens, exactly what `step` computes level by level (DARE verifies its drafts with it)."""
        x = state.level_inputs[rows] + self.prefix_embeddings(sequences)  # [N, L, d]
        groups = [(int(row), torch.nonzero(rows == row).squeeze(1)) for row in torch.unique(rows).tolist()]
        blocks: list[TransformerBlock] = list(self.blocks[self.prefix_layer:])  # type: ignore[arg-type]
        for block, memory in zip(blocks, state.memory):
            x = block.verify(x, memory, state.memory_pad, rows, groups)
        hidden = self.final_norm(x)
        return [torch.log_softmax(head(hidden[:, level]), dim=-1) for level, head in enumerate(self.heads)]


class ARDecoder(SidDecoder):
    """The standard autoregressive baseline: every layer sees the generated prefix."""

    def __init__(self, config: ModelConfig, space: SidSpace, summary_dim: int = 0,
                 value_head: bool = False) -> None:
        super().__init__(config, space, prefix_layer=0, summary_dim=summary_dim, value_head=value_head)


class LazyARDecoder(SidDecoder):
    """LazyAR: only the top `config.top_layers` layers see the generated prefix."""

    def __init__(self, config: ModelConfig, space: SidSpace, summary_dim: int = 0,
                 value_head: bool = False) -> None:
        super().__init__(config, space, prefix_layer=config.layers - config.top_layers,
                         summary_dim=summary_dim, value_head=value_head)


def build_decoder(config: ModelConfig, space: SidSpace, summary_dim: int = 0,
                  value_head: bool = False) -> SidDecoder:
    """The decoder `config.decoder` names ("lazyar" or "ar")."""
    kinds = {"lazyar": LazyARDecoder, "ar": ARDecoder}
    if config.decoder not in kinds:
        raise ValueError(f"unknown decoder {config.decoder!r}: use lazyar or ar")
    return kinds[config.decoder](config, space, summary_dim=summary_dim, value_head=value_head)
