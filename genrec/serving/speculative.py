"""DARE: retrieval-drafted speculative beam search over semantic IDs.

Exact beam search (`genrec.model.beam.beam_search`) runs one decoder pass per SID level. DARE
replaces most of them:

- **Retrieval pool.** Users are clustered (k-means on their summary vector, or on the mean of the
  model's own item vectors over their history when there are no summaries). Each cluster keeps the
  items its users interact with, ranked by frequency, indexed by every SID prefix: prefix -> ranked
  full-ID completions. A global pool over all users is the fallback when a cluster has too few.
- **Draft.** For every beam whose next-level distribution is not known yet, retrieve the top-m
  completions of its prefix (at the root, m per beam the first level will keep). Drafts come from
  the trie's own items, so every draft is a valid ID.
- **Verify.** All draft sequences of all requests in the batch go through the prefix-dependent
  layers in one parallel pass (`SidDecoder.verify`): causal over the L level tokens, attending to the
  request's cached context. That gives the exact distribution at every position of every draft,
  so a beam that lies on a verified draft needs no further pass at the next level.
- **Relaxed acceptance.** At a level where some of the exact top-b children are not covered by a
  verified draft, relaxed verification lets a covered child whose draft token is in the model's
  top-k there *and* has probability >= p stand in for an uncovered one (DARE's k=2, p=0.1). Only when
  accepted drafts run out is another pass needed.

Scores are always the model's exact log-probabilities (from the verify passes); only which beams
survive can differ from exact search, and only through relaxed acceptance. With acceptance off
(`strict=True`) the search keeps exactly the beams exact beam search keeps, so it returns the same
top-K, in fewer passes whenever drafts cover the surviving beams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genrec.model.beam import BeamResult, TrieTables, level_widths
from genrec.model.decoder import Context, SidDecoder
from genrec.sid.trie import ChildTable

POOL_FILE = "dare_pool.npz"
MODES = ("summary", "history")


class PoolError(ValueError):
    """A retrieval pool cannot be built or read."""


# -- the retrieval pool --------------------------------------------------------------------------------


class RetrievalPool:
    """Per-cluster rankings of item rows, indexed by SID prefix, plus a global fallback ranking."""

    def __init__(self, codes: np.ndarray, mode: str, centroids: np.ndarray, rankings: list[np.ndarray],
                 global_ranking: np.ndarray, root_cap: int, prefix_cap: int) -> None:
        if mode not in MODES:
            raise PoolError(f"pool mode must be one of {MODES}, got {mode!r}")
        self.codes = np.asarray(codes, dtype=np.int64)
        self.mode = mode
        self.centroids = np.asarray(centroids, dtype=np.float32).reshape(len(rankings), -1) \
            if rankings else np.zeros((0, 0), dtype=np.float32)
        self.rankings = [np.asarray(r, dtype=np.int64) for r in rankings]
        self.global_ranking = np.asarray(global_ranking, dtype=np.int64)
        self.root_cap, self.prefix_cap = root_cap, prefix_cap
        self._index = [self._prefix_index(r) for r in self.rankings]
        self._global = self._prefix_index(self.global_ranking)

    def _prefix_index(self, ranking: np.ndarray) -> dict[tuple[int, ...], list[int]]:
        """prefix -> item rows with that prefix, best first (capped: only the top few are drafted)."""
        index: dict[tuple[int, ...], list[int]] = {}
        levels = self.codes.shape[1]
        for row in ranking.tolist():
            sid = tuple(self.codes[row].tolist())
            for length in range(levels):
                rows = index.setdefault(sid[:length], [])
                if len(rows) < (self.root_cap if length == 0 else self.prefix_cap):
                    rows.append(row)
        return index

    @property
    def clusters(self) -> int:
        return len(self.rankings)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest cluster of each (normalised) user vector; -1 (global pool) for a zero vector."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if not self.clusters or vectors.size == 0:
            return np.full(len(vectors), -1, dtype=np.int64)
        normed = _normalise(vectors)
        out = (normed @ self.centroids.T).argmax(1)
        out[np.linalg.norm(vectors, axis=1) == 0] = -1
        return out

    def drafts(self, cluster: int, prefix: tuple[int, ...], count: int) -> list[int]:
        """Up to `count` item rows completing `prefix`: the cluster's most frequent, then the global."""
        out: list[int] = []
        sources = ([self._index[cluster]] if 0 <= cluster < self.clusters else []) + [self._global]
        for index in sources:
            for row in index.get(prefix, ()):
                if row not in out:
                    out.append(row)
                    if len(out) >= count:
                        return out
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        lengths = np.asarray([len(r) for r in self.rankings], dtype=np.int64)
        flat = np.concatenate(self.rankings) if self.rankings else np.zeros(0, dtype=np.int64)
        with open(path, "wb") as handle:
            np.savez_compressed(handle, mode=np.asarray(self.mode), centroids=self.centroids,
                                lengths=lengths, rankings=flat, global_ranking=self.global_ranking,
                                caps=np.asarray([self.root_cap, self.prefix_cap]))
        return path

    @classmethod
    def load(cls, path: str | Path, codes: np.ndarray) -> RetrievalPool:
        try:
            with np.load(path) as data:
                lengths = data["lengths"]
                flat = data["rankings"]
                rankings = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
                root_cap, prefix_cap = (int(x) for x in data["caps"])
                pool = cls(codes, str(data["mode"]), data["centroids"], rankings, data["global_ranking"],
                           root_cap, prefix_cap)
        except (OSError, KeyError, ValueError) as exc:
            raise PoolError(f"cannot read the DARE pool {path}: {exc}") from exc
        if len(pool.global_ranking) and pool.global_ranking.max() >= len(codes):
            raise PoolError(f"the DARE pool {path} was built for another catalogue: rebuild it")
        return pool


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


@torch.inference_mode()
def history_vectors(decoder: SidDecoder, rows: Tensor) -> np.ndarray:
    """A user vector from history: the mean of the model's own item vectors over the recent rows
    ([B, R'] most recent first, PAD_ITEM-padded); zeros for an empty history."""
    real = (rows >= 0).float()
    vectors = decoder.item_vectors(rows) * real[..., None]
    return (vectors.sum(1) / real.sum(1, keepdim=True).clamp(min=1)).cpu().numpy()


def summary_vectors(summaries: np.ndarray) -> np.ndarray:
    """A user vector from summary tokens [B, K, d]: their mean."""
    return np.asarray(summaries, dtype=np.float32).mean(axis=1)


def build_pool(codes: np.ndarray, histories: Sequence[Sequence[int]], vectors: np.ndarray, mode: str,
               clusters: int, root_cap: int, prefix_cap: int, seed: int = 0) -> RetrievalPool:
    """Clusters users by `vectors` and ranks each cluster's items by how often its users interact
    with them. histories: item rows per user (any order); vectors: [users, D] in the same order."""
    from sklearn.cluster import KMeans

    if len(histories) != len(vectors):
        raise PoolError("need one vector per user history")
    counts_all = np.zeros(len(codes), dtype=np.int64)
    for history in histories:
        np.add.at(counts_all, np.asarray(history, dtype=np.int64), 1)
    global_ranking = _ranking(counts_all)
    usable = np.flatnonzero(np.linalg.norm(np.asarray(vectors, dtype=np.float32), axis=1) > 0)
    k = min(clusters, len(usable))
    if k < 2:
        return RetrievalPool(codes, mode, np.zeros((0, 0)), [], global_ranking, root_cap, prefix_cap)
    normed = _normalise(np.asarray(vectors, dtype=np.float32)[usable])
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(normed)
    centroids = _normalise(np.stack([normed[labels == c].mean(0) for c in range(k)]))
    rankings = []
    for c in range(k):
        counts = np.zeros(len(codes), dtype=np.int64)
        for user in usable[labels == c]:
            np.add.at(counts, np.asarray(histories[user], dtype=np.int64), 1)
        rankings.append(_ranking(counts))
    return RetrievalPool(codes, mode, centroids, rankings, global_ranking, root_cap, prefix_cap)


def _ranking(counts: np.ndarray) -> np.ndarray:
    seen = np.flatnonzero(counts)
    return seen[np.argsort(-counts[seen], kind="stable")]


# -- verification: every position of many sequences in one pass ----------------------------------------


# -- the search ------------------------------------------------------------------------------------------


@dataclass
class DareStats:
    """Per request: verify passes (a pass a request takes part in), draft tokens verified, draft
    tokens accepted (by the relaxed rule, along each draft up to its first rejection)."""

    passes: list[int] = field(default_factory=list)
    draft_tokens: int = 0
    accepted_tokens: int = 0


@dataclass
class _Request:
    row: int
    cluster: int
    level: int = 0
    beams: list[tuple[tuple[int, ...], float]] = field(default_factory=lambda: [((), 0.0)])
    # prefix -> (pass number, sequence index) where its next-level distribution was computed.
    known: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)
    # prefixes reached along a verified draft whose every token passed relaxed acceptance.
    accepted: set[tuple[int, ...]] = field(default_factory=set)
    done: BeamResult | None = None


@torch.inference_mode()
def dare_beam_search(decoder: SidDecoder, context: Context, tables: TrieTables, beam_widths: Sequence[int],
                     top_k: int, pool: RetrievalPool, clusters: Sequence[int], drafts_per_beam: int,
                     accept_top_k: int, accept_min_prob: float, strict: bool = False
                     ) -> tuple[BeamResult, DareStats]:
    """Top-K items per request, as `beam_search`, drafting from `pool` (cluster per request, -1 for
    the global pool). `strict` turns relaxed acceptance off: the result is then exact beam search's."""
    levels = decoder.levels
    widths = level_widths(beam_widths, levels)
    state = decoder.start(context)
    device = context.tokens.device
    batch = context.tokens.shape[0]
    requests = [_Request(row, int(clusters[row])) for row in range(batch)]
    stats = DareStats(passes=[0] * batch)
    passes: list[list[Tensor]] = []
    codes = pool.codes
    numpy_children = tables.trie.children
    while True:
        for request in requests:
            _advance(request, passes, tables, numpy_children, widths, top_k, levels, strict)
        blocked = [r for r in requests if r.done is None]
        if not blocked:
            break
        sequences, owners, starts = [], [], []
        for request in blocked:
            stats.passes[request.row] += 1
            count = drafts_per_beam * (widths[0] if request.level == 0 else 1)
            for prefix, _ in request.beams:
                if prefix in request.known:
                    continue
                drafted = pool.drafts(request.cluster, prefix, count)
                if not drafted:
                    drafted = [-1]  # no draft: the prefix alone still gets its own distribution
                for item in drafted:
                    sequence = (list(prefix) + [0] * (levels - len(prefix))) if item < 0 \
                        else codes[item].tolist()
                    sequences.append(sequence)
                    owners.append(request)
                    starts.append(len(prefix) if item >= 0 else -len(prefix) - 1)
        number = len(passes)
        rows = torch.as_tensor([r.row for r in owners], device=device)
        batch_codes = torch.as_tensor(sequences, dtype=torch.long, device=device)
        log_probs = decoder.verify(state, rows, batch_codes)
        passes.append(log_probs)
        # Relaxed acceptance of every draft token at once: in the top-k there and probability >= p,
        # and every earlier draft token of the same draft accepted too.
        ok = torch.zeros(len(sequences), levels, dtype=torch.bool)
        if accept_top_k > 0:
            for level, lp in enumerate(log_probs):
                token = batch_codes[:, level:level + 1]
                top = lp.topk(min(accept_top_k, lp.shape[-1]), dim=-1).indices
                likely = lp.gather(1, token).squeeze(1).exp() >= accept_min_prob
                ok[:, level] = ((top == token).any(-1) & likely).cpu()
        first_drafted = torch.as_tensor([max(start, 0) for start in starts])
        is_draft = torch.arange(levels)[None, :] >= first_drafted[:, None]
        ok = (ok | ~is_draft).cumprod(dim=1).bool() & is_draft
        accepted_rows = ok.tolist()
        for index, (request, sequence, start) in enumerate(zip(owners, sequences, starts)):
            if start < 0:  # a bare prefix: only its own next-level distribution is real
                request.known.setdefault(tuple(sequence[:-start - 1]), (number, index))
                continue
            flags = accepted_rows[index]
            stats.draft_tokens += levels - start
            for position in range(start, levels):
                request.known.setdefault(tuple(sequence[:position]), (number, index))
                if flags[position]:
                    stats.accepted_tokens += 1
                    request.accepted.add(tuple(sequence[:position + 1]))
    items = torch.stack([r.done.items[0] for r in requests])  # type: ignore[union-attr]
    scores = torch.stack([r.done.scores[0] for r in requests])  # type: ignore[union-attr]
    return BeamResult(items, scores), stats


def _advance(request: _Request, passes: list[list[Tensor]], tables: TrieTables,
             numpy_children: list[ChildTable], widths: list[int], top_k: int, levels: int,
             strict: bool) -> None:
    """Moves one request down the levels as far as the known distributions allow."""
    while request.done is None:
        if any(prefix not in request.known for prefix, _ in request.beams):
            return
        level = request.level
        prefixes = [p for p, _ in request.beams]
        # Bookkeeping runs on the CPU whatever the decoder's device (W x K values per level).
        dists = torch.stack([passes[n][level][i] for n, i in (request.known[p] for p in prefixes)]).cpu()
        nodes = np.asarray([_node(numpy_children, p) for p in prefixes], dtype=np.int64)
        children = torch.as_tensor(numpy_children[level][nodes])  # [W, K]
        beam_scores = torch.as_tensor([s for _, s in request.beams], dtype=dists.dtype)
        candidates = (beam_scores[:, None] + dists).masked_fill(children < 0, float("-inf")).view(-1)
        size = dists.shape[-1]
        last = level == levels - 1
        keep = top_k if last else widths[level]
        scores, flat = candidates.topk(min(keep, candidates.numel()))
        live = ~torch.isinf(scores)
        scores, flat = scores[live], flat[live]
        if last:
            rows = children.view(-1)[flat].long()
            items = torch.full((top_k,), -1, dtype=torch.long)
            best = torch.full((top_k,), float("-inf"))
            items[:len(rows)] = rows
            best[:len(rows)] = scores
            request.done = BeamResult(items[None], best[None])
            return
        chosen = [(prefixes[f // size] + (f % size,), float(s))
                  for f, s in zip(flat.tolist(), scores.tolist())]
        if not strict:
            chosen = _relaxed(request, chosen, candidates, prefixes, size)
        request.beams = chosen
        request.level += 1


def _relaxed(request: _Request, chosen: list[tuple[tuple[int, ...], float]], candidates: Tensor,
             prefixes: list[tuple[int, ...]], size: int) -> list[tuple[tuple[int, ...], float]]:
    """Swaps exact-top-b children that no verified draft covers for covered children whose draft
    tokens passed relaxed acceptance, best first, so the next level needs no pass."""
    uncovered = [c for c in chosen if c[0] not in request.known]
    if not uncovered:
        return chosen
    taken = {p for p, _ in chosen}
    spare = []
    for prefix in request.accepted:
        if len(prefix) == request.level + 1 and prefix not in taken and prefix in request.known \
                and prefix[:-1] in prefixes:
            score = float(candidates[prefixes.index(prefix[:-1]) * size + prefix[-1]])
            if score != float("-inf"):
                spare.append((prefix, score))
    if not spare:
        return chosen
    spare.sort(key=lambda c: -c[1])
    drop = sorted(uncovered, key=lambda c: c[1])[:len(spare)]  # the weakest uncovered go first
    dropped = {p for p, _ in drop}
    kept = [c for c in chosen if c[0] not in dropped] + spare[:len(drop)]
    return sorted(kept, key=lambda c: -c[1])


def _node(children: list[ChildTable], prefix: tuple[int, ...]) -> int:
    node = 0
    for level, code in enumerate(prefix):
        node = int(children[level][node, code])
    return node


def cluster_of_requests(pool: RetrievalPool, decoder: SidDecoder, recent: Tensor,
                        summaries: np.ndarray | None) -> np.ndarray:
    """The pool cluster of each request: by summary in a summary pool (when given), else by history."""
    if pool.mode == "summary" and summaries is not None:
        return pool.assign(summary_vectors(summaries))
    return pool.assign(history_vectors(decoder, recent))


def pool_from_histories(decoder: SidDecoder, histories: Mapping[str, Sequence[int]],
                        summaries: Mapping[str, np.ndarray] | None, clusters: int, drafts: int,
                        max_width: int, seed: int = 0) -> RetrievalPool:
    """Builds a pool from item-row histories per user (oldest first); clusters by summary when every
    user with a history has one, else by the history vector the serving side computes."""
    from genrec.model.decoder import PAD_ITEM

    users = list(histories)
    codes = decoder.item_codes.cpu().numpy()
    if summaries and all(u in summaries for u in users):
        vectors = summary_vectors(np.stack([summaries[u] for u in users]))
        mode = "summary"
    else:
        limit = decoder.config.recent_items
        recent = [list(histories[u])[-limit:][::-1] for u in users]
        width = max(1, max((len(r) for r in recent), default=1))
        rows = torch.full((len(users), width), PAD_ITEM, dtype=torch.long)
        for i, r in enumerate(recent):
            rows[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        vectors = history_vectors(decoder, rows.to(decoder.item_codes.device))
        mode = "history"
    return build_pool(codes, [histories[u] for u in users], vectors, mode, clusters,
                      root_cap=drafts * max_width, prefix_cap=drafts, seed=seed)
