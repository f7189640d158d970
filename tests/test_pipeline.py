"""The DAG compiles to IR YAML that loads back, and runs end to end under kfp.local."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from genrec.config import GenrecConfig
from genrec.deploy.registry import LocalRegistry
from pipelines.genrec_pipeline import (
    build_pipeline,
    compile_pipeline,
    count_tasks,
    headline,
    run_local,
    write_run_report,
)


def test_compiles_and_loads_back(tmp_path: Path) -> None:
    from kfp import components

    cfg = GenrecConfig()
    cfg.pipeline.image = "registry.example/genrec:test"
    path = compile_pipeline(cfg, tmp_path / "p.yaml")
    # The pipeline spec, then the kubernetes platform spec (GPU node selectors, tolerations).
    spec = next(yaml.safe_load_all(path.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/genrec:test"}
    assert set(spec["root"]["dag"]["tasks"]) >= {"ingest-and-validate", "split-interactions"}
    default = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert GenrecConfig.from_dict(default) == cfg  # numbers come back as doubles; from_dict copes
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == cfg.pipeline.name


@pytest.mark.integration
def test_local_run_then_cached_rerun(small_config: GenrecConfig) -> None:
    first = run_local(small_config)
    splits = pd.read_parquet(first.outputs["splits"].path)
    assert set(splits["split"]) == {"train", "valid", "test"}
    assert first.metrics()["ingest"]["users"] == 12
    assert Path(first.reports()["data_docs"]).is_file()
    assert first.cached_steps == []
    assert set(headline(first)) == set(first.metrics()) and headline(first)["ingest"]["users"] == 12
    page = write_run_report(first, Path(small_config.pipeline.local_root) / "run.html")
    assert "Step: codebook" in page.read_text() and page.with_suffix(".json").is_file()
    registry = LocalRegistry(small_config.deploy.registry_dir)
    assert first.metrics()["gate"]["promote"] == 1.0 and registry.versions() == ["v0001"]
    # `make run`'s training goes through torchrun, as a TrainJob node's does.
    from genrec.deploy.bundle import MODEL_DIR
    from genrec.model.artefact import load_model

    assert load_model(first.outputs["vsl_model"].path).manifest["training"]["launched_by_torchrun"]
    # The promoted model (RSPO's, when it runs) carries the default value tilt the predictor serves,
    # and the evaluation that promoted it says it ranked with it.
    promoted = load_model(registry.models / "v0001" / MODEL_DIR)
    assert promoted.value_tilt is not None and promoted.value_tilt.weight == small_config.train.value_tilt > 0
    assert "re-ranked by value tilt 0.6" in Path(first.reports()["evaluation_report"]).read_text()
    second = run_local(small_config)
    # Every step but the gate and the deploy step (they act on the deployed model) comes from the cache.
    uncached = {"gate-model", "deploy-model", "condition-1"}
    assert len(second.cached_steps) == count_tasks(small_config) - len(uncached & set(
        build_pipeline(small_config).pipeline_spec.root.dag.tasks))
    assert not uncached & set(second.cached_steps)
    # The same model again passes the gate (equal figures) and becomes the next version.
    assert second.metrics()["gate"]["promote"] == 1.0 and registry.versions() == ["v0001", "v0002"]
    assert second.outputs["splits"].path == first.outputs["splits"].path


@pytest.mark.integration
def test_failed_validation_promotes_nothing(small_config: GenrecConfig, tmp_path: Path) -> None:
    log = pd.read_csv(small_config.data.dataset)
    log.loc[3, "value"] = -1.0
    bad = tmp_path / "bad.csv"
    log.to_csv(bad, index=False)
    small_config.data.dataset = str(bad)
    with pytest.raises(RuntimeError, match="ingest-and-validate"):
        run_local(small_config)
    root = Path(small_config.pipeline.local_root)
    produced = {p.name for p in root.glob("*/*/*")}
    assert "interactions" not in produced and "catalogue" not in produced and "splits" not in produced
