"""The trained-model artefact: one folder, written atomically, that serving loads on its own.

| file | content |
| --- | --- |
| `model.pt` | the decoder's state dict (item SIDs included, as a buffer) |
| `model.json` | format, decoder kind, ModelConfig, level sizes, summary size, value transform, notes |
| `items.json` | item ids in codebook row order (row i is the item the decoder calls i) |
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import GenrecConfig, ModelConfig
from genrec.io import atomic_path
from genrec.model.beam import TrieTables, beam_search
from genrec.model.decoder import PAD_ITEM, SidDecoder, SidSpace, build_decoder
from genrec.sid.trie import SidTrie

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
MANIFEST_FILE = "model.json"
ITEMS_FILE = "items.json"


class ModelArtefactError(ValueError):
    """A model folder is missing or cannot be read."""


@dataclass
class TrainedModel:
    decoder: SidDecoder
    item_ids: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids).astype(str)
        self._row_of = {item: row for row, item in enumerate(self.item_ids)}
        codes = self.decoder.item_codes.cpu().numpy()
        self.trie = SidTrie.from_codes(codes, self.decoder.level_sizes)
        self.tables = TrieTables(self.trie, device=self.decoder.item_codes.device)

    def history_rows(self, histories: Sequence[Sequence[str]], limit: int | None = None) -> torch.Tensor:
        """Item-id histories (oldest first) -> [B, R'] rows, most recent first, unknown items dropped;
        the last `limit` of each (the decoder's R unless given)."""
        limit = self.decoder.config.recent_items if limit is None else limit
        known = [[self._row_of[i] for i in history if i in self._row_of] for history in histories]
        rows = [history[-limit:][::-1] for history in known]
        width = max(1, max((len(r) for r in rows), default=1))
        out = torch.full((len(rows), width), PAD_ITEM, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out.to(self.decoder.item_codes.device)

    @torch.inference_mode()
    def recommend(self, histories: Sequence[Sequence[str]], beam_widths: Sequence[int], top_k: int,
                  summaries: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        """Top-K (item id, log-prob) per request."""
        self.decoder.eval()
        summary = None if summaries is None else torch.as_tensor(summaries, dtype=torch.float32,
                                                                  device=self.decoder.item_codes.device)
        context = self.decoder.embed_context(self.history_rows(histories), summary)
        result = beam_search(self.decoder, context, self.tables, beam_widths, top_k)
        return [[(str(self.item_ids[i]), float(s)) for i, s in zip(items, scores) if i >= 0]
                for items, scores in zip(result.items.tolist(), result.scores.tolist())]


def save_model(folder: str | Path, decoder: SidDecoder, item_ids: np.ndarray,
               extra: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    manifest = {
        "format": FORMAT_VERSION,
        "decoder": decoder.kind,
        "prefix_layer": decoder.prefix_layer,
        "model_config": dataclasses.asdict(decoder.config),
        "level_sizes": decoder.level_sizes,
        "summary_dim": decoder.summary_dim,
        "value_head": decoder.value_head is not None,
        "items": int(decoder.item_codes.shape[0]),
        "parameters": sum(p.numel() for p in decoder.parameters()),
        **(extra or {}),
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        torch.save({k: v.detach().cpu() for k, v in decoder.state_dict().items()}, tmp / MODEL_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
        (tmp / ITEMS_FILE).write_text(json.dumps([str(i) for i in item_ids]))
    return folder


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file() or not (folder / MODEL_FILE).is_file():
        raise ModelArtefactError(f"{folder} is not a model folder: {MANIFEST_FILE} or {MODEL_FILE} is "
                                 "missing (pass the `model` output of train_generator)")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelArtefactError(f"{folder} has model format {manifest.get('format')}; this genrec reads "
                                 f"{FORMAT_VERSION}: retrain")
    config = GenrecConfig.from_dict({"model": manifest["model_config"]}).model
    state = torch.load(folder / MODEL_FILE, map_location=device, weights_only=True)
    space = SidSpace(manifest["level_sizes"], state["item_codes"].cpu().numpy())
    decoder = _decoder_for(config, manifest["decoder"], space, manifest["summary_dim"],
                           manifest["value_head"])
    decoder.load_state_dict(state)
    decoder.to(device).eval()
    items = json.loads((folder / ITEMS_FILE).read_text())
    return TrainedModel(decoder, np.asarray(items), manifest)


def _decoder_for(config: ModelConfig, kind: str, space: SidSpace, summary_dim: int, value_head: bool
                 ) -> SidDecoder:
    config = dataclasses.replace(config, decoder=kind)
    return build_decoder(config, space, summary_dim=summary_dim, value_head=value_head)
