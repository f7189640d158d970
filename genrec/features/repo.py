"""A run's self-contained Feast feature repo folder.

`FeatureRepo.create` copies the feature_repo/ template (definitions, README, both store configs)
into a new folder and writes its feature_store.yaml for the configured online store. Every path in
the folder is relative to it: offline parquet under data/, the registry and the sqlite online store
under data/, the summariser under model/. So the folder can be moved, uploaded as a pipeline
artefact, and used with the plain Feast CLI:

    feast -c RUN_REPO apply          # register the definitions (idempotent)
    feast -c RUN_REPO materialize 1970-01-01T00:00:00 2030-01-01T00:00:00
    feast -c RUN_REPO ui             # browse entities, views and sources

Feast is imported inside methods: it takes seconds to import, and `genrec --help` should not.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from genrec.config import FeatureStoreConfig, RayConfig
from genrec.data.partitioned import (
    is_partitioned,
    read_bucket,
    read_partitioning,
    user_buckets,
    write_partitioned,
)
from genrec.features.schema import (
    ENTITY_KEYS,
    EVENT_TIMESTAMP,
    ITEM_ID,
    ITEM_SID_SCHEMA,
    ITEM_SID_VIEW,
    OFFLINE_PATHS,
    SID,
    USER_SUMMARY_SCHEMA,
    USER_SUMMARY_VIEW,
)
from genrec.io import atomic_path, read_parquet, write_json, write_parquet

if TYPE_CHECKING:
    from feast import FeatureStore

DEFINITIONS_FILE = "features.py"
STORE_YAML = "feature_store.yaml"
REDIS_STORE_YAML = "feature_store.redis.yaml"
TEMPLATE_FILES = (DEFINITIONS_FILE, STORE_YAML, REDIS_STORE_YAML, "README.md", ".gitignore")
MANIFEST = "genrec.json"
MODEL_FILE = "model/summarizer.pt"
# The interactions the snapshots include: a partitioned folder, like the summaries.
HISTORY_FILE = "data/interactions"
HISTORY_COLUMNS = ["user_id", "item_id", "timestamp"]
# Feast's own Ray offline store stages what it writes here (relative to the repo).
RAY_STORAGE = "data/ray_storage"
RAY_OFFLINE_STORE = "genrec.features.feast_ray.GenrecRayOfflineStore"
# The checkout's template sits beside the package; the Dockerfile copies it to this path in the image.
CHECKOUT_TEMPLATE = Path(__file__).resolve().parents[2] / "feature_repo"
IMAGE_TEMPLATE = Path("/opt/genrec-feature-repo")
MIB = 1024 * 1024


def ray_store_settings(ray: RayConfig, online_store: str) -> dict[str, Any]:
    """feature_store.yaml settings for Feast's Ray offline store and Ray compute engine: the same
    cluster as the data steps (its address when configured; else an embedded Ray bounded like
    theirs), and online writes one at a time into sqlite (a single file), in parallel into Redis."""
    where: dict[str, Any] = {"ray_address": ray.address} if ray.address else {"ray_conf": {
        "num_cpus": ray.num_cpus or os.cpu_count(), "object_store_memory": ray.object_store_mb * MIB}}
    return {
        # Feast's Ray store with Bytes kept whole in historical retrieval (genrec.features.feast_ray).
        "offline_store": {"type": RAY_OFFLINE_STORE, "storage_path": RAY_STORAGE, **where},
        "batch_engine": {"type": "ray.engine", **where,
                         "write_concurrency": 1 if online_store == "sqlite" else max(1, ray.num_cpus)},
    }


class FeatureRepoError(ValueError):
    """A feature repo folder is missing, incomplete, or lacks what was asked of it."""


def template_dir(config: FeatureStoreConfig) -> Path:
    candidates = [Path(config.template_dir).expanduser()] if config.template_dir else [CHECKOUT_TEMPLATE,
                                                                                        IMAGE_TEMPLATE]
    for candidate in candidates:
        if (candidate / DEFINITIONS_FILE).is_file():
            return candidate
    raise FeatureRepoError(f"no feature_repo template (a folder with {DEFINITIONS_FILE}) at "
                           f"{' or '.join(map(str, candidates))}; set features.template_dir")


@contextmanager
def quiet_feast() -> Iterator[None]:
    """Feast warns about preview features and deprecations on every call; none of it is actionable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass
class MaterializeStats:
    view: str
    entities: int
    seconds: float

    @property
    def entities_per_second(self) -> float:
        return self.entities / max(self.seconds, 1e-9)


class FeatureRepo:
    """One feature repo folder; `store` is its Feast FeatureStore, opened on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self._store: FeatureStore | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: FeatureStoreConfig, engine: str = "pandas",
               ray: RayConfig | None = None) -> FeatureRepo:
        """A fresh repo folder at `path` (which must not exist or be empty), empty views included.
        With `engine` "ray", Feast's Ray offline store and Ray compute engine serve historical
        retrieval and `feast materialize`, bounded like the data steps' embedded Ray (`ray`)."""
        target = Path(path)
        if target.exists() and any(target.iterdir()):
            raise FeatureRepoError(f"{target} is not empty: a feature repo is created in a new folder")
        source = template_dir(config)
        (target / "data").mkdir(parents=True, exist_ok=True)
        for name in TEMPLATE_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        template = REDIS_STORE_YAML if config.online_store == "redis" else STORE_YAML
        settings = yaml.safe_load((source / template).read_text())
        settings["project"] = config.project
        if config.online_store == "redis":
            settings["online_store"] = {"type": "redis", "connection_string": config.redis_connection_string}
            if config.redis_key_ttl_seconds:
                settings["online_store"]["key_ttl_seconds"] = config.redis_key_ttl_seconds
        if engine == "ray":
            settings.update(ray_store_settings(ray or RayConfig(), config.online_store))
        offline = "ray" if engine == "ray" else "file"
        header = ("# Written by genrec.features for this run from feature_repo/feature_store.yaml.\n"
                  "# All paths are relative to this folder.\n")
        (target / STORE_YAML).write_text(header + yaml.safe_dump(settings, sort_keys=False))
        repo = cls(target)
        repo.write_user_summaries(USER_SUMMARY_SCHEMA.empty_table().to_pandas())
        repo.write_item_sids(None, config.static_timestamp)
        repo.update_manifest(created_at=pd.Timestamp.now(tz="UTC").isoformat(),
                             online_store=config.online_store, offline_store=offline,
                             ray=dataclasses.asdict(ray or RayConfig()))
        return repo

    @classmethod
    def open(cls, path: str | Path) -> FeatureRepo:
        folder = Path(path)
        if not (folder / STORE_YAML).is_file():
            raise FeatureRepoError(f"{folder} is not a feature repo: it has no {STORE_YAML} (pass the "
                                   "folder a pipeline run wrote, e.g. its feature_repo artefact)")
        return cls(folder)

    @contextmanager
    def feast_session(self) -> Iterator[None]:
        """Around a Feast call that may run on Ray (apply, historical retrieval, materialise): a repo
        on Feast's Ray offline store gets genrec's Ray session (the embedded Ray bounded as the
        run's `ray` section says, or the run's cluster), which Feast then uses instead of starting
        an unbounded Ray of its own. A file-store repo needs nothing."""
        manifest = self.manifest
        if manifest.get("offline_store") != "ray":
            yield
            return
        from genrec.distributed import RaySession

        known = {f.name for f in dataclasses.fields(RayConfig)}
        config = RayConfig(**{k: v for k, v in manifest.get("ray", {}).items() if k in known})
        with RaySession.open(config):
            yield

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            with quiet_feast():
                from feast import FeatureStore

                self._store = FeatureStore(repo_path=str(self.path))
        return self._store

    # -- manifest: what genrec knows about this repo -------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else {}

    def update_manifest(self, **values: Any) -> None:
        write_json({**self.manifest, **values}, self.path / MANIFEST)

    # -- offline data ----------------------------------------------------------------------------------

    def offline_path(self, view: str) -> Path:
        return self.path / OFFLINE_PATHS[view]

    def write_user_summaries(self, snapshots: pd.DataFrame, buckets: int = 1) -> Path:
        """Every snapshot, as a partitioned folder of `buckets` user buckets."""
        path = self.offline_path(USER_SUMMARY_VIEW)
        with atomic_path(path) as folder:
            folder.mkdir()
            write_partitioned(snapshots[USER_SUMMARY_SCHEMA.names], folder, buckets, USER_SUMMARY_SCHEMA)
        return path

    def write_item_sids(self, codes: pd.DataFrame | None, static_timestamp: str) -> Path:
        """The item_sid view's parquet from a semantic-ID table `item_id, c0, c1, ...` (None: empty).

        Codes are packed into one Array(Int64) so that the view's schema does not depend on the
        number of levels; event_timestamp is the early `static_timestamp`, so point-in-time joins
        at any time see the codes.
        """
        path = self.offline_path(ITEM_SID_VIEW)
        if codes is None or codes.empty:
            write_parquet(ITEM_SID_SCHEMA.empty_table().to_pandas(), path, ITEM_SID_SCHEMA)
            return path
        levels = sorted((c for c in codes.columns if c[:1] == "c" and c[1:].isdigit()),
                        key=lambda c: int(c[1:]))
        if ITEM_ID not in codes.columns or not levels:
            raise FeatureRepoError("a semantic-ID table needs an item_id column and code columns c0, c1, "
                                   "...; "
                                   f"got {', '.join(map(str, codes.columns))}")
        frame = pd.DataFrame({
            ITEM_ID: codes[ITEM_ID].astype(str).to_numpy(),
            EVENT_TIMESTAMP: pd.Timestamp(static_timestamp),
            SID: list(codes[levels].to_numpy(dtype=np.int64)),
        })
        write_parquet(frame, path, ITEM_SID_SCHEMA)
        return path

    def write_history(self, interactions: pd.DataFrame, buckets: int = 1) -> Path:
        """The interactions the snapshots were built from, for analysts (`genrec features show`), as
        a partitioned folder of `buckets` user buckets."""
        path = self.path / HISTORY_FILE
        with atomic_path(path) as folder:
            folder.mkdir()
            write_partitioned(interactions[HISTORY_COLUMNS], folder, buckets)
        return path

    def user_history(self, user: str) -> pd.DataFrame | None:
        """One user's interactions from the history (reading only their bucket); None without one."""
        path = self.history_path
        if path is None:
            return None
        if not is_partitioned(path):
            frame = pd.read_parquet(path)
            return frame[frame["user_id"].astype(str) == user]
        partitioning = read_partitioning(path)
        bucket = int(user_buckets(np.array([user], dtype=object), partitioning.buckets)[0])
        frame = read_bucket(path, bucket, HISTORY_COLUMNS, partitioning)
        return frame[frame["user_id"] == user]

    def save_model(self, model_file: str | Path) -> Path:
        target = self.path / MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_file, target)
        return target

    @property
    def model_path(self) -> Path | None:
        path = self.path / MODEL_FILE
        return path if path.is_file() else None

    @property
    def history_path(self) -> Path | None:
        path = self.path / HISTORY_FILE
        return path if path.exists() else None

    # -- Feast -----------------------------------------------------------------------------------------

    def definitions(self) -> list[Any]:
        """The Feast objects declared in the repo's features.py.

        Loaded under a unique module name: Feast's own parser imports by module path, so a second
        repo in the same process would get the first one's cached module.
        """
        from feast import Entity, FeatureService, FeatureView
        from feast.data_source import DataSource

        path = self.path / DEFINITIONS_FILE
        name = f"genrec_feature_repo_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise FeatureRepoError(f"cannot load the feature definitions {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(name, None)
        kinds = (Entity, FeatureView, FeatureService, DataSource)
        return [value for value in vars(module).values() if isinstance(value, kinds)]

    def apply(self) -> list[str]:
        """Registers the definitions and creates the online tables: what `feast apply` does."""
        with quiet_feast(), self.feast_session():
            objects = self.definitions()
            self.store.apply(objects)
        return sorted(getattr(o, "name", "") for o in objects)

    def materialize(self, views: tuple[str, ...] = (USER_SUMMARY_VIEW, ITEM_SID_VIEW),
                    batch_rows: int = 20000) -> list[MaterializeStats]:
        """Loads the newest row of every entity of each view from its offline parquet into the online
        store, then records the interval in the registry, as `feast materialize` would.

        Feast's own materialisation reads through dask, which hashes every bytes value of the table
        several times (20 s of a 27 s run on 67k Beauty snapshots); writing the newest rows directly
        with `write_to_online_store` gives the same online state about ten times faster.
        """
        stats = []
        with quiet_feast(), self.feast_session():
            for view in views:
                start = time.perf_counter()
                frame = read_parquet(self.offline_path(view))
                key = ENTITY_KEYS[view]
                ordered = frame.sort_values([key, EVENT_TIMESTAMP], kind="stable")
                newest = ordered.drop_duplicates(key, keep="last")
                if view == USER_SUMMARY_VIEW:
                    self.write_online_summaries(newest, batch_rows)
                else:
                    for first in range(0, len(newest), batch_rows):
                        self.store.write_to_online_store(view, newest.iloc[first:first + batch_rows])
                if len(frame):
                    times = frame[EVENT_TIMESTAMP]
                    self._record_materialization(view, times.min(), times.max())
                stats.append(MaterializeStats(view, len(newest), time.perf_counter() - start))
        return stats

    def write_online_summaries(self, newest: pd.DataFrame, batch_rows: int) -> int:
        """Writes each user's newest summary (one row per user) into the online store: straight into
        Redis in Feast's layout (`genrec.features.redis_writer`, one round trip per batch, always
        replacing what a previous run wrote), through Feast into sqlite."""
        if self.manifest.get("online_store") == "redis":
            from genrec.features.redis_writer import RedisSummaryWriter

            return RedisSummaryWriter(self.path).write(newest, batch_rows)
        with quiet_feast():
            for first in range(0, len(newest), batch_rows):
                self.store.write_to_online_store(USER_SUMMARY_VIEW, newest.iloc[first:first + batch_rows])
        return len(newest)

    def _record_materialization(self, view: str, start: pd.Timestamp, end: pd.Timestamp) -> None:
        store = self.store
        feature_view = store.get_feature_view(view)
        # Feast's intervals are half-open at the end; a microsecond past the newest row covers it.
        store.registry.apply_materialization(feature_view, store.project, start.to_pydatetime(),
                                             (end + pd.Timedelta(1, "us")).to_pydatetime(), commit=True)
