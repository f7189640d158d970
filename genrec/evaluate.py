"""Leave-one-out, full-catalogue evaluation of a semantic-ID decoder.

Every request's top-K comes from the trie-constrained beam search over the whole catalogue (no
sampled negatives, no candidate list). Recall@K (= hit rate, one target per user), NDCG@K, Value@K
(the target's value when it is in the top K, else 0, averaged over users) and coverage@K (share of
the catalogue that appears in at least one top-K list). A model's value tilt, passed in, re-ranks the
final beam as serving does (genrec.model.value_tilt).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genrec.model.beam import TrieTables, beam_search
from genrec.model.decoder import SidDecoder
from genrec.model.value_tilt import ValueTilt, in_force
from genrec.train.data import ExampleSet
from genrec.train.summaries import SummaryProvider

CUTOFFS = (5, 10)


def hit_ranks(recommended: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its list; -1 if absent (or the target has no ID)."""
    found = (recommended == targets[:, None]) & (targets[:, None] >= 0)
    return np.where(found.any(axis=1), found.argmax(axis=1), -1)


def user_terms(ranks: np.ndarray, values: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each user's recall@k, ndcg@k and value@k term (their means are the metrics), kept per user
    so that benchmarks can bootstrap over users."""
    hit = (ranks >= 0) & (ranks < k)
    return {f"recall@{k}": hit.astype(np.float64),
            f"ndcg@{k}": np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0),
            f"value@{k}": np.where(hit, values, 0.0)}


def ranking_metrics(recommended: np.ndarray, targets: np.ndarray, values: np.ndarray, catalogue_size: int,
                    cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    ranks = hit_ranks(recommended, targets)
    metrics: dict[str, float] = {"users": float(len(targets))}
    for k in cutoffs:
        shown = recommended[:, :k]
        for name, terms in user_terms(ranks, values, k).items():
            metrics[name] = float(terms.mean()) if len(terms) else 0.0
        metrics[f"coverage@{k}"] = float(len(np.unique(shown[shown >= 0])) / max(catalogue_size, 1))
    return metrics


@torch.inference_mode()
def recommend(decoder: SidDecoder, requests: ExampleSet, tables: TrieTables, beam_widths: Sequence[int],
              top_k: int, batch_size: int, summaries: SummaryProvider | None = None,
              device: torch.device | str = "cpu", exclude_history: bool = False,
              value_tilt: ValueTilt | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-K item rows and log-probs for every request, [n, K] each. Requests are batched by
    history length so that padding stays small. With `exclude_history` the items of a request's
    context (its last R items) are never recommended to it. With a `value_tilt` (the model
    artefact's), the search returns its final beam and the tilt picks the K, as the predictor does;
    the scores are then the tilted ones."""
    tilt = in_force(value_tilt)
    pool = tilt.pool(top_k, list(beam_widths)) if tilt is not None else top_k
    was_training = decoder.training
    decoder.eval()
    items = np.full((len(requests), top_k), -1, dtype=np.int64)
    scores = np.full((len(requests), top_k), -np.inf, dtype=np.float32)
    order = np.argsort(requests.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        longest = max(1, int(requests.lengths[index].max()))
        recent = torch.as_tensor(requests.recent[index, :longest], device=device)
        summary = None
        if summaries is not None:
            summary = torch.as_tensor(summaries(requests.users[index], requests.cutoffs[index]),
                                      dtype=torch.float32, device=device)
        result = beam_search(decoder, decoder.embed_context(recent, summary), tables, beam_widths, pool,
                             exclude=recent if exclude_history else None)
        found, found_scores = result.items.cpu().numpy(), result.scores.cpu().numpy()
        if tilt is not None:
            found, found_scores = tilt.rerank(found, found_scores, top_k)
        items[index] = found
        scores[index] = found_scores
    decoder.train(was_training)
    return items, scores


def evaluate(decoder: SidDecoder, requests: ExampleSet, tables: TrieTables, beam_widths: Sequence[int],
             top_k: int, batch_size: int, summaries: SummaryProvider | None = None,
             cutoffs: Sequence[int] = CUTOFFS, device: torch.device | str = "cpu",
             exclude_history: bool = False, value_tilt: ValueTilt | None = None) -> dict[str, float]:
    if top_k < max(cutoffs):
        raise ValueError(f"top_k {top_k} is below the largest cutoff {max(cutoffs)}")
    items, _ = recommend(decoder, requests, tables, beam_widths, top_k, batch_size, summaries, device,
                         exclude_history, value_tilt)
    return ranking_metrics(items, requests.targets, requests.values, decoder.item_codes.shape[0], cutoffs)
