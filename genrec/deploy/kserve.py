"""Deploying to a KServe InferenceService through the Kubernetes API.

The predictor is a custom container (manifests/base/predictor.yaml), so its model location is the
STORAGE_URI variable of the container named kserve-container: KServe's storage initializer fetches
that URI into /mnt/models before the server starts. A deployment replaces that variable (a new
rollout of the predictor pods) and records the version and its figures as annotations, which the
next run's gate reads back as "the deployed model".
"""

from __future__ import annotations

import copy
import json
from typing import Any

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER = "kserve-container"
ANNOTATION_VERSION = "genrec.io/model-version"
ANNOTATION_METRICS = "genrec.io/metrics"
# Kubeflow's artefact store is MinIO behind an S3 API; KServe's storage initializer speaks s3://.
URI_SCHEMES = {"minio://": "s3://"}


class DeployError(RuntimeError):
    """The InferenceService cannot be updated as asked."""


def storage_uri(model_uri: str, version: str, prefix: str = "") -> str:
    """Where KServe fetches the model: `prefix/version` when a prefix is configured, else the model
    artefact's own URI."""
    if prefix:
        return f"{prefix.rstrip('/')}/{version}"
    for scheme, replacement in URI_SCHEMES.items():
        if model_uri.startswith(scheme):
            return replacement + model_uri[len(scheme):]
    if "://" not in model_uri:
        raise DeployError(f"model URI {model_uri!r} is a local path, which a cluster cannot fetch: set "
                          "deploy.storage_uri_prefix to the object-store location of the models")
    return model_uri


def deployed_metrics(inference_service: dict[str, Any]) -> dict[str, float] | None:
    """The figures of the model in force, as the last deployment recorded them (None: none known)."""
    annotations = inference_service.get("metadata", {}).get("annotations") or {}
    raw = annotations.get(ANNOTATION_METRICS)
    if not raw:
        return None
    try:
        figures = json.loads(raw)
    except ValueError as exc:
        raise DeployError(f"annotation {ANNOTATION_METRICS} is not JSON: {exc}") from exc
    return {str(k): float(v) for k, v in figures.items()}


def with_new_model(inference_service: dict[str, Any], uri: str, version: str, metrics: dict[str, float],
                   canary_traffic_percent: int = 0) -> dict[str, Any]:
    """A copy of `inference_service` that serves the model at `uri` (the input is not modified)."""
    updated = copy.deepcopy(inference_service)
    predictor = updated.get("spec", {}).get("predictor", {})
    containers = predictor.get("containers") or []
    container = next((c for c in containers if c.get("name") == CONTAINER), None)
    if container is None:
        name = updated.get("metadata", {}).get("name")
        raise DeployError(f"InferenceService {name!r} has no container named {CONTAINER}: deploy "
                          "manifests/ (kubectl apply -k manifests/overlays/gpu) first")
    env = container.setdefault("env", [])
    entry = next((e for e in env if e.get("name") == "STORAGE_URI"), None)
    if entry is None:
        env.append({"name": "STORAGE_URI", "value": uri})
    else:
        entry.pop("valueFrom", None)
        entry["value"] = uri
    if canary_traffic_percent:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    else:
        predictor.pop("canaryTrafficPercent", None)
    annotations = updated.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[ANNOTATION_VERSION] = version
    annotations[ANNOTATION_METRICS] = json.dumps(metrics, sort_keys=True)
    return updated


def _custom_objects() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def read_inference_service(name: str, namespace: str, api: Any = None) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    api = api or _custom_objects()
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise DeployError(f"reading InferenceService {namespace}/{name} failed: "
                          f"{exc.status} {exc.reason}") from exc


def deploy_inference_service(name: str, namespace: str, uri: str, version: str, metrics: dict[str, float],
                             canary_traffic_percent: int = 0, api: Any = None,
                             attempts: int = 3) -> dict[str, Any]:
    """Replaces the model of an existing InferenceService. The replace carries the resourceVersion
    that was read, so a concurrent edit is a 409 conflict, retried on a fresh read, never lost."""
    from kubernetes.client.exceptions import ApiException

    api = api or _custom_objects()
    for _ in range(attempts):
        current = read_inference_service(name, namespace, api)
        if current is None:
            raise DeployError(f"InferenceService {namespace}/{name} does not exist: apply the manifests "
                              "first (kubectl apply -k manifests/overlays/gpu)")
        updated = with_new_model(current, uri, version, metrics, canary_traffic_percent)
        try:
            return api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, updated)
        except ApiException as exc:
            if exc.status != 409:
                raise DeployError(f"updating InferenceService {namespace}/{name} failed: {exc.status} "
                                  f"{exc.reason}") from exc
    raise DeployError(f"InferenceService {namespace}/{name} kept changing under {attempts} attempts: retry")
