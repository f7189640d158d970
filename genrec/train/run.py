"""One training run end to end: splits + codebook in, model artefact out. The same function runs
in a single process or on every rank under torchrun; only rank 0 writes the artefact."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from genrec.config import GenrecConfig
from genrec.io import read_parquet
from genrec.model.artefact import save_model
from genrec.model.value_tilt import ValueTilt, training_item_values
from genrec.sid.codebook import Codebook
from genrec.train.distributed import Distributed, init_distributed, shutdown
from genrec.train.loop import Trainer, TrainingData, TrainResult
from genrec.train.summaries import SummaryProvider


def training_record(result: TrainResult, config: GenrecConfig) -> dict[str, Any]:
    """What the model artefact says about how it was trained (learning curves included)."""
    return {
        "curves": [dataclasses.asdict(point) for point in result.curves],
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
        "finished": result.finished,
        # torchrun (locally or on a TrainJob's node) names its run in every process it starts.
        "launched_by_torchrun": "TORCHELASTIC_RUN_ID" in os.environ,
        "vsl": config.train.vsl,
        "value_transform": config.train.value_transform,
        "value_weight": config.train.value_weight,
        "value_tilt": config.train.value_tilt,
        **result.stats,
    }


def training_data(config: GenrecConfig, splits: pd.DataFrame | str | Path, codebook: Codebook,
                  summaries: SummaryProvider | None = None, dist: Distributed | None = None) -> TrainingData:
    """The examples as `train.examples` asks: built in memory from the splits (a frame, or a parquet
    file or partitioned folder read whole), or streamed from the partitioned splits folder (its scan
    shared out over `dist`'s ranks)."""
    if config.train.examples == "memory":
        frame = splits if isinstance(splits, pd.DataFrame) else read_parquet(splits)
        return TrainingData.from_splits(frame, codebook.item_ids, codebook.codes, codebook.level_sizes,
                                        config, summaries)
    if isinstance(splits, pd.DataFrame):
        raise ValueError("train.examples=stream reads the partitioned splits folder: pass its path, "
                         "not a frame")
    if summaries is not None or config.model.use_summary:
        raise ValueError("summary tokens with train.examples=stream are not wired yet: "
                         "set train.examples=memory or model.use_summary=false")
    return TrainingData.streamed(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config,
                                 dist)


def run_training(config: GenrecConfig, splits: pd.DataFrame | str | Path, codebook: Codebook,
                 work_dir: str | Path, model_dir: str | Path | None = None,
                 summaries: SummaryProvider | None = None, stop_after_steps: int | None = None,
                 log: Callable[[str], None] = print) -> TrainResult:
    """Trains (resuming from `work_dir` if a checkpoint is there) and, on rank 0, saves the model
    folder with the training record in its manifest."""
    dist = init_distributed()
    try:
        data = training_data(config, splits, codebook, summaries, dist)
        result = Trainer(config, data, work_dir, dist, log).fit(stop_after_steps)
        if dist.is_main and model_dir is not None:
            # One more pass over the training rows' item and value columns (two numbers per item).
            values = training_item_values(splits, codebook.item_ids)
            tilt = ValueTilt.from_values(config.train.value_tilt, values)
            save_model(model_dir, result.decoder, codebook.item_ids,
                       extra={"training": training_record(result, config)}, value_tilt=tilt)
        dist.barrier()
        return result
    finally:
        shutdown(dist)
