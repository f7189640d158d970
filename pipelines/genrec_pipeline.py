"""The genrec Kubeflow DAG, built from the typed config, plus local run and compile entry points.

`build_pipeline(config)` returns a pipeline whose single parameter `config` defaults to the given
config as a dict; every component rebuilds the typed `GenrecConfig` from it.
"""

import contextlib
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl, kubernetes, local
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

from components.data import ingest_and_validate, split_interactions
from components.deploy import deploy_model, gate_model
from components.features import materialize_summaries, train_summarizer
from components.rspo import finetune_rspo
from components.sid import build_codebook
from components.train import evaluate, fit_baselines, train_generator
from genrec.config import GenrecConfig
from genrec.distributed import shared_local_ray

# The steps whose work runs on Ray with data.engine=ray (component names), and the variable Ray reads
# its token from.
RAY_STEPS = ("ingest_and_validate", "split_interactions", "build_codebook", "materialize_summaries")
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"
# The steps that train in a Kubeflow Trainer TrainJob with train.launcher=trainjob: their own pods
# only stage, wait and copy, on the shared volume the TrainJob's nodes mount.
TRAINJOB_STEPS = ("train_generator", "finetune_rspo")
# The label the RayCluster's NetworkPolicy lets through to the Ray Client port.
RAY_CLIENT_LABEL = "genrec.io/ray-client"


def build_pipeline(config: GenrecConfig, image: str | None = None) -> Any:
    """Returns the pipeline function. `image` (a cluster run) replaces every component's image."""
    defaults = config.to_dict()
    cluster, store = config.pipeline, config.features

    def on_image(task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The cluster image, and where the step runs: resources for every step, plus an accelerator,
        GPU node selector and tolerations for the steps in `pipeline.gpu_steps` (kfp.local ignores
        all of it; tests check the compiled YAML)."""
        if image:
            task.set_container_image(image)
        step = task.component_spec.name.replace("-", "_")
        if step in cluster.gpu_steps:
            task.set_cpu_request(cluster.gpu_cpu_request).set_cpu_limit(cluster.gpu_cpu_limit)
            task.set_memory_request(cluster.gpu_memory_request).set_memory_limit(cluster.gpu_memory_limit)
            task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(cluster.accelerator_limit)
            for key, value in cluster.gpu_node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for toleration in cluster.gpu_tolerations:
                kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator,
                                          value=toleration.value or None, effect=toleration.effect or None)
        else:
            task.set_cpu_request(cluster.cpu_request).set_cpu_limit(cluster.cpu_limit)
            task.set_memory_request(cluster.memory_request).set_memory_limit(cluster.memory_limit)
        if (step in RAY_STEPS and config.data.engine == "ray") or (
                step == "evaluate" and config.train.evaluate_engine == "ray"):
            on_ray_cluster(task)
        job = config.trainjob
        if step in TRAINJOB_STEPS and config.train.launcher == "trainjob" and job.shared_volume_claim:
            kubernetes.mount_pvc(task, pvc_name=job.shared_volume_claim, mount_path=job.shared_dir)
        return task

    def on_ray_cluster(task: dsl.PipelineTask) -> None:
        """A data step joins the RayCluster named in the Ray Secret (optional: without it the step
        starts an embedded Ray in its pod), and mounts the volume the cluster's pods share."""
        ray = config.ray
        if ray.secret:
            kubernetes.use_secret_as_env(
                task, secret_name=ray.secret, optional=True,
                secret_key_to_env={ray.secret_address_key: ray.address_env,
                                   ray.secret_token_key: RAY_TOKEN_ENV})
        if ray.shared_volume_claim:
            kubernetes.mount_pvc(task, pvc_name=ray.shared_volume_claim, mount_path=ray.shared_dir)
        kubernetes.add_pod_label(task, label_key=RAY_CLIENT_LABEL, label_value="true")

    # Every step's metrics and reports are pipeline outputs, so a local run (cached steps included)
    # can print one summary at the end.
    class Outputs(NamedTuple):
        splits: Dataset
        data_docs: Artifact
        data_report: HTML
        sid_table: Dataset
        codebook_report: HTML
        feature_repo: Artifact
        summarizer_report: HTML
        vsl_model: Model
        model: Model
        training_report: HTML
        rspo_report: HTML
        evaluation_report: HTML
        ingest_metrics: Metrics
        split_metrics: Metrics
        codebook_metrics: Metrics
        summarizer_metrics: Metrics
        materialize_metrics: Metrics
        train_metrics: Metrics
        rspo_metrics: Metrics
        baselines_metrics: Metrics
        evaluate_metrics: Metrics
        gate_metrics: Metrics

    @dsl.pipeline(name=config.pipeline.name,
                  description="genrec: data, codebook, summaries, VSL, RSPO, baselines, evaluate, gate, "
                              "deploy")
    def genrec_pipeline(config: dict = defaults) -> Outputs:
        ingest = on_image(ingest_and_validate(config=config)).set_display_name("ingest + validate")
        split = on_image(
            split_interactions(
                config=config,
                interactions=ingest.outputs["interactions"],
                catalogue=ingest.outputs["catalogue"],
            )
        ).set_display_name("leave-one-out split")
        codebook = on_image(
            build_codebook(
                config=config,
                splits=split.outputs["splits"],
                catalogue=ingest.outputs["catalogue"],
            )
        ).set_display_name("UA-SID codebook")
        summarizer = on_image(
            train_summarizer(config=config, splits=split.outputs["splits"])
        ).set_display_name("VISTA summariser")
        features = on_image(
            materialize_summaries(
                config=config,
                splits=split.outputs["splits"],
                summarizer=summarizer.outputs["summarizer"],
                item_sids=codebook.outputs["sid_table"],
            )
        ).set_display_name("materialise summaries into Feast")
        if store.online_store == "redis" and store.redis_secret:
            kubernetes.use_secret_as_env(features, secret_name=store.redis_secret,
                                         secret_key_to_env={store.redis_secret_key: store.redis_env})
        training = on_image(
            train_generator(
                config=config,
                splits=split.outputs["splits"],
                codebook=codebook.outputs["codebook"],
                feature_repo=features.outputs["feature_repo"],
            )
        ).set_display_name("train generator (VSL)")
        rspo = on_image(
            finetune_rspo(config=config, splits=split.outputs["splits"], vsl_model=training.outputs["model"])
        ).set_display_name("RSPO fine-tune")
        baselines = on_image(
            fit_baselines(config=config, splits=split.outputs["splits"],
                          codebook=codebook.outputs["codebook"])
        ).set_display_name("baselines: popularity, SASRec")
        evaluation = on_image(
            evaluate(
                config=config,
                splits=split.outputs["splits"],
                model=rspo.outputs["model"],
                feature_repo=features.outputs["feature_repo"],
                baselines=baselines.outputs["metrics"],
            )
        ).set_display_name("evaluate")
        # Gate and deploy act on the world outside the run (the deployed model), so they never come
        # from the cache.
        gate = on_image(
            gate_model(config=config, evaluation=evaluation.outputs["metrics"])
        ).set_display_name("gate: not worse than deployed").set_caching_options(False)
        with dsl.If(gate.outputs["Output"] == True, name="promoted"):  # noqa: E712 (a kfp condition)
            on_image(
                deploy_model(
                    config=config,
                    model=rspo.outputs["model"],
                    evaluation=evaluation.outputs["metrics"],
                    feature_repo=features.outputs["feature_repo"],
                )
            ).set_display_name("deploy").set_caching_options(False)
        return Outputs(
            splits=split.outputs["splits"],
            data_docs=ingest.outputs["data_docs"],
            data_report=split.outputs["report"],
            sid_table=codebook.outputs["sid_table"],
            codebook_report=codebook.outputs["report"],
            feature_repo=features.outputs["feature_repo"],
            summarizer_report=summarizer.outputs["report"],
            ingest_metrics=ingest.outputs["metrics"],
            split_metrics=split.outputs["metrics"],
            codebook_metrics=codebook.outputs["metrics"],
            summarizer_metrics=summarizer.outputs["metrics"],
            materialize_metrics=features.outputs["metrics"],
            vsl_model=training.outputs["model"],
            model=rspo.outputs["model"],
            training_report=training.outputs["report"],
            rspo_report=rspo.outputs["report"],
            evaluation_report=evaluation.outputs["report"],
            train_metrics=training.outputs["metrics"],
            rspo_metrics=rspo.outputs["metrics"],
            baselines_metrics=baselines.outputs["metrics"],
            evaluate_metrics=evaluation.outputs["metrics"],
            gate_metrics=gate.outputs["gate_metrics"],
        )

    return genrec_pipeline


def compile_pipeline(config: GenrecConfig, output: "str | Path") -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, image=config.pipeline.image), str(output))
    return output


class SubmitError(RuntimeError):
    """The Kubeflow Pipelines endpoint refused the run or could not be reached."""


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    url: str
    experiment: str


def submit_pipeline(config: GenrecConfig, host: str, run_name: "str | None" = None,
                    token: "str | None" = None, package: "str | Path | None" = None) -> SubmittedRun:
    """Compiles the pipeline for the cluster and starts a run on a Kubeflow Pipelines endpoint.

    The config travels as the run's `config` parameter, so the run uses exactly what was compiled
    and checked here."""
    import tempfile

    from kfp import Client

    if not host.startswith(("http://", "https://")):
        raise SubmitError(f"--host {host!r} must be the http(s) URL of the Kubeflow Pipelines API, e.g. "
                          "https://kubeflow.example.com/pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(package) if package else compile_pipeline(config, Path(tmp) / "genrec_pipeline.yaml")
        try:
            client = Client(host=host, existing_token=token, namespace=config.pipeline.namespace or None)
            result = client.create_run_from_pipeline_package(
                str(path), arguments={"config": config.to_dict()}, run_name=run_name,
                experiment_name=config.pipeline.experiment, namespace=config.pipeline.namespace or None,
                enable_caching=config.pipeline.enable_caching)
        except SubmitError:
            raise
        except Exception as exc:  # kfp_server_api, urllib3 and TimeoutError all end up here
            raise SubmitError(f"submitting to {host} failed: {type(exc).__name__}: {exc}".strip()) from exc
    url = f"{host.rstrip('/')}/#/runs/details/{result.run_id}"
    return SubmittedRun(run_id=result.run_id, url=url, experiment=config.pipeline.experiment)


@dataclass
class LocalRun:
    root: Path
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    cached_steps: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Step name -> its kfp Metrics, from the pipeline outputs named `<step>_metrics`."""
        return {name.removesuffix("_metrics"): dict(sorted(artifact.metadata.items()))
                for name, artifact in self.outputs.items() if name.endswith("_metrics")}

    def reports(self) -> dict[str, str]:
        """Reports a person opens: HTML artefacts and the Data Docs index."""
        found = {name: artifact.path for name, artifact in self.outputs.items()
                 if type(artifact).schema_title == HTML.schema_title}
        docs = self.outputs.get("data_docs")
        if docs is not None and docs.metadata.get("index"):
            found["data_docs"] = docs.metadata["index"]
        return found


def run_local(config: GenrecConfig, root: str | Path | None = None) -> LocalRun:
    """Runs the whole DAG in this Python environment with kfp.local's SubprocessRunner."""
    root = Path(root or config.pipeline.local_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=config.pipeline.enable_caching,
        cache_root=str(root / ".kfp_cache"),
    )
    pipeline = build_pipeline(config)
    cache_hits = _CacheHitLog()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(cache_hits)
    root_logger.setLevel(min(level, logging.INFO) or logging.INFO)
    start = time.perf_counter()
    # The data steps of a local run share one embedded Ray (see shared_local_ray).
    ray_for_steps = shared_local_ray(config.ray) if config.data.engine == "ray" else contextlib.nullcontext()
    try:
        with ray_for_steps, warnings.catch_warnings():
            # kfp.local warns that images and display names have no effect locally: expected here.
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            task = pipeline(config=config.to_dict())
    finally:
        root_logger.removeHandler(cache_hits)
        root_logger.setLevel(level)
    # In DAG order (the order the pipeline declares its outputs), for a readable summary.
    outputs = {name: task.outputs[name] for name in pipeline.component_spec.outputs}
    return LocalRun(root=root, seconds=time.perf_counter() - start, outputs=outputs,
                    cached_steps=cache_hits.steps)


class _CacheHitLog(logging.Handler):
    """Notes the steps kfp.local served from its cache, and echoes that to stdout."""

    pattern = re.compile(r"Task '?([\w-]+)'? cache hit")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self.pattern.search(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))
        if match:
            self.steps.append(match.group(1))
            print(f"Task {match.group(1)} cache hit: skipped", file=sys.stdout, flush=True)


# The figures a person reads first, per step; every figure is in the run report and summary JSON.
HEADLINE_METRICS = {
    "ingest": ["users", "items", "interactions", "validation_successful_expectations"],
    "split": ["history_p50", "history_p95", "density", "value_mean"],
    "summarizer": ["summary_recall@10", "popularity_recall@10", "train_seconds"],
    "materialize": ["users", "rows", "materialize_users_per_second"],
    "train": ["train_seconds", "valid_subset_recall@10", "valid_subset_ndcg@10"],
    "rspo": ["steps", "train_seconds", "valid_subset_before_value@10", "valid_subset_after_value@10",
             "valid_subset_before_ndcg@10", "valid_subset_after_ndcg@10"],
    "gate": ["promote", "candidate_test_recall@10", "deployed_test_recall@10", "candidate_test_value@10",
             "deployed_test_value@10"],
    "evaluate": ["test_recall@5", "test_recall@10", "test_ndcg@5", "test_ndcg@10", "test_value@10",
                 "test_coverage@10", "baseline_popularity_test_recall@10", "baseline_sasrec_test_recall@10",
                 "baseline_sasrec_test_ndcg@10"],
    "baselines": ["popularity_test_recall@10", "popularity_test_ndcg@10", "sasrec_test_recall@10",
                  "sasrec_test_ndcg@10"],
    "codebook": ["collision_rate", "prefix_coherence_leaf", "level0_utilisation", "level0_entropy_ratio",
                 "max_items_per_prefix", "build_seconds"],
}


def headline(run: LocalRun) -> dict[str, dict[str, Any]]:
    out = {}
    for step, figures in run.metrics().items():
        keys = HEADLINE_METRICS.get(step)
        out[step] = {k: figures[k] for k in keys if k in figures} if keys else figures
    return out


def write_run_report(run: LocalRun, path: "str | Path") -> Path:
    """One HTML page per run: every step's figures and links to its own reports; plus a JSON twin."""
    from genrec.io import write_json
    from genrec.report import HtmlReport

    path = Path(path)
    report = HtmlReport("genrec pipeline run")
    report.note(f"{run.seconds:.1f}s; outputs in {run.root}; steps from cache: "
                f"{', '.join(run.cached_steps) or 'none'}")
    report.heading("Reports").links({name: Path(target).resolve().as_uri()
                                     for name, target in run.reports().items()})
    for step, figures in run.metrics().items():
        report.heading(f"Step: {step}").figures(figures)
    report.save(str(path))
    write_json({"seconds": run.seconds, "cached_steps": run.cached_steps, "metrics": run.metrics(),
                "reports": run.reports()}, path.with_suffix(".json"))
    return path


def count_tasks(config: GenrecConfig) -> int:
    return len(build_pipeline(config).pipeline_spec.root.dag.tasks)
