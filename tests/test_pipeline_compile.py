"""The compiled IR YAML carries what a cluster needs and kfp.local ignores: accelerators, resources,
GPU node selectors and tolerations, and no caching on the steps that act on the deployed model."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from genrec.config import GenrecConfig
from pipelines.genrec_pipeline import compile_pipeline


def compiled(cfg: GenrecConfig, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, kubernetes platform spec) of the compiled YAML."""
    docs = [d for d in yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text()) if d]
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec, platform


def resources(spec: dict[str, Any], executor: str) -> dict[str, Any]:
    return spec["deploymentSpec"]["executors"][executor]["container"].get("resources", {})


@pytest.fixture
def gpu_steps() -> set[str]:
    # RSPO in its own pod (train.launcher=local) on a GPU node.
    return {"exec-finetune-rspo"}


REPO = Path(__file__).resolve().parents[1]


def test_the_default_compile_asks_for_no_gpu_and_names_the_cpu_image(tmp_path: Path) -> None:
    cfg = GenrecConfig()
    spec, platform = compiled(cfg, tmp_path)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == cfg.pipeline.image and "cuda" not in cfg.pipeline.image
        assert "accelerator" not in resources(spec, name), f"{name} asks for a GPU with the CPU image"
        assert "nodeSelector" not in platform.get(name, {}) and "tolerations" not in platform.get(name, {})


def test_gpu_steps_request_accelerators_and_land_on_gpu_nodes(tmp_path: Path, gpu_steps: set[str]) -> None:
    from genrec.config import load_config

    cluster = load_config(REPO / "configs" / "cluster.yaml")
    assert "cuda" in cluster.pipeline.image, "the cluster config names the CUDA image its TrainJobs run"
    # On the cluster both training steps train in TrainJobs: their own pods hold no GPU.
    assert cluster.train.launcher == "trainjob" and cluster.pipeline.gpu_steps == []
    spec, _ = compiled(cluster, tmp_path)
    assert not [name for name in spec["deploymentSpec"]["executors"] if "accelerator" in resources(spec, name)]
    cfg = cluster.with_overrides(["train.launcher=local", "pipeline.gpu_steps=[finetune_rspo]"])
    spec, platform = compiled(cfg, tmp_path)
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == cfg.pipeline.image
    executors = spec["deploymentSpec"]["executors"]
    present_gpu = gpu_steps & set(executors)
    assert "exec-finetune-rspo" in present_gpu
    for name in present_gpu:
        res = resources(spec, name)
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert int(res["accelerator"]["resourceCount"]) == 1
        assert res["resourceCpuLimit"] == cfg.pipeline.gpu_cpu_limit
        assert res["resourceMemoryLimit"] == cfg.pipeline.gpu_memory_limit
        placement = platform[name]
        assert placement["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert placement["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]
    for name in set(executors) - present_gpu:
        res = resources(spec, name)
        assert "accelerator" not in res, f"{name} must not ask for a GPU"
        assert res["resourceCpuLimit"] == cfg.pipeline.cpu_limit
        assert res["resourceMemoryLimit"] == cfg.pipeline.memory_limit
        assert "nodeSelector" not in platform.get(name, {}) and "tolerations" not in platform.get(name, {})


def test_placement_follows_the_config(tmp_path: Path) -> None:
    cfg = GenrecConfig().with_overrides([
        "pipeline.gpu_steps=[train_generator, build_codebook]",
        "pipeline.accelerator_type=nvidia.com/gpu",
        "pipeline.accelerator_limit=2",
        'pipeline.gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}',
        "pipeline.gpu_tolerations=[{key: dedicated, operator: Equal, value: ml, effect: NoExecute}]",
    ])
    spec, platform = compiled(cfg, tmp_path)
    for name in ("exec-train-generator", "exec-build-codebook"):
        assert int(resources(spec, name)["accelerator"]["resourceCount"]) == 2
        assert platform[name]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert platform[name]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                  "effect": "NoExecute"}]
    assert "accelerator" not in resources(spec, "exec-evaluate")


def test_gate_and_deploy_are_never_cached_and_deploy_runs_only_when_promoted(tmp_path: Path) -> None:
    spec, _ = compiled(GenrecConfig(), tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["gate-model"]["cachingOptions"] == {}  # enableCache absent: caching off
    assert tasks["evaluate"]["cachingOptions"] == {"enableCache": True}
    condition = next(t for t in tasks.values() if "triggerPolicy" in t)
    assert "gate-model-Output" in condition["triggerPolicy"]["condition"]
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"deploy-model"} and inner["deploy-model"]["cachingOptions"] == {}


def test_bad_placement_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"pipeline.gpu_tolerations\[0\].operator"):
        GenrecConfig().with_overrides(["pipeline.gpu_tolerations=[{key: a, operator: Maybe}]"])
    with pytest.raises(ValueError, match="pipeline.gpu_node_selector must be a mapping"):
        GenrecConfig().with_overrides(["pipeline.gpu_node_selector=[a]"])


def test_a_redis_online_store_gets_its_connection_string_from_the_secret(tmp_path: Path) -> None:
    cfg = GenrecConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "cluster.yaml")
    assert cfg.features.online_store == "redis" and cfg.deploy.target == "kserve"
    _, platform = compiled(cfg, tmp_path)
    [secret] = [s for s in platform["exec-materialize-summaries"]["secretAsEnv"]
                if s["secretName"] == cfg.features.redis_secret]
    assert secret["secretName"] == "genrec-feast-redis" and secret["optional"] is False
    assert secret["keyToEnv"] == [{"secretKey": "connection_string", "envVar": "GENREC_REDIS_CONNECTION_STRING"}]
    # sqlite (the local default) needs no secret.
    _, platform = compiled(GenrecConfig(), tmp_path)
    assert not [s for s in platform["exec-materialize-summaries"].get("secretAsEnv", [])
                if s["secretName"] == "genrec-feast-redis"]


DATA_STEPS = ("exec-ingest-and-validate", "exec-split-interactions", "exec-build-codebook",
              "exec-materialize-summaries")


def test_data_steps_join_the_ray_cluster_from_its_secret(tmp_path: Path) -> None:
    """With data.engine=ray, the data steps (and only they) read the RayCluster's address and token
    from the optional Secret, mount the shared volume at ray.shared_dir, and carry the label the
    cluster's NetworkPolicy lets through."""
    cfg = GenrecConfig.from_yaml(REPO / "configs" / "cluster.yaml")
    _, platform = compiled(cfg, tmp_path)
    for step in DATA_STEPS:
        [secret] = [s for s in platform[step]["secretAsEnv"] if s["secretName"] == cfg.ray.secret]
        assert secret["optional"] is True  # absent: the step starts an embedded Ray in its pod
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
            ("address", cfg.ray.address_env), ("auth_token", "RAY_AUTH_TOKEN")}
        assert [(m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"])
                for m in platform[step]["pvcMount"]] == [(cfg.ray.shared_volume_claim, cfg.ray.shared_dir)]
        assert platform[step]["podMetadata"]["labels"] == {"genrec.io/ray-client": "true"}
    # The evaluate step scores users on the same Ray (train.evaluate_engine: ray).
    assert [s["secretName"] for s in platform["exec-evaluate"]["secretAsEnv"]] == [cfg.ray.secret]
    # The training steps mount the volume their TrainJobs' nodes share, and join no Ray.
    for step in ("exec-train-generator", "exec-finetune-rspo"):
        assert [(m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"])
                for m in platform[step]["pvcMount"]] == [(cfg.trainjob.shared_volume_claim, cfg.trainjob.shared_dir)]
        assert not [s for s in platform.get(step, {}).get("secretAsEnv", []) if s["secretName"] == cfg.ray.secret]
    local = cfg.with_overrides(["train.launcher=local", "train.evaluate_engine=process"])
    _, platform = compiled(local, tmp_path)
    for step in ("exec-train-generator", "exec-finetune-rspo", "exec-evaluate"):
        assert "pvcMount" not in platform.get(step, {}) and "secretAsEnv" not in platform.get(step, {})
    # The in-memory engine needs neither.
    pandas = cfg.with_overrides(["data.engine=pandas"])
    _, platform = compiled(pandas, tmp_path)
    for step in DATA_STEPS:
        assert not [s for s in platform.get(step, {}).get("secretAsEnv", []) if s["secretName"] == cfg.ray.secret]
