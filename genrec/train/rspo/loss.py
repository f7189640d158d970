"""The RSPO objective as a library piece: ranking-guided softmax preference losses over candidate
lists, their DCG-based weights, and the list-wise KL drift guard.

With s(y) = log pi(y) - log pi_ref(y), each positive y_i of a list adds

    w_i * -log( e^{beta s_i} / (e^{beta s_i} + sum_{j: r_j < r_i} e^{beta s_j}) )

a softmax over the candidates worse than it (list-wise, not pairwise). w_i is its ranking gain: the
gain g_i (transformed value) times the discount it gains by moving to the top,
g_i * (1 - 1/log2(2 + rank_i)) ("dcg"), optionally divided by the list's ideal DCG ("ndcg"). Only
y_i's own DCG term is counted; the shift of the items it overtakes is left out (LambdaRank-style).
`loss="dpo"` is the pairwise ablation on the same lists: the mean over worse j of
-log sigmoid(beta (s_i - s_j)), with the same weights and drift guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.config import RspoConfig


def discounts(ranks: Tensor, list_size: int) -> Tensor:
    """DCG discount 1/log2(2 + rank) of a 0-based rank inside the list, 0 past its end."""
    inside = ranks < list_size
    return torch.where(inside, 1.0 / torch.log2(ranks.clamp(max=list_size).float() + 2.0),
                       torch.zeros((), device=ranks.device))


def gain_weights(gains: Tensor, valid: Tensor, ranks: Tensor, list_size: int, mode: str) -> Tensor:
    """[B, C] weight of every positive (0 elsewhere): the gain of moving it to the top."""
    positive = valid & (gains > 0)
    if mode == "none":
        return positive.float()
    weights = torch.where(positive, gains * (discounts(torch.zeros_like(ranks), list_size)
                                             - discounts(ranks, list_size)), 0.0)
    if mode == "ndcg":
        ideal_gains = torch.where(valid, gains, 0.0).sort(dim=-1, descending=True).values
        positions = torch.arange(gains.shape[-1], device=gains.device)
        ideal = (ideal_gains * discounts(positions, list_size)).sum(-1, keepdim=True)
        weights = weights / ideal.clamp(min=torch.finfo(weights.dtype).tiny)
    elif mode != "dcg":
        raise ValueError(f"unknown gain weighting {mode!r}: use dcg, ndcg or none")
    return weights


def preference_losses(s: Tensor, gains: Tensor, valid: Tensor, beta: float, kind: str) -> Tensor:
    """[B, C] loss of every positive i (0 elsewhere) against the valid candidates j with
    r_j < r_i. kind "rspo": -log softmax of beta*s over {i} and those j; "dpo": the mean over those j
    of -log sigmoid(beta (s_i - s_j))."""
    logits = beta * s
    positive = valid & (gains > 0)
    worse = valid[:, None, :] & (gains[:, None, :] < gains[:, :, None])  # [B, i, j]
    if kind == "rspo":
        eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)[None]
        members = torch.where(worse | eye, logits[:, None, :], float("-inf"))
        loss = torch.logsumexp(members, dim=-1) - logits
    elif kind == "dpo":
        pairs = -F.logsigmoid(logits[:, :, None] - logits[:, None, :])
        loss = torch.where(worse, pairs, 0.0).sum(-1) / worse.sum(-1).clamp(min=1)
    else:
        raise ValueError(f"unknown preference loss {kind!r}: use rspo or dpo")
    return torch.where(positive & worse.any(-1), loss, 0.0)


def list_kl(log_pi: Tensor, log_ref: Tensor, valid: Tensor) -> Tensor:
    """[B] KL(pi || pi_ref) with both renormalised over each list's valid candidates."""
    p = torch.log_softmax(log_pi.masked_fill(~valid, float("-inf")), dim=-1)
    q = torch.log_softmax(log_ref.masked_fill(~valid, float("-inf")), dim=-1)
    p, q = torch.where(valid, p, 0.0), torch.where(valid, q, 0.0)
    return torch.where(valid, p.exp() * (p - q), 0.0).sum(-1)


@dataclass
class LossParts:
    total: Tensor
    preference: Tensor
    kl: Tensor


def rspo_objective(log_pi: Tensor, log_ref: Tensor, gains: Tensor, valid: Tensor, ranks: Tensor,
                   config: RspoConfig) -> LossParts:
    """The batch loss: gain-weighted preference losses summed per list, averaged over lists, plus
    kl_weight times the mean list KL."""
    s = log_pi - log_ref
    weights = gain_weights(gains, valid, ranks, config.gain_cutoff or config.candidates, config.gain)
    preference = (weights * preference_losses(s, gains, valid, config.beta, config.loss)).sum(-1).mean()
    kl = list_kl(log_pi, log_ref, valid).mean()
    return LossParts(preference + config.kl_weight * kl, preference.detach(), kl.detach())
