"""Artefact writing that never leaves half a file behind.

Every artefact is written to a hidden temporary sibling and renamed into place, so a crash or a
failed validation leaves either the complete old artefact or none at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.partitioned import is_partitioned, read_all


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write to; it replaces `path` only if the block succeeds.

    Works for files and for folders (whatever the block creates at the yielded path).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = tmp_root / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {target}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def write_parquet(frame: pd.DataFrame, path: str | Path, schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | Path) -> pd.DataFrame:
    """A parquet file, or a whole partitioned artefact (its buckets in order) for a step whose input
    fits in memory."""
    return read_all(path) if is_partitioned(path) else pd.read_parquet(path)


def write_json(data: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
