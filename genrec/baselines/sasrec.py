"""SASRec (Kang and McAuley, 2018) over item IDs, trained with the full softmax over the catalogue:
the baseline several reproductions put at about R@10 0.085 on Amazon Beauty, well above the figures
of the original paper's sampled-negative training.

Sequences are item rows, oldest first, left-padded with -1 to a fixed length, with absolute
positions, as in SASRec's reference code. Attention is causal, and no real position ever attends to
padding (a padding position attends to itself only, so no row is empty): a real position's output
is that of the real items alone at the same positions (tests/test_baselines.py holds this).
The score of an item is the dot product of the last position's output with the item's embedding
(the input embedding, tied).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.config import BaselinesConfig
from genrec.data.schema import SPLIT_COLUMN
from genrec.model.layers import TransformerBlock
from genrec.train.data import ExampleSet, item_rows

PAD = -1
# Weights start small (as in the generator), so the first steps neither saturate the softmax nor
# blow up the logits of the tied output layer.
INIT_STD = 0.02


class SASRec(nn.Module):
    def __init__(self, items: int, config: BaselinesConfig) -> None:
        super().__init__()
        d = config.sasrec_d_model
        self.items = items
        self.max_len = config.sasrec_max_len
        self.heads = config.sasrec_heads
        self.dropout = config.sasrec_dropout
        # Row 0 is padding; item row r is embedding r + 1.
        self.item_embedding = nn.Embedding(items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.sasrec_max_len, d)
        # The generator's pre-norm block (full-sequence pass), with a d-wide feed-forward as in SASRec.
        self.layers = nn.ModuleList(TransformerBlock(d, config.sasrec_heads, d, config.sasrec_dropout)
                                    for _ in range(config.sasrec_layers))
        self.final_norm = nn.LayerNorm(d)
        for table in (self.item_embedding, self.position_embedding):
            nn.init.normal_(table.weight, std=INIT_STD)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def hidden(self, sequences: Tensor, positions: Tensor | None = None) -> Tensor:
        """[B, L] item rows (left-padded with -1, L <= max_len) -> [B, L, d]. `positions` [L] are the
        slots' position indices (0..L-1 unless given: a test scores the real items of a padded row
        alone, at the positions they had there)."""
        batch, length = sequences.shape
        real = sequences >= 0
        if positions is None:
            positions = torch.arange(length, device=sequences.device)
        x = self.item_embedding(sequences.clamp(min=-1) + 1) + self.position_embedding(positions)[None]
        x = F.dropout(x, self.dropout, self.training) * real[..., None]
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        # Real keys only, except that a padding query keeps itself (a row with no key is NaN).
        allowed = causal[None] & (real[:, None, :] | torch.eye(length, dtype=torch.bool,
                                                                device=sequences.device)[None])
        for layer in self.layers:
            x, _ = layer(x, allowed[:, None])
        return self.final_norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """[..., d] -> [..., items]: scores against every item (the padding row left out)."""
        return hidden @ self.item_embedding.weight[1:].T

    @torch.inference_mode()
    def recommend(self, sequences: Tensor, top_k: int, exclude: Tensor | None = None) -> Tensor:
        """Top-K item rows [B, top_k] after each sequence; `exclude` [B, E] rows (-1 padded) never."""
        scores = self.logits(self.hidden(sequences)[:, -1])
        if exclude is not None:
            keep = exclude >= 0
            scores[torch.nonzero(keep)[:, 0], exclude[keep]] = float("-inf")
        return scores.topk(min(top_k, self.items), dim=1).indices


def user_sequences(splits: pd.DataFrame, item_ids: np.ndarray | pd.Index, max_len: int) -> np.ndarray:
    """[users, max_len + 1] each user's last max_len + 1 training items (rows, oldest first), left-
    padded with -1: position t's input predicts position t + 1. Items without a row are dropped."""
    frame = splits[splits[SPLIT_COLUMN] == "train"]
    codes, _ = pd.factorize(frame["user_id"])
    order = np.argsort(codes, kind="stable")  # by user, each user's rows in time order
    rows = item_rows(frame["item_id"].iloc[order], item_ids)
    users = codes[order]
    keep = rows >= 0
    rows, users = rows[keep], users[keep]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    out = np.full((len(starts), max_len + 1), PAD, dtype=np.int64)
    for index, (start, end) in enumerate(zip(starts, ends)):
        tail = rows[max(start, end - max_len - 1):end]
        out[index, max_len + 1 - len(tail):] = tail
    return out[(out >= 0).sum(axis=1) >= 2]  # a sequence needs an input and a target


def request_sequences(requests: ExampleSet, max_len: int) -> np.ndarray:
    """[n, max_len] each request's context (ExampleSet rows are most recent first) oldest first, left-
    padded with -1."""
    recent = requests.recent[:, :max_len]
    out = np.full((len(requests), max_len), PAD, dtype=np.int64)
    width = recent.shape[1]
    out[:, max_len - width:] = recent[:, ::-1]
    # Padding sits at the end of a most-recent-first row, so after the flip it is already on the left.
    return out


@dataclass
class SASRecRun:
    model: SASRec
    epochs: int
    steps: int
    seconds: float
    losses: list[float]


def train_sasrec(sequences: np.ndarray, items: int, config: BaselinesConfig, seed: int,
                 log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic) -> SASRecRun:
    """Full-softmax next-item training on every position of every sequence, within
    `config.sasrec_minutes` (checked after each step) and `config.sasrec_epochs`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SASRec(items, config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.sasrec_lr,
                                  weight_decay=config.sasrec_weight_decay)
    started = clock()
    budget = 60.0 * config.sasrec_minutes
    steps, losses, epoch = 0, [], 0
    data = torch.as_tensor(sequences)
    while epoch < config.sasrec_epochs and clock() - started < budget:
        model.train()
        order = torch.as_tensor(rng.permutation(len(data)))
        total, count = 0.0, 0
        for first in range(0, len(order), config.sasrec_batch_size):
            batch = data[order[first:first + config.sasrec_batch_size]]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            hidden = model.hidden(inputs)
            mask = targets >= 0
            loss = F.cross_entropy(model.logits(hidden[mask]), targets[mask])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            steps += 1
            total, count = total + float(loss.detach()) * int(mask.sum()), count + int(mask.sum())
            if clock() - started >= budget:
                break
        epoch += 1
        losses.append(total / max(count, 1))
        log(f"sasrec epoch {epoch} loss {losses[-1]:.4f} {clock() - started:.0f}s")
    model.eval()
    return SASRecRun(model, epoch, steps, clock() - started, losses)


def sasrec_recommend(model: SASRec, requests: ExampleSet, top_k: int, batch_size: int,
                     exclude_last: int = 0) -> np.ndarray:
    """[n, top_k] item rows for every request (its context as the input sequence)."""
    sequences = torch.as_tensor(request_sequences(requests, model.max_len))
    out = []
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first:first + batch_size]
        # The last `exclude_last` items of the (oldest-first) context are never recommended.
        exclude = batch[:, -exclude_last:] if exclude_last else None
        out.append(model.recommend(batch, top_k, exclude=exclude).numpy())
    return np.concatenate(out) if out else np.zeros((0, top_k), dtype=np.int64)
