"""Shared fixtures: small contract-shaped data sets, and the shared real data when present."""

from __future__ import annotations

import os
from pathlib import Path

# Feast decorates its functions with typeguard, which re-parses their source with `ast` when a module
# is imported. CPython 3.11 can fail such a parse late in a long-lived process that has run threads
# ("SystemError: AST constructor recursion depth mismatch", cpython#106905), which a pytest-xdist
# worker is. Importing the Feast modules genrec uses here, as the worker starts, does that parsing
# before any test has run. (Not Feast's Ray store: Ray must be imported after genrec sets its token.)
import feast  # noqa: F401
import feast.infra.online_stores.redis  # noqa: F401
import feast.infra.online_stores.sqlite  # noqa: F401
import feast.repo_config  # noqa: F401
import pandas as pd
import pytest

from genrec.config import GenrecConfig
from testbed.binaries import REQUIRE_SERVERS, require_binary  # noqa: F401 - the tests' import point

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the shared real data sets are not beside this checkout")
    return SHARED_DATA


def make_log(users: int = 12, items: int = 30, per_user: int = 6, seed: int = 0) -> pd.DataFrame:
    """A small valid interaction log in the contract's column names, time-ordered per user."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        chosen = rng.choice(items, size=per_user, replace=False)
        for position, item in enumerate(chosen):
            rows.append({"user_id": f"u{u}", "item_id": f"i{item}",
                         "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=u * 100 + position),
                         "value": float(rng.uniform(0.5, 3.0))})
    return pd.DataFrame(rows)


def make_catalogue(items: int = 30) -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in range(items)],
        "title": [f"item {i}" for i in range(items)],
        "brand": [f"brand{i % 4}" for i in range(items)],
        "categories": [[f"cat{i % 3}"] for i in range(items)],
    })


@pytest.fixture
def log_files(tmp_path: Path) -> tuple[Path, Path]:
    log, catalogue = tmp_path / "log.csv", tmp_path / "items.parquet"
    make_log().to_csv(log, index=False)
    make_catalogue().to_parquet(catalogue)
    return log, catalogue


@pytest.fixture
def small_config(log_files: tuple[Path, Path], tmp_path: Path) -> GenrecConfig:
    cfg = GenrecConfig()
    cfg.data.dataset = str(log_files[0])
    cfg.data.catalogue_path = str(log_files[1])
    cfg.pipeline.local_root = str(tmp_path / "runs")
    cfg.deploy.registry_dir = str(tmp_path / "registry")
    return cfg
