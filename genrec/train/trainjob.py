"""Training as a Kubeflow Trainer TrainJob: staged on a shared volume, submitted with the kubeflow
SDK's `TrainerClient` (Kubernetes backend), watched to the end.

A training step on a cluster (`train.launcher: trainjob`: train_generator, and finetune_rspo with
`-m genrec.train.rspo` and the VSL model staged in place of the codebook) does not train in its own
pod. It

1. stages what the nodes need under `trainjob.shared_dir` (a ReadWriteMany volume that the step's
   pod and every node mount at the same path): the config, the codebook and the splits' partitioning
   (the parts themselves already sit on the shared volume when the data steps ran on Ray; otherwise
   they are copied);
2. creates a TrainJob from the ClusterTrainingRuntime `trainjob.runtime`: `trainjob.nodes` nodes of
   `trainjob.gpus_per_node` GPUs, each running `torchrun -m genrec.train ...` (the runtime's torch
   policy gives torchrun its nodes, rank and rendezvous through the PET_* variables);
3. waits for it, streaming node 0's log (rank 0 writes the model) into the step's log, and fails
   with the job's own reason when it fails;
4. copies the model folder from the shared volume into the step's output.

The job's name and staging folder derive from the step's output URI, so a retried step (the same
output) finds its job: a complete one is not run again, a running one is waited for, a failed one is
replaced, and training resumes from the checkpoints on the shared volume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec.config import GenrecConfig, TrainJobConfig
from genrec.data.partitioned import PARTITIONING_FILE, read_partitioning

# The statuses the SDK reports (kubeflow.trainer.constants).
COMPLETE, FAILED = "Complete", "Failed"
# The node whose log the step streams: rank 0 logs the training and writes the model.
LOG_STEP = "node-0"
# How long the step waits for the log stream to drain once the job has ended.
LOG_DRAIN_SECONDS = 30.0
# API errors in a row the wait rides out (an API server restart, a dropped connection) before it
# fails the step; a retried step would find the job again anyway.
TRANSIENT_ERRORS_IN_A_ROW = 5
# Kubernetes names: lowercase alphanumerics and '-', at most 63 characters for a TrainJob (its
# JobSet names its Jobs and Services after it).
NAME_HASH_CHARS = 12


class TrainJobFailed(RuntimeError):
    """The TrainJob failed (its reason and message in the text), or did not finish in time."""


@dataclass(frozen=True)
class StagedTraining:
    """The shared folder of one training step: inputs the nodes read, outputs they write.
    `splits_input`: what the nodes read as the splits (a partitioned folder or one parquet file)."""

    root: Path
    splits_input: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def codebook(self) -> Path:
        return self.root / "codebook"

    @property
    def vsl_model(self) -> Path:
        return self.root / "vsl_model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"


def job_name(step: str, output_uri: str) -> str:
    """A TrainJob name that is the same for every attempt of one step of one run."""
    digest = hashlib.sha256(output_uri.encode("utf8")).hexdigest()[:NAME_HASH_CHARS]
    prefix = "".join(c if c.isalnum() else "-" for c in step.lower()).strip("-")[:30]
    return f"genrec-{prefix}-{digest}"


def stage_training(config: GenrecConfig, name: str, splits: str | Path,
                   codebook: str | Path) -> StagedTraining:
    """Puts the config, the codebook and the splits under `trainjob.shared_dir`/`name`."""
    staged = _stage_splits(config, name, splits)
    _replace_tree(Path(codebook), staged.codebook)
    return staged


def stage_finetuning(config: GenrecConfig, name: str, splits: str | Path,
                     vsl_model: str | Path) -> StagedTraining:
    """Puts the config, the VSL model to fine-tune and the splits under `trainjob.shared_dir`/`name`."""
    staged = _stage_splits(config, name, splits)
    _replace_tree(Path(vsl_model), staged.vsl_model)
    return staged


def _stage_splits(config: GenrecConfig, name: str, splits: str | Path) -> StagedTraining:
    """The staging folder with the config and the splits. Splits whose parts live elsewhere on the
    shared volume (a Ray run's `location`) are staged as their partitioning file alone; a parquet
    file or a folder holding its own parts is copied."""
    root = Path(config.trainjob.shared_dir) / name
    splits = Path(splits)
    staged = StagedTraining(root, root / "splits" / (splits.name if splits.is_file() else ""))
    staged.root.mkdir(parents=True, exist_ok=True)
    staged.config.write_text(json.dumps(config.to_dict()))
    shutil.rmtree(staged.splits, ignore_errors=True)
    if splits.is_dir() and (splits / PARTITIONING_FILE).is_file() and read_partitioning(splits).location:
        location = Path(read_partitioning(splits).location)
        if not location.is_relative_to(Path(config.trainjob.shared_dir)):
            raise ValueError(f"the splits' parts are in {location}, which the TrainJob's nodes do not mount: "
                             f"set ray.shared_dir to trainjob.shared_dir ({config.trainjob.shared_dir})")
        staged.splits.mkdir()
        shutil.copy2(splits / PARTITIONING_FILE, staged.splits / PARTITIONING_FILE)
    elif splits.is_dir():
        shutil.copytree(splits, staged.splits)
    else:
        staged.splits.mkdir()
        shutil.copy2(splits, staged.splits / splits.name)
    return staged


def training_command(config: GenrecConfig, staged: StagedTraining) -> list[str]:
    """What every node runs: a process per GPU (or `train.processes` on CPU nodes); torchrun takes
    its node count, rank and rendezvous from the PET_* variables that the runtime's torch policy
    sets."""
    return [*_torchrun(config), "-m", "genrec.train", "--config", str(staged.config),
            "--splits", str(staged.splits_input), "--codebook", str(staged.codebook),
            "--work-dir", str(staged.checkpoints), "--model-dir", str(staged.model)]


def finetuning_command(config: GenrecConfig, staged: StagedTraining) -> list[str]:
    """What every node of an RSPO job runs: `genrec.train.rspo` under torchrun, as training."""
    return [*_torchrun(config), "-m", "genrec.train.rspo", "--config", str(staged.config),
            "--splits", str(staged.splits_input), "--vsl-model", str(staged.vsl_model),
            "--model-dir", str(staged.model)]


def _torchrun(config: GenrecConfig) -> list[str]:
    processes = config.trainjob.gpus_per_node or config.train.processes
    return ["torchrun", f"--nproc_per_node={processes}"]


class TrainJobRunner:
    """One TrainJob through the kubeflow SDK: submit (or find again), wait, stream the log."""

    def __init__(self, config: TrainJobConfig, image: str, client: Any | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config, self.image = config, image
        self.client = client if client is not None else self._client(config)
        self.clock, self.sleep = clock, sleep

    @staticmethod
    def _client(config: TrainJobConfig) -> Any:
        from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

        return TrainerClient(backend_config=KubernetesBackendConfig(
            namespace=config.namespace or _kubeconfig_namespace(config.kubeconfig),
            config_file=config.kubeconfig or None))

    @property
    def namespace(self) -> str:
        return str(self.client.backend.namespace)

    def run(self, name: str, command: list[str], log: Callable[[str], None],
            env: dict[str, str] | None = None) -> None:
        """Runs `command` on every node of the TrainJob `name`, unless a complete job of that name
        exists; returns when it is complete, raises `TrainJobFailed` when it fails or times out."""
        status = self._status(name)
        if status == COMPLETE:
            log(f"TrainJob {self.namespace}/{name} is already complete: its model is used")
            return
        if status == FAILED:
            log(f"TrainJob {self.namespace}/{name} failed before ({self.failure_reason(name)}): replacing it")
            self.client.delete_job(name)
            self._wait_gone(name)
            status = None
        if status is None:
            self.submit(name, command, env or {})
            per_node = f"{self.config.gpus_per_node} GPU(s)" if self.config.gpus_per_node else "CPU only"
            log(f"TrainJob {self.namespace}/{name} created: {self.config.nodes} node(s), {per_node} each, "
                f"runtime {self.config.runtime}")
        else:
            log(f"TrainJob {self.namespace}/{name} is {status}: waiting for it")
        self.wait(name, log)

    def submit(self, name: str, command: list[str], env: dict[str, str]) -> None:
        from kubeflow.trainer import CustomTrainerContainer
        from kubeflow.trainer.options import ActiveDeadlineSeconds, Name, TrainerCommand

        resources: dict[str, Any] = {"cpu": self.config.cpu_per_node, "memory": self.config.memory_per_node}
        if self.config.gpus_per_node:
            resources["gpu"] = self.config.gpus_per_node
        trainer = CustomTrainerContainer(image=self.image, num_nodes=self.config.nodes,
                                         resources_per_node=resources, env=env or None)
        self.client.train(runtime=self.config.runtime, trainer=trainer, options=[
            Name(name=name), TrainerCommand(command=command),
            ActiveDeadlineSeconds(int(self.config.timeout_minutes * 60))])

    def _status(self, name: str) -> str | None:
        """The job's status, or None when there is no job of that name."""
        try:
            return str(self.client.get_job(name).status)
        except RuntimeError as error:
            if _not_found(error):
                return None
            raise

    def _wait_gone(self, name: str) -> None:
        deadline = self.clock() + self.config.timeout_minutes * 60
        while self._status(name) is not None:
            if self.clock() > deadline:
                raise TrainJobFailed(f"TrainJob {self.namespace}/{name} was not deleted in time")
            self.sleep(self.config.poll_seconds)

    def wait(self, name: str, log: Callable[[str], None]) -> None:
        deadline = self.clock() + self.config.timeout_minutes * 60
        stream: LogStream | None = None
        errors_in_a_row = 0
        try:
            while True:
                try:
                    job = self.client.get_job(name)
                    errors_in_a_row = 0
                except (RuntimeError, TimeoutError) as error:
                    errors_in_a_row += 1
                    if _not_found(error) or errors_in_a_row >= TRANSIENT_ERRORS_IN_A_ROW:
                        raise TrainJobFailed(
                            f"TrainJob {self.namespace}/{name} cannot be read: {error}") from error
                    log(f"reading TrainJob {self.namespace}/{name} failed ({error}); trying again")
                    self.sleep(self.config.poll_seconds)
                    continue
                if stream is None and _node_started(job):
                    stream = LogStream(lambda: self.client.get_job_logs(name, step=LOG_STEP, follow=True),
                                       log, self.config.log_line_chars)
                if job.status == COMPLETE:
                    return
                if job.status == FAILED:
                    raise TrainJobFailed(
                        f"TrainJob {self.namespace}/{name} failed: {self.failure_reason(name)}")
                if self.clock() > deadline:
                    raise TrainJobFailed(f"TrainJob {self.namespace}/{name} did not finish within "
                                         f"trainjob.timeout_minutes={self.config.timeout_minutes:g} (it is "
                                         f"{job.status}); it is left running")
                self.sleep(self.config.poll_seconds)
        finally:
            if stream is not None:
                stream.close(LOG_DRAIN_SECONDS)

    def failure_reason(self, name: str) -> str:
        """The Failed condition's reason and message, as the Trainer controller wrote them (the
        SDK's TrainJob type keeps only the status, so the custom resource is read)."""
        from kubeflow.trainer.constants import constants

        backend = self.client.backend
        resource = backend.custom_api.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, self.namespace, constants.TRAINJOB_PLURAL, name)
        for condition in (resource.get("status") or {}).get("conditions") or []:
            if condition.get("type") == FAILED and condition.get("status") == "True":
                reason, message = condition.get("reason") or "", condition.get("message") or ""
                text = ": ".join(part for part in (reason, message) if part) or "no reason given"
                # The controller's message can quote a node's output: the step's error stays one line.
                return text[:self.config.log_line_chars]
        return "no Failed condition recorded"


class LogStream:
    """Follows a node's log on a thread, passing each line (cut to `line_chars`) to `log`."""

    def __init__(self, lines: Callable[[], Iterator[str]], log: Callable[[str], None],
                 line_chars: int) -> None:
        self.log, self.line_chars = log, line_chars
        self.thread = threading.Thread(target=self._follow, args=(lines,), name="trainjob-log", daemon=True)
        self.thread.start()

    def _follow(self, lines: Callable[[], Iterator[str]]) -> None:
        try:
            for line in lines():
                text = str(line).rstrip("\n")
                self.log(text if len(text) <= self.line_chars else text[:self.line_chars] + " [cut]")
        except Exception as error:  # noqa: BLE001 - the log is a view; the job's status decides
            self.log(f"(the node's log stopped: {error})")

    def close(self, timeout: float) -> None:
        self.thread.join(timeout)


def _kubeconfig_namespace(path: str) -> str | None:
    """The namespace of a kube-config file's current context (the SDK reads only the default
    file's); None: the SDK's own choice (the pod's ServiceAccount namespace in a cluster)."""
    if not path:
        return None
    import yaml

    settings = yaml.safe_load(Path(path).read_text()) or {}
    current = settings.get("current-context")
    for context in settings.get("contexts") or []:
        if context.get("name") == current:
            return (context.get("context") or {}).get("namespace") or None
    return None


def _node_started(job: Any) -> bool:
    return any(step.name == LOG_STEP and step.status not in (None, "Pending") for step in job.steps)


def _not_found(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if getattr(cause, "status", None) == 404:
            return True
        cause = cause.__cause__
    return False


def _replace_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def fetch_model(staged: StagedTraining, model_dir: str | Path) -> None:
    """Copies the job's model folder into the step's output."""
    if not (staged.model / "model.json").is_file():
        raise TrainJobFailed(f"the TrainJob finished without a model in {staged.model}")
    _replace_tree(staged.model, Path(model_dir))


def train_as_trainjob(config: GenrecConfig, step: str, output_uri: str, splits: str | Path,
                      codebook: str | Path, model_dir: str | Path, log: Callable[[str], None],
                      runner: TrainJobRunner | None = None) -> StagedTraining:
    """The whole of a training step on a cluster: stage, run the TrainJob, fetch the model."""
    name = job_name(step, output_uri)
    staged = stage_training(config, name, splits, codebook)
    runner = runner or TrainJobRunner(config.trainjob, config.pipeline.image)
    runner.run(name, training_command(config, staged), log)
    fetch_model(staged, model_dir)
    return staged


def finetune_as_trainjob(config: GenrecConfig, step: str, output_uri: str, splits: str | Path,
                         vsl_model: str | Path, model_dir: str | Path, log: Callable[[str], None],
                         runner: TrainJobRunner | None = None) -> StagedTraining:
    """The whole of an RSPO step on a cluster: stage, run the TrainJob, fetch the tuned model."""
    name = job_name(step, output_uri)
    staged = stage_finetuning(config, name, splits, vsl_model)
    runner = runner or TrainJobRunner(config.trainjob, config.pipeline.image)
    runner.run(name, finetuning_command(config, staged), log)
    fetch_model(staged, model_dir)
    return staged
