"""What the benchmarks that read VISTA summaries share (bench_summary_downstream,
bench_long_history): the summariser and its Feast repo, cached by what made them, and a generator
trained on summaries joined point in time from that repo."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import CACHE, Prepared, cache_key, model_folder
from genrec.config import GenrecConfig
from genrec.features.materialize import materialize_user_summaries
from genrec.features.repo import FeatureRepo
from genrec.features.schema import USER_SUMMARY_VIEW
from genrec.model.artefact import TrainedModel, load_model
from genrec.train.run import run_training
from genrec.train.summaries import TRAINING_TARGETS, summary_provider_for
from genrec.vista.train import TrainedSummarizer, train_summarizer


def summary_repo(prepared: Prepared, config: GenrecConfig) -> tuple[Path, dict[str, Any]]:
    """The summariser (trained on the training split) and its Feast repo, cached by what made them:
    the data set's cached split (its folder names the data and bid configs that made it) and the VISTA
    config (the store's settings do not change a summary)."""
    key = cache_key(prepared.name, prepared.splits_path.parent.name, dataclasses.asdict(config.vista))
    folder = CACHE / f"vista-{prepared.name}-{key}"
    model_path, repo_dir = folder / "summarizer.pt", folder / "repo"
    if not model_path.is_file():
        started = time.perf_counter()
        trained = train_summarizer(prepared.splits, config)
        folder.mkdir(parents=True, exist_ok=True)
        trained.summarizer.save(model_path)  # atomic: a half-written file never counts
        print(f"[summariser] trained in {time.perf_counter() - started:.0f} s: {trained.metrics}", flush=True)
    repo = FeatureRepo(repo_dir)
    if "rows" not in repo.manifest:  # the manifest's metrics are the last thing materialisation writes
        if repo_dir.exists():
            shutil.rmtree(repo_dir)  # a half-built repo from an interrupted run
        materialize_user_summaries(config, prepared.splits, model_path, repo_dir)
    manifest = repo.manifest
    return repo_dir, {
        "summariser": TrainedSummarizer.load(model_path).metrics,
        "schedule": manifest.get("schedule"),
        "snapshot_rows": manifest.get("rows"),
        "rows_per_user": manifest.get("rows_per_user"),
        "summary_shape": manifest.get("summary_shape"),
        "snapshot_splits": manifest.get("snapshot_splits"),
    }


def snapshot_digest(repo_dir: Path) -> str:
    """sha256 of the user-summary snapshot table, independent of how the parquet was written."""
    table = pd.read_parquet(FeatureRepo(repo_dir).offline_path(USER_SUMMARY_VIEW))
    table = table.sort_values(["user_id", "event_timestamp"], kind="stable")
    digest = hashlib.sha256()
    digest.update(table["user_id"].str.cat(sep="\n").encode())
    digest.update(table["event_timestamp"].astype("int64").to_numpy().tobytes())
    digest.update(table["n_items"].to_numpy().tobytes())
    for summary in table["summary"]:
        digest.update(summary)
    return digest.hexdigest()


def train_with_summaries(prepared: Prepared, config: GenrecConfig,
                         repo_dir: Path) -> tuple[TrainedModel, dict[str, Any]]:
    """bench_quality's train_cached with the Feast provider: the cache key adds the content of the
    repo's snapshot table (users, times, summaries), so equal summaries reuse the model."""
    folder = model_folder(prepared, config, snapshot_digest(repo_dir))
    join_file = folder / "feast_join.json"
    if (folder / "model").is_dir() and join_file.is_file():
        return load_model(folder / "model"), json.loads(join_file.read_text())
    # The join is measured whenever its figures are not on record, even for a cached model.
    started = time.perf_counter()
    provider = summary_provider_for(config, repo_dir, prepared.splits, TRAINING_TARGETS)
    join = {"rows": provider.rows, "rows_with_summary": provider.joined_rows,
            "distinct_snapshots": provider.snapshots, "seconds": time.perf_counter() - started}
    print(f"[summary] get_historical_features join: {join}", flush=True)
    if not (folder / "model").is_dir():
        run_training(config, prepared.splits, prepared.codebook, folder / "work", folder / "model",
                     summaries=provider, log=lambda line: print(f"[summary] {line}", flush=True))
    join_file.write_text(json.dumps(join))
    return load_model(folder / "model"), join
