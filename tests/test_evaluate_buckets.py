"""Evaluation of every user as a Ray task per bucket (`train.evaluate_engine: ray`) against the
one-process reference, `genrec.evaluate.evaluate` on the splits read whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec.config import ConfigError, GenrecConfig
from genrec.data.partitioned import read_all, write_partitioned
from genrec.data.split import leave_one_out
from genrec.evaluate import evaluate, ranking_metrics
from genrec.evaluate_buckets import MetricSums, evaluate_partitioned
from genrec.model.artefact import load_model
from genrec.train.data import evaluation_requests
from genrec.train.run import run_training
from tests.conftest import make_log
from tests.test_train import tiny_codebook, tiny_config


def test_metric_sums_of_any_split_of_the_users_add_up_to_the_metrics_of_all() -> None:
    rng = np.random.default_rng(7)
    users, catalogue = 500, 3000
    recommended = rng.integers(-1, catalogue, size=(users, 10))
    targets = rng.integers(-1, catalogue, size=users)
    recommended[rng.random(users) < 0.3, 3] = -1   # lists shorter than K
    hits = rng.random(users) < 0.4
    recommended[hits, rng.integers(0, 10, hits.sum())] = targets[hits]
    values = rng.exponential(size=users)
    reference = ranking_metrics(recommended, targets, values, catalogue)
    cuts = np.sort(rng.choice(np.arange(1, users), size=6, replace=False))
    total = MetricSums()
    for part in np.split(np.arange(users), cuts):
        total = total.add(MetricSums.of(recommended[part], targets[part], values[part], catalogue))
    combined = total.metrics(catalogue)
    assert combined.keys() == reference.keys()
    for name, value in reference.items():
        assert combined[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert reference["recall@10"] > 0.3 and 0 < reference["coverage@5"] < 1


@pytest.mark.integration
def test_ray_evaluation_per_bucket_equals_the_one_process_evaluation(tmp_path: Path) -> None:
    splits = tmp_path / "splits"
    splits.mkdir()
    write_partitioned(leave_one_out(make_log(users=60, items=30, per_user=8)), splits, 4)
    config = tiny_config()
    config = config.with_overrides(["ray.num_cpus=2", "ray.object_store_mb=256", "train.evaluate_engine=ray"])
    run_training(config, splits, tiny_codebook(), tmp_path / "work", tmp_path / "model", log=lambda _: None)
    trained = load_model(tmp_path / "model")
    frame = read_all(splits)
    reference = {split: evaluate(trained.decoder, evaluation_requests(frame, trained.item_ids,
                                                                      trained.decoder.config.recent_items, split),
                                 trained.tables, config.train.beam_widths, config.train.top_k,
                                 config.train.eval_batch_size, value_tilt=trained.value_tilt)
                 for split in ("valid", "test")}
    distributed = evaluate_partitioned(config, splits, tmp_path / "model")
    for split in ("valid", "test"):
        assert distributed[split].keys() == reference[split].keys()
        assert distributed[split]["users"] == reference[split]["users"] == 60
        for name, value in reference[split].items():
            assert distributed[split][name] == pytest.approx(value, rel=1e-9), (split, name)
    assert reference["test"]["recall@10"] > 0
    # The default tilt is in force on both sides: a Ray task ranks as the predictor would.
    assert trained.value_tilt is not None and trained.value_tilt.weight == config.train.value_tilt > 0


def test_the_ray_evaluation_refuses_a_model_that_reads_summaries() -> None:
    with pytest.raises(ConfigError, match="train.evaluate_engine: process"):
        GenrecConfig.from_dict({"train": {"evaluate_engine": "ray"}, "model": {"use_summary": True}})
