"""Versioned model folders: what an RSPO run writes (the model serving loads, plus the reference's
weights, the optimiser state and any pending feedback for the next update), and how versions are
named and found. A new version is always a new folder; the model it starts from is only read."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from genrec.config import RspoConfig
from genrec.io import atomic_path
from genrec.model.artefact import TrainedModel, save_model
from genrec.model.decoder import SidDecoder
from genrec.model.value_tilt import ValueTilt

REFERENCE_FILE = "rspo_reference.pt"


STATE_FILE = "rspo_state.pt"


PENDING_FILE = "rspo_pending.parquet"


@dataclass
class RspoResult:
    policy: SidDecoder
    reference_state: dict[str, Tensor]
    trainer_state: dict[str, Any]
    curve: list[dict[str, float]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def reference_decoder(model: TrainedModel, model_dir: str | Path | None = None) -> SidDecoder:
    """pi_ref: the VSL model a chain of RSPO versions started from (kept in each version), else the
    model itself."""
    reference = copy.deepcopy(model.decoder)
    path = Path(model_dir) / REFERENCE_FILE if model_dir is not None else None
    if path is not None and path.is_file():
        reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return reference


def version_number(name: str, config: RspoConfig) -> int | None:
    match = re.fullmatch(re.escape(config.version_prefix) + r"(\d+)", name)
    return int(match.group(1)) if match else None


def next_version_dir(models_dir: str | Path, config: RspoConfig) -> Path:
    """<models_dir>/<prefix><n+1> after the highest existing version (prefix + 1 in an empty one)."""
    models_dir = Path(models_dir)
    numbers = [version_number(p.name, config) for p in models_dir.iterdir()] if models_dir.is_dir() else []
    latest = max((n for n in numbers if n is not None), default=0)
    return models_dir / f"{config.version_prefix}{latest + 1:0{config.version_digits}d}"


def latest_version_dir(models_dir: str | Path, config: RspoConfig) -> Path | None:
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return None
    versions = [(version_number(p.name, config), p) for p in models_dir.iterdir() if p.is_dir()]
    numbered = [(n, p) for n, p in versions if n is not None]
    return max(numbered)[1] if numbered else None


def save_rspo_model(folder: str | Path, result: RspoResult, item_ids: np.ndarray, parent: str | Path | None,
                    pending: pd.DataFrame | None = None, value_tilt: ValueTilt | None = None) -> Path:
    """The model folder serving loads (model.pt, model.json, items.json) plus what the next update
    needs: pi_ref's weights, the optimiser state and any pending feedback. Written atomically.
    `value_tilt`: the parent's, which a fine-tuned policy keeps (the catalogue's values are the same)."""
    record = {**result.stats, "curve": result.curve, "parent": str(parent) if parent else None}
    with atomic_path(folder) as tmp:
        save_model(tmp, result.policy, item_ids, extra={"rspo": record}, value_tilt=value_tilt)
        torch.save({k: v.detach().cpu() for k, v in result.reference_state.items()}, tmp / REFERENCE_FILE)
        torch.save(result.trainer_state, tmp / STATE_FILE)
        if pending is not None and len(pending):
            pending.to_parquet(tmp / PENDING_FILE, index=False)
    return Path(folder)


def _load_state(model_dir: str | Path | None) -> dict[str, Any] | None:
    if model_dir is None or not (Path(model_dir) / STATE_FILE).is_file():
        return None
    # Our own file: the optimiser state holds plain Python values besides tensors.
    return torch.load(Path(model_dir) / STATE_FILE, map_location="cpu", weights_only=False)
