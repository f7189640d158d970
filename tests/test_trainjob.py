"""Training as a Kubeflow Trainer TrainJob (`train.launcher: trainjob`), through the kubeflow SDK's
TrainerClient against a Kubernetes API on loopback (testbed/kube_api.py) that checks the token, the
RBAC of the gpu overlay and the TrainJob CRD's schema, and runs each node as a local torchrun that
meets the others on loopback: two nodes really train one model together."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from genrec.config import ConfigError, GenrecConfig
from genrec.data.partitioned import PARTITIONING_FILE, read_partitioning, write_partitioned
from genrec.data.split import leave_one_out
from genrec.train.trainjob import (
    TrainJobFailed,
    TrainJobRunner,
    job_name,
    stage_training,
    train_as_trainjob,
)
from testbed.kube_api import Permission, Rbac, running_kube_api
from tests.conftest import make_log
from tests.test_manifests import crd_errors, render
from tests.test_train import tiny_codebook

PIPELINE_ACCOUNT = ("pipeline-runner", "kubeflow")


def trainjob_config(shared: Path, kubeconfig: Path | None = None, **trainjob: Any) -> GenrecConfig:
    return GenrecConfig.from_dict({
        "model": {"d_model": 16, "layers": 2, "heads": 2, "recent_items": 4, "dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 8, "checkpoint_every": 3, "valid_users": 5, "beam_widths": [4],
                  "top_k": 10, "threads": 1, "launcher": "trainjob", "processes": 1},
        "trainjob": {"shared_dir": str(shared), "kubeconfig": str(kubeconfig or ""), "nodes": 2,
                     "gpus_per_node": 0, "cpu_per_node": "2", "memory_per_node": "4Gi", "poll_seconds": 0.5,
                     "timeout_minutes": 5, **trainjob},
        "pipeline": {"image": "ghcr.io/genrec/genrec:test"},
    })


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    splits = folder / "splits"
    splits.mkdir()
    write_partitioned(leave_one_out(make_log(users=40, items=30, per_user=8)), splits, 3)
    tiny_codebook().save(folder / "codebook")
    return splits, folder / "codebook"


def gpu_overlay() -> list[dict[str, Any]]:
    return render("gpu")


def runtimes() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in gpu_overlay() if d["kind"] == "ClusterTrainingRuntime"}


def validate_trainjob(body: dict[str, Any]) -> None:
    errors = crd_errors(body)
    if errors:
        raise ValueError("; ".join(errors))


def granted(rbac: Rbac, roles: set[str]) -> set[Permission]:
    """Every (verb, group, resource, scope) that the named bound roles grant."""
    out = set()
    for rule, scope, role in rbac.rules:
        if role not in roles:
            continue
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add(Permission(verb, group, resource, scope))
    return out


def http_status(error: BaseException | None) -> int | None:
    """The HTTP status of the Kubernetes API error behind an SDK error."""
    while error is not None:
        if getattr(error, "status", None) is not None:
            return int(error.status)  # type: ignore[attr-defined]
        error = error.__cause__
    return None


def test_job_names_are_stable_per_output_and_valid_kubernetes_names() -> None:
    first = job_name("train_generator", "minio://mlpipeline/v2/artifacts/run-1/model")
    assert first == job_name("train_generator", "minio://mlpipeline/v2/artifacts/run-1/model")
    assert first != job_name("train_generator", "minio://mlpipeline/v2/artifacts/run-2/model")
    assert len(first) <= 63 and first.replace("-", "").isalnum() and first == first.lower()


def test_the_config_names_what_a_trainjob_needs() -> None:
    with pytest.raises(ConfigError, match="trainjob.shared_dir"):
        GenrecConfig.from_dict({"train": {"launcher": "trainjob"}, "trainjob": {"shared_dir": "relative"}})
    for step in ("train_generator", "finetune_rspo"):
        with pytest.raises(ConfigError, match=f"pipeline.gpu_steps names {step}"):
            GenrecConfig.from_dict({"train": {"launcher": "trainjob"}, "pipeline": {"gpu_steps": [step]}})
    with pytest.raises(ConfigError, match="rspo.positive_window=3 needs rspo.examples=memory"):
        GenrecConfig.from_dict({"rspo": {"examples": "stream", "positive_window": 3}})
    with pytest.raises(ConfigError, match="model.use_summary"):
        GenrecConfig.from_dict({"train": {"launcher": "trainjob"}, "model": {"use_summary": True}})
    with pytest.raises(ConfigError, match="trainjob.poll_seconds"):
        GenrecConfig.from_dict({"trainjob": {"poll_seconds": 0}})
    with pytest.raises(ConfigError, match="train.launcher"):
        GenrecConfig.from_dict({"train": {"launcher": "kubernetes"}})


def test_splits_whose_parts_live_on_the_shared_volume_are_staged_as_their_partitioning(
        inputs: tuple[Path, Path], tmp_path: Path) -> None:
    splits, codebook = inputs
    shared = tmp_path / "shared"
    config = trainjob_config(shared)
    # A Ray run's artefact: the partitioning file alone, pointing at parts on the shared volume.
    parts = shared / "genrec-abc" / "splits"
    parts.mkdir(parents=True)
    artefact = tmp_path / "artefact"
    artefact.mkdir()
    partitioning = json.loads((splits / PARTITIONING_FILE).read_text())
    for part in splits.glob("part-*.parquet"):
        (parts / part.name).write_bytes(part.read_bytes())
    (artefact / PARTITIONING_FILE).write_text(json.dumps({**partitioning, "location": str(parts)}))
    staged = stage_training(config, "job", artefact, codebook)
    assert sorted(p.name for p in staged.splits.iterdir()) == [PARTITIONING_FILE]
    assert read_partitioning(staged.splits_input).location == str(parts)
    assert (staged.codebook / "codebook.json").exists() or any(staged.codebook.iterdir())
    assert GenrecConfig.from_dict(json.loads(staged.config.read_text())) == config

    # Parts the nodes could not see: the error names the setting.
    (artefact / PARTITIONING_FILE).write_text(json.dumps({**partitioning, "location": str(tmp_path / "elsewhere")}))
    with pytest.raises(ValueError, match="ray.shared_dir"):
        stage_training(config, "job", artefact, codebook)
    # A folder that holds its own parts, and a single parquet file, are copied.
    staged = stage_training(config, "job", splits, codebook)
    assert sorted(p.name for p in staged.splits.iterdir()) == sorted(p.name for p in splits.iterdir())
    single = next(splits.glob("part-*.parquet"))
    staged = stage_training(config, "job", single, codebook)
    assert staged.splits_input == staged.splits / single.name and staged.splits_input.is_file()


@pytest.mark.integration
def test_a_two_node_trainjob_trains_the_model_and_a_retried_step_reuses_or_replaces_its_job(
        inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """The whole path, through the kubeflow SDK and the gpu overlay's runtime and RBAC:
    1. a job whose nodes fail (a damaged codebook) fails the step with the job's reason;
    2. the retried step (same output) replaces the failed job, and two torchrun nodes train the model
       (rank 0's log streamed into the step's log), which lands in the step's output;
    3. a step retried after that finds the complete job and does not run it again;
    and every permission the gpu overlay grants the pipeline's ServiceAccount was needed."""
    splits, codebook = inputs
    documents = gpu_overlay()
    rbac = Rbac.for_subject(documents, *PIPELINE_ACCOUNT)
    shared = tmp_path / "shared"
    with running_kube_api(tmp_path / "api", runtimes=runtimes(), rbac=rbac, validate=validate_trainjob,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}) as api:
        config = trainjob_config(shared, api.kubeconfig())
        output_uri = "minio://mlpipeline/v2/artifacts/genrec/run-1/train-generator/model"
        model_dir = tmp_path / "model"

        damaged = tmp_path / "damaged-codebook"
        damaged.mkdir()
        (damaged / "codebook.json").write_text("{not json")
        lines: list[str] = []
        with pytest.raises(TrainJobFailed, match="TrainingFailed: node\\(s\\) \\[0, 1\\] exited"):
            train_as_trainjob(config, "train_generator", output_uri, splits, damaged, model_dir, lines.append)
        name = job_name("train_generator", output_uri)
        assert any(f"TrainJob genrec/{name} created" in line for line in lines)

        lines.clear()
        staged = train_as_trainjob(config, "train_generator", output_uri, splits, codebook, model_dir, lines.append)
        assert any("failed before" in line and "replacing it" in line for line in lines), lines
        assert (model_dir / "model.json").is_file() and (model_dir / "model.pt").is_file()
        manifest = json.loads((model_dir / "model.json").read_text())
        assert manifest["training"]["finished"] and manifest["training"]["world_size"] == 2
        assert any("step" in line for line in lines), lines
        assert (staged.checkpoints).is_dir()

        body = api.jobs[name].body
        assert not crd_errors(body)
        trainer = body["spec"]["trainer"]
        assert body["spec"]["runtimeRef"] == {"name": "genrec-torch", "kind": "ClusterTrainingRuntime"}
        assert trainer["numNodes"] == 2 and trainer["image"] == "ghcr.io/genrec/genrec:test"
        assert trainer["command"][:2] == ["torchrun", "--nproc_per_node=1"]
        assert trainer["resourcesPerNode"]["limits"] == {"cpu": "2", "memory": "4Gi"}
        assert body["spec"]["activeDeadlineSeconds"] == 300

        creates = sum(1 for method, path in api.requests if method == "POST")
        lines.clear()
        train_as_trainjob(config, "train_generator", output_uri, splits, codebook, model_dir, lines.append)
        assert any("already complete" in line for line in lines)
        assert sum(1 for method, path in api.requests if method == "POST") == creates

        # Nothing more: every rule of the overlay for this account was used (the trainer's version
        # ConfigMap, which the SDK reads only to warn, is not granted).
        trainjob_roles = {"genrec-pipeline-trainjobs", "genrec-pipeline-trainingruntime-reader"}
        assert granted(rbac, trainjob_roles) == api.used - {Permission("get", "", "configmaps", "kubeflow-system")}


def test_finetune_rspo_runs_as_a_two_node_trainjob_on_streamed_requests(inputs: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """finetune_rspo on a cluster: the VSL model is staged in place of the codebook, two torchrun
    nodes run `genrec.train.rspo` on requests streamed from the partitioned splits, averaging their
    gradients, and rank 0's tuned model lands in the step's output; the served VSL model is untouched."""
    import torch

    from genrec.model.artefact import load_model, save_model
    from genrec.model.decoder import SidDecoder, SidSpace, build_decoder
    from genrec.sid.codebook import Codebook
    from genrec.train.trainjob import finetune_as_trainjob

    splits, codebook_dir = inputs
    documents = gpu_overlay()
    rbac = Rbac.for_subject(documents, *PIPELINE_ACCOUNT)
    codebook = Codebook.load(codebook_dir)
    with running_kube_api(tmp_path / "api", runtimes=runtimes(), rbac=rbac, validate=validate_trainjob,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}) as api:
        config = trainjob_config(tmp_path / "shared", api.kubeconfig()).with_overrides([
            "rspo.examples=stream", "rspo.candidates=5", "rspo.beam_widths=[4]", "rspo.batch_size=4",
            "rspo.max_examples_per_user=2", "rspo.valid_users=5", "rspo.log_every=1", "rspo.lr=0.01"])
        torch.manual_seed(0)
        decoder: SidDecoder = build_decoder(config.model, SidSpace(codebook.level_sizes, codebook.codes))
        vsl = save_model(tmp_path / "vsl", decoder, codebook.item_ids)
        before = (vsl / "model.pt").read_bytes()
        output_uri = "minio://mlpipeline/v2/artifacts/genrec/run-1/finetune-rspo/model"
        lines: list[str] = []
        finetune_as_trainjob(config, "finetune_rspo", output_uri, splits, vsl, tmp_path / "model", lines.append)
        body = api.jobs[job_name("finetune_rspo", output_uri)].body
    assert not crd_errors(body)
    command = body["spec"]["trainer"]["command"]
    assert command[:2] == ["torchrun", "--nproc_per_node=1"] and command[2:4] == ["-m", "genrec.train.rspo"]
    assert body["spec"]["trainer"]["numNodes"] == 2
    record = load_model(tmp_path / "model").manifest["rspo"]
    assert record["world_size"] == 2 and record["examples"] == "stream" and record["steps"] > 1
    assert any("rspo (rspo" in line and "on each of 2 rank(s)" in line for line in lines), lines
    assert (vsl / "model.pt").read_bytes() == before
    tuned = load_model(tmp_path / "model").decoder.state_dict()
    assert any(not torch.equal(tensor, decoder.state_dict()[name]) for name, tensor in tuned.items())


@pytest.mark.integration
def test_a_job_that_outlives_its_timeout_fails_the_step_and_is_left_running(tmp_path: Path) -> None:
    """The wait is bounded by trainjob.timeout_minutes (on an injected clock here)."""
    clock = [0.0]

    class Job:
        status = "Running"
        steps: list[Any] = []

    class Client:
        backend = type("Backend", (), {"namespace": "genrec"})()

        def get_job(self, name: str) -> Job:
            return Job()

    config = trainjob_config(tmp_path).trainjob
    runner = TrainJobRunner(config, "image", client=Client(), clock=lambda: clock[0],
                            sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    with pytest.raises(TrainJobFailed, match="did not finish within trainjob.timeout_minutes=5"):
        runner.wait("genrec-x", print)
    assert clock[0] == pytest.approx(5 * 60 + config.poll_seconds, abs=config.poll_seconds)


@pytest.mark.integration
def test_the_loopback_api_refuses_a_wrong_token_and_an_ungranted_call(tmp_path: Path) -> None:
    """The test server enforces what a cluster would, so the tests above can fail on RBAC."""
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

    rbac = Rbac.for_subject(gpu_overlay(), *PIPELINE_ACCOUNT)
    with running_kube_api(tmp_path, runtimes=runtimes(), rbac=rbac, namespace="other") as api:
        client = TrainerClient(backend_config=KubernetesBackendConfig(config_file=str(api.kubeconfig()),
                                                                      namespace="other"))
        with pytest.raises(RuntimeError) as denied:
            client.get_job("anything")   # the Role is in genrec, not in "other"
        assert http_status(denied.value) == 403
        api.token = "rotated"
        with pytest.raises(RuntimeError) as unauthorised:
            client.get_runtime("genrec-torch")
        assert http_status(unauthorised.value) == 401


def test_the_wait_rides_out_a_few_api_errors_but_not_a_deleted_job(tmp_path: Path) -> None:
    """A few failed reads in a row (an API server restart) are logged and retried; the job's
    completion is still seen. A job deleted under the step, or an API down for good, fails it."""
    from kubernetes.client import ApiException

    class Job:
        def __init__(self, status: str) -> None:
            self.status, self.steps = status, []

    class Client:
        backend = type("Backend", (), {"namespace": "genrec"})()

        def __init__(self, answers: list[Any]) -> None:
            self.answers = answers

        def get_job(self, name: str) -> Job:
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(answer, BaseException):
                raise answer
            return answer

    def failed_read(status: int) -> RuntimeError:
        error = RuntimeError("Failed to get TrainJob: genrec/x")
        error.__cause__ = ApiException(status=status)
        return error

    config = trainjob_config(tmp_path).trainjob
    lines: list[str] = []
    flaky = Client([failed_read(503), TimeoutError("timeout"), failed_read(500), Job("Running"), Job("Complete")])
    TrainJobRunner(config, "image", client=flaky, sleep=lambda _: None).wait("x", lines.append)
    assert sum("trying again" in line for line in lines) == 3
    with pytest.raises(TrainJobFailed, match="cannot be read"):
        TrainJobRunner(config, "image", client=Client([failed_read(404)]), sleep=lambda _: None).wait("x", print)
    with pytest.raises(TrainJobFailed, match="cannot be read"):
        TrainJobRunner(config, "image", client=Client([failed_read(503)]), sleep=lambda _: None).wait("x", print)
