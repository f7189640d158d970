"""`train_summarizer` and `materialize_summaries` run as Kubeflow components under kfp.local.

No `from __future__ import annotations` here: kfp reads the pipeline's annotations as types."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from genrec.features import FeatureRepo, online_summaries
from tests.test_features_repo import tied_log
from tests.test_vista_snapshots import tiny_config


@pytest.mark.integration
def test_components_under_kfp_local(tmp_path: Path) -> None:
    from kfp import dsl, local
    from kfp.dsl import Artifact, Dataset, Metrics

    from components.features import materialize_summaries, train_summarizer

    splits = tmp_path / "splits.parquet"
    tied_log().to_parquet(splits)
    sids = tmp_path / "sids.parquet"
    pd.DataFrame({"item_id": [f"i{i}" for i in range(30)], "c0": np.arange(30) % 3,
                  "c1": np.arange(30)}).to_parquet(sids)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    class Outputs(NamedTuple):
        feature_repo: Artifact
        latest: Dataset
        train_metrics: Metrics
        store_metrics: Metrics

    @dsl.pipeline
    def summaries_pipeline(config: dict) -> Outputs:
        data = dsl.importer(artifact_uri=str(splits), artifact_class=Dataset)
        codes = dsl.importer(artifact_uri=str(sids), artifact_class=Dataset)
        trained = train_summarizer(config=config, splits=data.output)
        stored = materialize_summaries(config=config, splits=data.output, summarizer=trained.outputs["summarizer"],
                                       item_sids=codes.output)
        return Outputs(stored.outputs["feature_repo"], stored.outputs["summaries"], trained.outputs["metrics"],
                       stored.outputs["metrics"])

    outputs = summaries_pipeline(config=tiny_config().to_dict()).outputs
    repo_artifact, latest_artifact = outputs["feature_repo"], outputs["latest"]
    train_metrics, store_metrics = outputs["train_metrics"], outputs["store_metrics"]
    assert train_metrics.metadata["users"] == 10 and "summary_recall@10" in train_metrics.metadata
    assert store_metrics.metadata["users"] == 10 and store_metrics.metadata["item_sids"] == 30
    assert store_metrics.metadata["materialize_users_per_second"] > 0
    latest = pd.read_parquet(latest_artifact.path)
    assert len(latest) == 10
    repo = FeatureRepo.open(repo_artifact.path)
    read = online_summaries(repo, latest["user_id"].tolist())
    assert all(read[row.user_id].tobytes() == row.summary for row in latest.itertuples())
