"""The gate (is the candidate at least as good as the deployed model?) and the deploy step."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def gate_model(config: dict, evaluation: Input[Metrics], gate_metrics: Output[Metrics]) -> bool:
    """Compares the candidate's test figures with those of the deployed model (the local registry's
    deployed.json, or the InferenceService's annotations) and returns whether to promote it. (A
    single output: kfp.local resolves a condition on a task's `Output`, not on a named output.)"""
    import json
    from pathlib import Path

    from components.runtime import log_metrics
    from genrec.config import GenrecConfig
    from genrec.deploy.gate import gate_decision
    from genrec.deploy.kserve import deployed_metrics, read_inference_service
    from genrec.deploy.registry import LocalRegistry

    cfg = GenrecConfig.from_dict(config)
    candidate = json.loads(Path(evaluation.path).read_text())
    deployed = None
    if cfg.deploy.target == "local":
        current = LocalRegistry(cfg.deploy.registry_dir).current()
        deployed = current.metrics if current else None
    elif cfg.deploy.target == "kserve":
        service = read_inference_service(cfg.deploy.inference_service, cfg.deploy.namespace)
        deployed = deployed_metrics(service) if service else None
    decision = gate_decision(candidate, deployed, cfg.gate)
    print(decision.summary(), flush=True)
    figures = {"promote": float(decision.promote),
               **{f"candidate_{k}": v for k, v in decision.candidate.items()},
               **{f"deployed_{k}": v for k, v in (decision.deployed or {}).items()}}
    log_metrics(gate_metrics, figures)
    gate_metrics.metadata["decision"] = decision.summary()
    return decision.promote and cfg.deploy.target != "none"


@dsl.component(base_image=BASE_IMAGE)
def deploy_model(config: dict, model: Input[Model], evaluation: Input[Metrics], bundle: Output[Model],
                 deployment: Output[Artifact], feature_repo: Input[Artifact] = None):
    """Writes the serving bundle (model + the run's feature repo, one URI). Locally: registers it as
    a new version in the registry and (optionally) restarts the local ModelServer on it. In a
    cluster: points the InferenceService at the bundle's URI."""
    import hashlib
    import json
    from pathlib import Path

    from genrec.config import GenrecConfig
    from genrec.deploy.bundle import write_serving_bundle
    from genrec.deploy.kserve import deploy_inference_service, storage_uri
    from genrec.deploy.local_server import start_local_server
    from genrec.deploy.registry import LocalRegistry
    from genrec.io import write_json

    cfg = GenrecConfig.from_dict(config)
    figures = json.loads(Path(evaluation.path).read_text())
    write_serving_bundle(bundle.path, model.path, feature_repo.path if feature_repo is not None else None)
    if cfg.deploy.target == "local":
        registry = LocalRegistry(cfg.deploy.registry_dir)
        record = registry.register(bundle.path, figures, source_uri=model.uri)
        result: dict[str, object] = {"target": "local", "version": record.version, "path": record.path}
        if cfg.deploy.start_local_server:
            server = start_local_server(registry, record, cfg)
            result.update(url=server.url, pid=server.pid, log=server.log)
            print(f"ModelServer {record.version} ready at {server.url}", flush=True)
        print(f"registered {record.version} at {record.path}", flush=True)
    elif cfg.deploy.target == "kserve":
        # The artefact URI is unique per run and task: its hash names the version in annotations.
        version = "m-" + hashlib.sha256(bundle.uri.encode()).hexdigest()[:12]
        uri = storage_uri(bundle.uri, version, cfg.deploy.storage_uri_prefix)
        deploy_inference_service(cfg.deploy.inference_service, cfg.deploy.namespace, uri, version, figures,
                                 cfg.deploy.canary_traffic_percent)
        name = f"{cfg.deploy.namespace}/{cfg.deploy.inference_service}"
        result = {"target": "kserve", "inference_service": name, "storage_uri": uri, "version": version}
        print(f"InferenceService {result['inference_service']} now serves {uri}", flush=True)
    else:
        raise ValueError("deploy.target is none: the pipeline should not have run the deploy step")
    deployment.metadata.update(result)
    write_json(result, deployment.path)
