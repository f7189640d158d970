"""The build_codebook Kubeflow component, run for real under kfp.local."""

# No `from __future__ import annotations` here: kfp reads the pipeline signature's real types.


import json
import warnings
from pathlib import Path

import pandas as pd
from kfp import dsl, local

from components.sid import build_codebook
from genrec.config import GenrecConfig
from genrec.sid import Codebook
from tests.test_sid import two_audiences


def test_build_codebook_component_runs_under_kfp_local(tmp_path: Path) -> None:
    catalogue, interactions = two_audiences()
    splits_path, catalogue_path = tmp_path / "splits.parquet", tmp_path / "catalogue.parquet"
    interactions.to_parquet(splits_path)
    catalogue.to_parquet(catalogue_path)
    # The real MiniLM is tested elsewhere; this checks the component's wiring, fast.
    config = GenrecConfig.from_dict({"sid": {"levels": 2, "codes_per_level": 8, "use_text": False,
                                             "collab_dim": 8, "attribute_dim": 8}}).to_dict()

    @dsl.pipeline(name="sid-test")
    def sid_pipeline(config: dict) -> dsl.Model:
        splits = dsl.importer(artifact_uri=str(splits_path), artifact_class=dsl.Dataset,
                              metadata={"dataset": "two-audiences"})
        items = dsl.importer(artifact_uri=str(catalogue_path), artifact_class=dsl.Dataset)
        task = build_codebook(config=config, splits=splits.output, catalogue=items.output)
        return task.outputs["codebook"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = sid_pipeline(config=config)
    codebook = Codebook.load(run.output.path)
    assert len(codebook) == len(catalogue) and codebook.level_sizes[:2] == [8, 8]

    task_dir = next((tmp_path / "root").glob("sid-test-*/build-codebook"))
    table = pd.read_parquet(task_dir / "sid_table")
    assert list(table.columns) == ["item_id", "c0", "c1", "c2"] and len(table) == len(catalogue)
    metrics = json.loads((task_dir / "metrics").read_text())
    assert 0 <= metrics["collision_rate"] <= 1 and metrics["level0_utilisation"] > 0
    report = (task_dir / "report").read_text()
    assert "Code use per level" in report and "data:image/png;base64" in report
