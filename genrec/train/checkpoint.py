"""Resumable training checkpoints, written atomically (a temporary file renamed into place), so a
run killed at any moment leaves the previous complete checkpoint, never half a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genrec.io import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    path = Path(folder) / CHECKPOINT_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    # Our own file: it holds numpy RNG state and plain Python values besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
