"""The trained-model artefact: one folder, written atomically, that serving loads on its own.

| file | content |
| --- | --- |
| `model.pt` | the decoder's state dict (item SIDs included, as a buffer) |
| `model.json` | format, decoder kind, ModelConfig, level sizes, summary size, value transform, notes |
| `items.json` | item ids in codebook row order (row i is the item the decoder calls i) |
| `item_values.npy` | each item's value, for the value tilt the manifest's `value_tilt` names (optional) |
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

from genrec.config import GenrecConfig
from genrec.io import atomic_path
from genrec.model.beam import TrieTables, beam_search
from genrec.model.decoder import PAD_ITEM, SidDecoder, SidSpace, build_decoder
from genrec.model.value_tilt import ValueTilt, in_force
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
    # The decode-time re-ranking by value this model is evaluated and served with (None: none).
    value_tilt: ValueTilt | None = None

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
        tilt = in_force(self.value_tilt)
        pool = tilt.pool(top_k, list(beam_widths)) if tilt is not None else top_k
        result = beam_search(self.decoder, context, self.tables, beam_widths, pool)
        items, scores = result.items.cpu().numpy(), result.scores.cpu().numpy()
        if tilt is not None:
            items, scores = tilt.rerank(items, scores, top_k)
        return [[(str(self.item_ids[i]), float(s)) for i, s in zip(row_items, row_scores) if i >= 0]
                for row_items, row_scores in zip(items.tolist(), scores.tolist())]


def save_model(folder: str | Path, decoder: SidDecoder, item_ids: np.ndarray,
               extra: dict[str, Any] | None = None, value_tilt: ValueTilt | None = None) -> Path:
    folder = Path(folder)
    if value_tilt is not None and len(value_tilt.item_values) != int(decoder.item_codes.shape[0]):
        raise ValueError(f"the value tilt's table has {len(value_tilt.item_values)} items, the decoder "
                         f"{int(decoder.item_codes.shape[0])}: build it from this codebook's item ids")
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
    if value_tilt is not None:
        manifest["value_tilt"] = value_tilt.manifest()
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        torch.save({k: v.detach().cpu() for k, v in decoder.state_dict().items()}, tmp / MODEL_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
        (tmp / ITEMS_FILE).write_text(json.dumps([str(i) for i in item_ids]))
        if value_tilt is not None:
            value_tilt.save(tmp)
    return folder


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The model in `folder`. Every part that is missing, empty, truncated or inconsistent is a
    `ModelArtefactError` of one line: which file, what is wrong with it, what to do."""
    folder = Path(folder)
    manifest = _read_json(folder / MANIFEST_FILE, dict)
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelArtefactError(f"{folder / MANIFEST_FILE}: model format {manifest.get('format')!r}; this "
                                 f"genrec reads format {FORMAT_VERSION}: retrain with this version")
    missing = [key for key in ("model_config", "decoder", "level_sizes", "summary_dim", "value_head")
               if key not in manifest]
    if missing:
        raise ModelArtefactError(f"{folder / MANIFEST_FILE} lacks {', '.join(missing)}: the file is damaged; "
                                 "copy the model folder again or retrain")
    try:
        # The decoder kind goes through the config's check too: an unknown kind is a clear error.
        config = GenrecConfig.from_dict({"model": {**manifest["model_config"],
                                                   "decoder": manifest["decoder"]}}).model
    except ValueError as exc:
        raise ModelArtefactError(f"{folder / MANIFEST_FILE}: model_config is not valid ({exc}): retrain "
                                 "with this genrec version") from exc
    state = _read_state(folder / MODEL_FILE, device)
    items = _read_json(folder / ITEMS_FILE, list)
    codes = state["item_codes"]
    if len(items) != int(codes.shape[0]) or not all(isinstance(i, str) for i in items):
        raise ModelArtefactError(f"{folder / ITEMS_FILE} must list one item id string per item of "
                                 f"{MODEL_FILE} ({int(codes.shape[0])}); it has {len(items)} entries: the "
                                 "folder mixes two models; copy it again or retrain")
    try:
        space = SidSpace(manifest["level_sizes"], codes.cpu().numpy())
        decoder = build_decoder(config, space, summary_dim=manifest["summary_dim"],
                                value_head=manifest["value_head"])
        decoder.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelArtefactError(f"{folder / MODEL_FILE} does not match {MANIFEST_FILE} ({first}): the "
                                 "folder mixes two models or was edited; copy it again or retrain") from exc
    value_tilt = None
    if manifest.get("value_tilt") is not None:
        try:
            value_tilt = ValueTilt.load(folder, manifest["value_tilt"], len(items))
        except ValueError as exc:
            raise ModelArtefactError(f"{folder / MANIFEST_FILE}: {exc}") from exc
    decoder.to(device).eval()
    return TrainedModel(decoder, np.asarray(items), manifest, value_tilt)


def _read_json(path: Path, kind: type) -> Any:
    if not path.is_file():
        raise ModelArtefactError(f"{path} is missing: {path.parent} is not a complete model folder (pass "
                                 "the `model` output of train_generator)")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtefactError(f"{path} is not valid JSON ({str(exc)[:120]}): the file is damaged or "
                                 "truncated; copy the model folder again or retrain") from exc
    if not isinstance(value, kind):
        raise ModelArtefactError(f"{path} must hold a JSON {'object' if kind is dict else 'list'}: the file "
                                 "is damaged; copy the model folder again or retrain")
    return value


def _read_state(path: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelArtefactError(f"{path} is missing: {path.parent} is not a complete model folder (pass "
                                 "the `model` output of train_generator)")
    if path.stat().st_size == 0:
        raise ModelArtefactError(f"{path} is empty (0 bytes): the copy was cut short; copy the model "
                                 "folder again or retrain")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file; all mean that
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ModelArtefactError(f"{path} cannot be read as a PyTorch state dict ({type(exc).__name__}"
                                 f"{': ' + first if first else ''}): the file is damaged or truncated; copy "
                                 "the model folder again or retrain") from exc
    if not isinstance(state, dict) or "item_codes" not in state:
        raise ModelArtefactError(f"{path} is not a genrec decoder state dict (no item_codes): pass the "
                                 "`model` output of train_generator")
    return state

