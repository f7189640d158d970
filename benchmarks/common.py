"""What the benchmarks share: the data sets, their cached preparation (ingest, split, codebook), the
cached reference models, the test protocol, and the recipes they run (configs/recipes/).

Codebooks and trained models are cached under ~/.cache/genrec/bench (GENREC_BENCH_CACHE) by a hash of
what made them, so every benchmark reuses the models bench_quality trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genrec.config import GenrecConfig, load_config
from genrec.data.ingest import ingest
from genrec.data.split import drop_latest, leave_one_out
from genrec.evaluate import evaluate
from genrec.model.artefact import TrainedModel, load_model
from genrec.sid.codebook import Codebook, build_codebook
from genrec.train.data import evaluation_requests
from genrec.train.run import run_training

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("GENREC_BENCH_CACHE", "~/.cache/genrec/bench")).expanduser()

DATASETS = {"beauty": "amazon-beauty", "movielens": "movielens-100k", "scientific": "amazon-scientific",
            "synth_long": "synthetic long-term-interest log"}
# Data sets the benchmarks generate with `genrec data synth` (its `synth` section from the recipe):
# name -> (events, seed). The log is cached by what made it, like a split.
SYNTHETIC = {"synth_long": (400_000, 1)}

# The training recipe per data set: configs/recipes/quality_<dataset>.yaml (the VSL reference model
# the RSPO, DARE and serving benchmarks build on).
RECIPES = REPO / "configs" / "recipes"


# Published test figures on the same split (TIGER, NeurIPS 2023, paper table).
PUBLISHED = {"beauty": {"TIGER": {"recall@5": 0.0454, "ndcg@5": 0.0321,
                                  "recall@10": 0.0648, "ndcg@10": 0.0384}}}


@dataclass
class Prepared:
    name: str
    splits: pd.DataFrame
    codebook: Codebook
    value_source: str
    # Where the splits and the codebook lie in the cache (a torchrun training run reads them).
    splits_path: Path
    codebook_path: Path


def cache_key(*parts: Any) -> str:
    """A short stable hash of what made a cached artefact."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(name: str, config: GenrecConfig, origin: int = 0) -> Prepared:
    """Ingest + split + codebook (cached by data set and SidConfig). `origin` > 0 leaves each user's
    latest `origin` interactions out before the split (genrec.data.split.drop_latest), so its test
    target is an earlier item; the codebook is then built on that split's training rows."""
    config.data.dataset = synthetic_log(name, config) if name in SYNTHETIC else DATASETS[name]
    config.data.shared_data_dir = str(SHARED)
    # Origin 0 keeps the key it had before origins existed, so its cached splits and models stay.
    key = cache_key(dataclasses.asdict(config.data), dataclasses.asdict(config.bids),
               *([origin] if origin else []))
    folder = CACHE / f"data-{name}-{key}"
    if not (folder / "splits.parquet").is_file():
        dataset = ingest(config)
        folder.mkdir(parents=True, exist_ok=True)
        interactions = drop_latest(dataset.interactions, origin) if origin else dataset.interactions
        leave_one_out(interactions).to_parquet(folder / "splits.parquet")
        dataset.catalogue.to_parquet(folder / "catalogue.parquet")
        (folder / "value_source.txt").write_text(dataset.info.value_source)
    splits = pd.read_parquet(folder / "splits.parquet")
    codebook_dir = folder / f"codebook-{cache_key(dataclasses.asdict(config.sid))}"
    if not codebook_dir.is_dir():
        build_codebook(pd.read_parquet(folder / "catalogue.parquet"), splits, config.sid).save(codebook_dir)
    return Prepared(name, splits, Codebook.load(codebook_dir), (folder / "value_source.txt").read_text(),
                    folder / "splits.parquet", codebook_dir)


def synthetic_log(name: str, config: GenrecConfig) -> str:
    """The folder of a SYNTHETIC data set's log, generated once (`genrec data synth` with the config's
    `synth` section) under the cache."""
    from genrec.data.synth import generate

    events, seed = SYNTHETIC[name]
    folder = CACHE / f"synth-{name}-{cache_key(events, seed, dataclasses.asdict(config.synth))}"
    if not folder.is_dir():
        generate(events, folder, seed, config.synth)
    return str(folder)


# TrainConfig fields that change how a run is watched or evaluated, never the weights it ends with:
# they stay out of the cache key, so that e.g. evaluating with train.exclude_history reuses the model.
# The value tilt is decode-time: the same weights serve every tilt (bench_value_pareto sweeps it).
NOT_IN_MODEL_KEY = ("valid_users", "eval_every", "threads", "eval_batch_size", "exclude_history",
                    "value_tilt")
# Train settings added after models were cached: at these values they leave the key as it was, so
# the cached models (half an hour each on Beauty) stay theirs.
KEY_LEFT_OUT_AT = {"skip_latest": 0, "value_weight": 1.0}


def model_folder(prepared: Prepared, config: GenrecConfig, *extra_key: Any) -> Path:
    """The cache folder of the model this data set, codebook and config train (`extra_key`: more
    inputs that make a different model, e.g. the summaries a run reads)."""
    codes = hashlib.sha256(prepared.codebook.codes.tobytes()).hexdigest()
    train = {k: v for k, v in dataclasses.asdict(config.train).items()
             if k not in NOT_IN_MODEL_KEY and not (k in KEY_LEFT_OUT_AT and v == KEY_LEFT_OUT_AT[k])}
    key = cache_key(prepared.name, codes, dataclasses.asdict(config.model), train, *extra_key)
    return CACHE / f"model-{prepared.name}-{config.model.decoder}-{key}"


def train_cached(prepared: Prepared, config: GenrecConfig, log_prefix: str = "") -> TrainedModel:
    """Trains (or resumes, or reuses) the model for this data set, codebook and config."""
    folder = model_folder(prepared, config)
    if not (folder / "model").is_dir():
        if config.train.processes > 1:
            train_distributed(prepared, config, folder)
        else:
            run_training(config, prepared.splits, prepared.codebook, folder / "work", folder / "model",
                         log=lambda line: print(f"{log_prefix}{line}", flush=True))
    return load_model(folder / "model")


def train_distributed(prepared: Prepared, config: GenrecConfig, folder: Path) -> None:
    """`train.processes` ranks under torchrun (DDP, gloo on CPU), as the train_generator component
    runs them: each rank trains on its share of every epoch's batches of `train.batch_size`."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={config.train.processes}", "-m", "genrec.train",
               "--config", str(config_path), "--splits", str(prepared.splits_path),
               "--codebook", str(prepared.codebook_path), "--work-dir", str(folder / "work"),
               "--model-dir", str(folder / "model")]
    process = subprocess.Popen(command)
    try:
        if process.wait():
            raise subprocess.CalledProcessError(process.returncode, command)
    finally:
        # A benchmark stopped mid-run (Ctrl-C, kill) must not leave its ranks training on
        # (torchrun passes the SIGTERM on to them); the checkpoints let a rerun resume.
        if process.poll() is None:
            process.terminate()
            process.wait()


def test_figures(model: TrainedModel, prepared: Prepared, config: GenrecConfig,
                 exclude_history: bool | None = None) -> dict[str, float]:
    """Test target of every user, history train + valid, full catalogue (without the user's own
    context items when `exclude_history`, which defaults to the config's)."""
    requests = evaluation_requests(prepared.splits, model.item_ids, model.decoder.config.recent_items, "test")
    exclude = config.train.exclude_history if exclude_history is None else exclude_history
    started = time.perf_counter()
    figures = evaluate(model.decoder, requests, model.tables, config.train.beam_widths, config.train.top_k,
                       config.train.eval_batch_size, exclude_history=exclude)
    figures["eval_seconds"] = time.perf_counter() - started
    # Share of targets that repeat an item of their own context: the hits exclusion would forgo.
    figures["targets_in_context"] = float((requests.recent == requests.targets[:, None]).any(1).mean())
    return figures


def recall_of(model: Any, model_dir: Path, requests: Any, widths: tuple[int, ...], users: int,
              seed: int) -> float:
    """Offline Recall@10 of one policy on `users` test users (cached beside the model: it is
    deterministic, and the widest rungs take minutes on a busy CPU)."""
    cache = model_dir.parent / f"recall-{cache_key(list(widths), users, seed)}.json"
    if cache.is_file():
        value = float(json.loads(cache.read_text())["recall@10"])
    else:
        rng = np.random.default_rng(seed)
        subset = requests.subset(np.sort(rng.choice(len(requests), min(users, len(requests)), replace=False)))
        t0 = time.perf_counter()
        value = float(evaluate(model.decoder, subset, model.tables, list(widths), 10, 128)["recall@10"])
        cache.write_text(json.dumps({"recall@10": value, "widths": list(widths), "users": len(subset),
                                     "seconds": time.perf_counter() - t0}))
    print(f"{list(widths)}: offline Recall@10 {value:.4f} ({users} test users)", flush=True)
    return value


def recipe_path(name: str) -> Path:
    """The frozen reference recipe of a data set."""
    return RECIPES / f"quality_{name}.yaml"


def run_config(name: str, overrides: list[str], config_path: str | Path | None = None) -> GenrecConfig:
    """The config a benchmark runs: a recipe file (the data set's reference recipe unless
    `config_path` names another), then `overrides` (section.key=value)."""
    return load_config(config_path or recipe_path(name), overrides)


@dataclass(frozen=True)
class Recipe:
    """A data set's run config: a recipe file (its reference recipe unless `path`), then overrides."""

    dataset: str
    overrides: tuple[str, ...] = ()
    path: str | None = None

    @classmethod
    def from_args(cls, dataset: str, args: argparse.Namespace) -> Recipe:
        return cls(dataset, tuple(args.set), args.config)

    def config(self, *extra: str) -> GenrecConfig:
        return run_config(self.dataset, [*self.overrides, *extra], self.path)

    def record(self, *extra: str) -> dict[str, Any]:
        """How a result's config was made, for its JSON: the recipe file (relative to the repository)
        and the overrides on top."""
        path = Path(self.path or recipe_path(self.dataset)).resolve()
        shown = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        return {"recipe": shown, "config_overrides": [*self.overrides, *extra]}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and `--set`, as the CLI has them."""
    parser.add_argument("--config", default=None,
                        help="recipe file (default: configs/recipes/quality_<dataset>.yaml)")
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")


# What RSPO must reach against the VSL model it starts from: Value@10 up at least 5%, NDCG@10 down
# at most 2% (test, all users).
RSPO_TARGET_VALUE_GAIN = 0.05
RSPO_TARGET_NDCG_LOSS = 0.02


def cached_model(prepared: Prepared, config: GenrecConfig, allow_train: bool) -> TrainedModel:
    """bench_quality's model for this recipe; refuses to train one unless allowed (Beauty's takes
    over half an hour)."""
    # Refusing needs to know before train_cached starts training.
    folder = model_folder(prepared, config)
    if not (folder / "model").is_dir() and not allow_train:
        raise SystemExit(f"no cached VSL model for {prepared.name} at {folder}: run bench_quality with the "
                         "same recipe first, or pass --allow-train")
    return train_cached(prepared, config, f"[{prepared.name} vsl] ")


# Resamples of the users behind a bootstrap interval.
BOOTSTRAP_DRAWS = 1000


def paired_bootstrap(new: np.ndarray, old: np.ndarray, seed: int) -> list[float]:
    """95% interval of the relative change of a per-user mean, resampling users (paired: the same
    users under both)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(old), size=(BOOTSTRAP_DRAWS, len(old)))
    changes = new[draws].sum(1) / np.maximum(old[draws].sum(1), 1e-12) - 1.0
    return [float(np.quantile(changes, 0.025)), float(np.quantile(changes, 0.975))]


def recorded_controller(controller: Any) -> dict[str, Any]:
    """A ControllerConfig as a result records it: without `state_file`, a path on the machine that
    says nothing about the run (benchmarks give their controllers a fresh one, or none at all)."""
    return {k: v for k, v in dataclasses.asdict(controller).items() if k != "state_file"}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
