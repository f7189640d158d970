"""The UA-SID codebook: item <-> semantic ID maps, the prefix trie, and how they were made.

A semantic ID has L code levels of K codes plus a last dedup level that numbers the items sharing
an L-prefix, so every ID is unique. On disk a codebook is one folder, written atomically:

| file | content |
| --- | --- |
| `sid_table.parquet` | item_id, c0 .. cL (cL is the dedup index) |
| `trie.npz` | the per-level child tables of `SidTrie` (sparse where a level is nearly empty) |
| `centroids.npz` | the per-level centroids, to encode new items greedily |
| `items.parquet` | item_id, title, categories: for people reading IDs (`genrec sid show`) |
| `config.json` | the `SidConfig` it was built with |
| `metrics.json` | collision rate, per-level use, coherence, timings |
| `codebook.json` | format version, level sizes, feature parts, notes |
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from genrec.config import ConfigError, GenrecConfig, SidConfig
from genrec.io import atomic_path
from genrec.sid.features import TextEncoder, build_item_features, category_lists
from genrec.sid.quantize import (
    Quantised,
    add_dedup_level,
    collision_figures,
    level_usage,
    prefix_coherence,
    rq_kmeans,
)
from genrec.sid.trie import SidTrie

FORMAT_VERSION = 1
SID_TABLE = "sid_table.parquet"


class CodebookError(ValueError):
    """A codebook folder is missing or damaged, or an item / ID is not in it."""


@dataclass
class Codebook:
    item_ids: np.ndarray
    # (n, L + 1): L code levels and the dedup level.
    codes: np.ndarray
    level_sizes: list[int]
    config: SidConfig
    metrics: dict[str, float] = field(default_factory=dict)
    centroids: list[np.ndarray] = field(default_factory=list)
    # item_id, title, categories where known; only for display.
    items: pd.DataFrame | None = None
    parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids).astype(str)
        self.codes = np.asarray(self.codes, dtype=np.int64)
        if len(np.unique(self.item_ids)) != len(self.item_ids):
            raise CodebookError("item ids in a codebook must be unique")
        self.trie = SidTrie.from_codes(self.codes, self.level_sizes)

    # -- lookups ---------------------------------------------------------------------------------

    @functools.cached_property
    def _row_lookup(self) -> dict[str, int]:
        """Item id -> row, made on the first lookup: training reads only the arrays, and the dict
        of a 500k-item catalogue held about 90 MB in every rank."""
        return {item: row for row, item in enumerate(self.item_ids.tolist())}

    @property
    def code_levels(self) -> int:
        """L, the levels before the dedup level."""
        return self.codes.shape[1] - 1

    @property
    def depth(self) -> int:
        return self.codes.shape[1]

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._row_lookup

    def row_of(self, item_id: str) -> int:
        try:
            return self._row_lookup[str(item_id)]
        except KeyError:
            raise CodebookError(f"item {item_id!r} is not in the codebook ({len(self)} items)") from None

    def sid_of(self, item_id: str) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[self.row_of(item_id)])

    def item_of(self, sid: Sequence[int]) -> str | None:
        row = self.trie.item_row(sid)
        return None if row < 0 else str(self.item_ids[row])

    def items_with_prefix(self, prefix: Sequence[int]) -> list[str]:
        """Items whose ID starts with `prefix`, in ID order."""
        prefix = list(prefix)
        if not prefix:
            rows = np.arange(len(self))
        else:
            rows = np.flatnonzero((self.codes[:, : len(prefix)] == np.asarray(prefix)[None, :]).all(axis=1))
        rows = rows[np.lexsort(self.codes[rows].T[::-1])]
        return [str(i) for i in self.item_ids[rows]]

    @functools.cached_property
    def _titles(self) -> dict[str, str]:
        """Item id -> title, made on the first lookup (people reading IDs, not training)."""
        if self.items is None or "title" not in self.items.columns:
            return {}
        return {str(i): t for i, t in zip(self.items["item_id"], self.items["title"], strict=True)
                if isinstance(t, str) and t}

    def title_of(self, item_id: str) -> str | None:
        return self._titles.get(str(item_id))

    def sid_table(self) -> pd.DataFrame:
        table = pd.DataFrame({"item_id": self.item_ids})
        for level in range(self.depth):
            table[f"c{level}"] = self.codes[:, level].astype(np.int32)
        return table

    # -- persistence -----------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Writes the codebook folder; it appears complete or not at all."""
        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            self.sid_table().to_parquet(tmp / SID_TABLE, index=False)
            self.trie.save(tmp / "trie.npz")
            centroids: dict[str, Any] = {f"level{i}": c for i, c in enumerate(self.centroids)}
            with open(tmp / "centroids.npz", "wb") as handle:
                np.savez_compressed(handle, **centroids)
            items = self.items if self.items is not None else pd.DataFrame({"item_id": self.item_ids})
            items.to_parquet(tmp / "items.parquet", index=False)
            (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
            manifest = {"format": FORMAT_VERSION, "level_sizes": self.level_sizes, "items": len(self),
                        "parts": self.parts, "notes": self.notes}
            (tmp / "codebook.json").write_text(json.dumps(manifest, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, with_items: bool = True) -> Codebook:
        """The codebook a build saved in `folder`. `with_items=False` leaves out the items' titles and
        categories, which only people reading IDs need: training reads the SIDs alone, and a large
        catalogue's titles would sit in every rank."""
        folder = Path(folder)
        if not folder.is_dir():
            problem = "is a file, not a folder" if folder.exists() else "does not exist"
            raise CodebookError(f"codebook folder {folder} {problem}: pass the folder a codebook build "
                                "wrote (the `codebook` output of build_codebook)")
        manifest_path = folder / "codebook.json"
        if not manifest_path.is_file() or not (folder / SID_TABLE).is_file():
            raise CodebookError(f"{folder} is not a codebook folder: codebook.json or {SID_TABLE} is missing")
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != FORMAT_VERSION:
                raise CodebookError(f"{folder} has codebook format {manifest.get('format')}, this genrec "
                                    f"reads format {FORMAT_VERSION}: rebuild the codebook")
            # Read through Arrow, not pandas: the item ids never become Python strings, whose arenas
            # stayed resident after the frame was freed (500k items: 466 MiB resident after a pandas
            # load, 373 MiB after this one, from the same 292 MiB start).
            table = pq.read_table(folder / SID_TABLE)
            config = GenrecConfig.from_dict({"sid": json.loads((folder / "config.json").read_text())}).sid
            metrics = json.loads((folder / "metrics.json").read_text())
            with np.load(folder / "centroids.npz") as data:
                centroids = [data[f"level{i}"] for i in range(len(data.files))]
            items_path = folder / "items.parquet"
            items = pd.read_parquet(items_path) if with_items and items_path.is_file() else None
        except (OSError, ValueError, KeyError, ConfigError) as exc:
            if isinstance(exc, CodebookError):
                raise
            raise CodebookError(f"codebook folder {folder} cannot be read: {exc}") from exc
        code_columns = [f"c{i}" for i in range(len(manifest["level_sizes"]))]
        try:
            item_ids = table.column("item_id").to_numpy(zero_copy_only=False).astype(str)
            codes = np.stack([table.column(c).to_numpy() for c in code_columns], axis=1)
        except KeyError as exc:
            raise CodebookError(f"{folder / SID_TABLE} lacks a column: {exc}; rebuild the codebook") from exc
        del table
        pa.default_memory_pool().release_unused()
        return cls(item_ids, codes, manifest["level_sizes"], config, metrics, centroids, items,
                   manifest.get("parts", []), manifest.get("notes", []))


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------



def quantise(features: np.ndarray, config: SidConfig) -> Quantised:
    """The configured quantiser (sid.quantizer) on the fused item vectors."""
    if config.quantizer == "rq_vae":
        from genrec.sid.rqvae import rq_vae

        return rq_vae(features, config)
    return rq_kmeans(features, config)

def codebook_order(catalogue: pd.DataFrame) -> pd.DataFrame:
    """Catalogue rows in item id order: k-means++ samples by row, and an ID must not depend on file
    order."""
    return catalogue.assign(item_id=catalogue["item_id"].astype(str)).sort_values(
        "item_id", kind="stable").reset_index(drop=True)


def build_codebook(catalogue: pd.DataFrame, interactions: pd.DataFrame | None, config: SidConfig,
                   text_encoder: TextEncoder | None = None,
                   cooccurrence: sp.csr_matrix | None = None) -> Codebook:
    """Item features -> residual quantisation -> dedup level -> trie, with quality figures.

    `interactions` must carry the leave-one-out `split` column: the collaborative part reads only
    training rows. `cooccurrence` stands in for them: the training co-occurrence counts over the
    catalogue in `codebook_order`. `text_encoder` replaces the packaged MiniLM (tests use a cheap
    stand-in).
    """
    started = time.perf_counter()
    catalogue = codebook_order(catalogue)
    features = build_item_features(catalogue, interactions, config, text_encoder, cooccurrence)
    features_done = time.perf_counter()
    quantised = quantise(features.matrix, config)
    quantise_done = time.perf_counter()
    codes = add_dedup_level(quantised.codes, quantised.residual_sq, features.item_ids)
    level_sizes = [config.codes_per_level] * config.levels + [int(codes[:, -1].max()) + 1]
    categories = category_lists(catalogue)
    metrics = codebook_metrics(quantised.codes, categories, config)
    metrics.update({f"feature_{k}": v for k, v in features.stats.items()})
    metrics.update({
        "items": float(len(catalogue)),
        "feature_dim": float(features.matrix.shape[1]),
        "dedup_level_size": float(level_sizes[-1]),
        "features_seconds": features_done - started,
        "quantise_seconds": quantise_done - features_done,
        "build_seconds": time.perf_counter() - started,
    })
    items = pd.DataFrame({"item_id": features.item_ids,
                          "title": catalogue["title"] if "title" in catalogue.columns else None,
                          "categories": categories})
    return Codebook(features.item_ids, codes, level_sizes, config, metrics, quantised.centroids, items,
                    list(features.parts), features.notes)


def codebook_metrics(codes: np.ndarray, categories: list[list[str]], config: SidConfig) -> dict[str, float]:
    """Collision rate before dedup, per-level use and entropy, and level-1 prefix coherence."""
    metrics = collision_figures(codes)
    for level, figures in enumerate(level_usage(codes, config.codes_per_level)):
        metrics.update({f"level{level}_{k}": v for k, v in figures.items()})
    # A random grouping with the same code sizes is the floor that coherence is read against.
    shuffled = np.random.default_rng(config.seed).permutation(codes[:, 0])
    for name, leaf_only in (("leaf", True), ("any", False)):
        metrics[f"prefix_coherence_{name}"] = prefix_coherence(codes[:, 0], categories, leaf_only)
        metrics[f"prefix_coherence_{name}_random"] = prefix_coherence(shuffled, categories, leaf_only)
    return metrics


def load_codebook(folder: str | Path, with_items: bool = True) -> Codebook:
    return Codebook.load(folder, with_items)


def describe(codebook: Codebook) -> dict[str, Any]:
    """A JSON-friendly summary: the metrics plus what went into the IDs."""
    return {"level_sizes": codebook.level_sizes, "parts": codebook.parts, "notes": codebook.notes,
            **codebook.metrics}
