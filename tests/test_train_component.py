"""train_generator -> evaluate, run for real under kfp.local on a tiny synthetic set."""

# No `from __future__ import annotations` here: kfp reads the pipeline signature's real types.

import json
import warnings
from pathlib import Path

from kfp import dsl, local

from components.train import evaluate, train_generator
from genrec.data.split import leave_one_out
from genrec.model.artefact import load_model
from tests.conftest import make_log
from tests.test_train import tiny_codebook, tiny_config


def test_train_then_evaluate_under_kfp_local(tmp_path: Path) -> None:
    splits_path, codebook_path = tmp_path / "splits.parquet", tmp_path / "codebook"
    leave_one_out(make_log(users=12, items=30, per_user=6)).to_parquet(splits_path)
    tiny_codebook().save(codebook_path)
    config = tiny_config(epochs=2).to_dict()

    @dsl.pipeline(name="train-test")
    def train_pipeline(config: dict) -> dsl.Metrics:
        splits = dsl.importer(artifact_uri=str(splits_path), artifact_class=dsl.Dataset,
                              metadata={"dataset": "tiny", "value_source": "simulated"})
        codebook = dsl.importer(artifact_uri=str(codebook_path), artifact_class=dsl.Model)
        trained = train_generator(config=config, splits=splits.output, codebook=codebook.output)
        scored = evaluate(config=config, splits=splits.output, model=trained.outputs["model"])
        return scored.outputs["metrics"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_pipeline(config=config)
    figures = json.loads(Path(run.output.path).read_text())
    for split in ("valid", "test"):
        assert figures[f"{split}_users"] == 12
        assert 0 <= figures[f"{split}_recall@5"] <= figures[f"{split}_recall@10"] <= 1
        assert figures[f"{split}_value@10"] >= 0 and 0 < figures[f"{split}_coverage@10"] <= 1
    train_dir = next((tmp_path / "root").glob("train-test-*/train-generator"))
    model = load_model(train_dir / "model")
    assert model.manifest["training"]["finished"] and len(model.manifest["training"]["curves"]) == 2
    assert model.manifest["training"]["launched_by_torchrun"]  # the local step trains through torchrun
    assert "data:image/png;base64" in (train_dir / "report").read_text()
    assert json.loads((train_dir / "metrics").read_text())["steps"] > 0
    assert "Value@K uses the simulated" in (next((tmp_path / "root").glob("train-test-*/evaluate")) / "report").read_text()
