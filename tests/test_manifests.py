"""Offline checks of manifests/: every overlay renders, validates and is internally consistent.

Built-in kinds are validated with kubernetes-validate (strict); custom resources against the upstream
CRDs in ../shared/k8s-crds/ with unknown fields made errors; alert rules with promtool when present.
Beyond schemas, the tests check what a schema cannot: pod hardening, least-privilege RBAC, what the
NetworkPolicies let through, and that the config, ports, names and metric names agree across files.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from genrec import contract as metrics
from genrec.config import GenrecConfig
from testbed.binaries import require_binary
from tests.conftest import REPO

MANIFESTS = REPO / "manifests"
OVERLAYS = {
    "base": MANIFESTS / "base",
    "gpu": MANIFESTS / "overlays" / "gpu",
    "local": MANIFESTS / "overlays" / "local",
}
CRD_DIR = REPO.parent / "shared" / "k8s-crds"
CRD_FILES = {
    ("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("feast.dev", "FeatureStore"): "feast.dev_featurestores.yaml",
    ("ray.io", "RayCluster"): "ray.io_rayclusters.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    ("trainer.kubeflow.org", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.yaml",
}
# Custom kinds only some overlays have: the data steps' RayCluster is on the GPU (cluster) overlay.
OVERLAY_ONLY_KINDS = {"RayCluster": {"gpu"}, "ClusterTrainingRuntime": {"gpu"}, "TrainJob": set(),
                      # kind / minikube run one replica and usually no KEDA.
                      "ScaledObject": {"base", "gpu"}}
# The oldest Kubernetes we target, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NAMESPACE = "genrec"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "ClusterTrainingRuntime"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


# ---------------------------------------------------------------------------------------------------
# Rendering and lookup

TOOL_HINTS = {
    "kubectl": "install kubectl >= 1.27, which embeds kustomize v5 (https://kubernetes.io/docs/tasks/tools/)",
    "promtool": "apt-get install prometheus, which ships promtool",
}


def require_tool(name: str) -> str:
    """A command-line tool's path, with the install hint that fits the tool."""
    return require_binary(name, TOOL_HINTS[name])


@functools.cache
def _render(overlay: str) -> tuple[str, ...]:
    kubectl = require_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(OVERLAYS[overlay])], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(json.dumps(doc) for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    """The rendered documents of an overlay (a fresh copy each call, so tests may mutate them)."""
    return [json.loads(doc) for doc in _render(overlay)]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def group_of(doc: dict[str, Any]) -> str:
    api = doc["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def is_custom(doc: dict[str, Any]) -> bool:
    group = group_of(doc)
    return (group, doc["kind"]) in CRD_FILES or ("." in group and not group.endswith(".k8s.io"))


def genrec_config(docs: list[dict[str, Any]]) -> tuple[str, GenrecConfig]:
    """The generated genrec ConfigMap's name and its config, loaded with the strict loader."""
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("genrec-config-")]
    assert len(maps) == 1, "the configMapGenerator genrec-config must produce exactly one (hashed) ConfigMap"
    raw = yaml.safe_load(maps[0]["data"]["config.yaml"])
    return maps[0]["metadata"]["name"], GenrecConfig.from_dict(raw)


def predictor(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The InferenceService's predictor spec and its kserve-container."""
    spec = one(docs, "InferenceService", "genrec")["spec"]["predictor"]
    assert [c["name"] for c in spec["containers"]] == ["kserve-container"]
    return spec, spec["containers"][0]


def controller_pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = one(docs, "Deployment", "genrec-controller")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["controller"]
    return pod, pod["containers"][0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(where, pod spec, pod labels) of every pod this overlay makes, the InferenceService's included."""
    pods = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in POD_TEMPLATE_KINDS:
            template = doc["spec"]["template"]
            pods.append((where, template["spec"], template["metadata"].get("labels", {})))
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            pods.append((where, template["spec"], template["metadata"].get("labels", {})))
        elif doc["kind"] == "Pod":
            pods.append((where, doc["spec"], doc["metadata"].get("labels", {})))
        elif doc["kind"] == "RayCluster":
            groups = [("head", doc["spec"]["headGroupSpec"])] + [
                (group["groupName"], group) for group in doc["spec"].get("workerGroupSpecs", [])]
            for name, group in groups:
                template = group["template"]
                pods.append((f"{where}/{name}", template["spec"], template["metadata"].get("labels", {})))
        elif doc["kind"] == "InferenceService":
            for component in ("predictor", "transformer", "explainer"):
                if component in doc["spec"]:
                    spec = doc["spec"][component]
                    labels = {**doc["metadata"].get("labels", {}), **spec.get("labels", {})}
                    pods.append((f"{where}/{component}", spec, labels))
    return pods


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def seconds(duration: str) -> float:
    """A Prometheus duration ("30s", "1m30s", "2h") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


OVERLAY_NAMES = list(OVERLAYS)


# ---------------------------------------------------------------------------------------------------
# Rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_overlay_renders_complete_and_without_secrets(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    for kind in ("Namespace", "InferenceService", "Deployment", "ServiceAccount", "Role", "RoleBinding",
                 "Service", "NetworkPolicy", "PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap",
                 "FeatureStore"):
        assert kind in kinds, f"{overlay}: no {kind} rendered"
    # Secrets are created by hand (manifests/README.md), never committed or generated.
    assert "Secret" not in kinds, f"{overlay}: a Secret is in the manifests; create it with kubectl instead"
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"{overlay}: duplicate objects"
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"
        else:
            assert "namespace" not in doc["metadata"], f"cluster-scoped {doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_builtin_kinds_pass_strict_kubernetes_validation(overlay: str) -> None:
    checked = 0
    for doc in render(overlay):
        if is_custom(doc):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                            f"{version}: {exc.message} at {'.'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 10


def test_strict_kubernetes_validation_rejects_a_misspelt_field() -> None:
    deployment = one(render("base"), "Deployment", "genrec-controller")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def _strict_schema(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields forbidden (as the README of k8s-crds asks)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict_schema(sub) for name, sub in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict_schema(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict_schema(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict_schema(sub) for sub in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = _strict_schema(out["not"])
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if isinstance(out.get("pattern"), str) and "(?i)" in out["pattern"][1:]:
        # Go's RE2 allows an inline flag anywhere ("^(?i)..."); Python only at the start.
        out["pattern"] = "(?i)" + out["pattern"].replace("(?i)", "")
    return out


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft7Validator:
    if not CRD_DIR.is_dir():
        pytest.skip(f"{CRD_DIR} is absent: the CRD schemas live beside the checkout in ../shared/k8s-crds")
    # The CRDs are megabytes of YAML: libyaml's loader reads them ten times faster than pure Python.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRD_DIR / CRD_FILES[(group, kind)]).read_text(), Loader=loader)
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{group}/{version} {kind} is not served by the CRD (served: {sorted(served)})"
    schema = _strict_schema(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    version = doc["apiVersion"].split("/")[1]
    validator = crd_validator(group_of(doc), doc["kind"], version)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_custom_resources_match_their_crds(overlay: str) -> None:
    customs = [d for d in render(overlay) if is_custom(d)]
    for doc in customs:
        key = (group_of(doc), doc["kind"])
        assert key in CRD_FILES, f"{overlay}: {key} has no CRD schema to validate against; add it to CRD_FILES"
        errors = crd_errors(doc)
        assert not errors, f"{overlay}: {doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors[:20])
    expected = {k for _, k in CRD_FILES if overlay in OVERLAY_ONLY_KINDS.get(k, {overlay})}
    assert {d["kind"] for d in customs} == expected


@pytest.mark.parametrize(
    ("kind", "mutate", "field"),
    [
        ("InferenceService", lambda d: d["spec"]["predictor"].__setitem__("minReplica", 2), "minReplica"),
        ("InferenceService",
         lambda d: d["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"].__setitem__("paht", "/"),
         "paht"),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("intervall", "5s"), "intervall"),
        ("FeatureStore", lambda d: d["spec"]["services"]["onlineStore"].__setitem__("persistance", {}),
         "persistance"),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].__setitem__("expression", "1"),
         "expression"),
        ("ScaledObject", lambda d: d["spec"].__setitem__("pollingIntervall", 15), "pollingIntervall"),
    ],
)
def test_crd_validation_rejects_a_misspelt_field(kind: str, mutate: Any, field: str) -> None:
    doc = one(render("base"), kind)
    assert not crd_errors(doc)
    mutate(doc)
    errors = crd_errors(doc)
    assert errors and any(field in e for e in errors), errors


def test_crd_validation_rejects_a_wrong_type() -> None:
    isvc = one(render("base"), "InferenceService")
    isvc["spec"]["predictor"]["scaleMetric"] = "gpu"  # not in the CRD's enum
    isvc["spec"]["predictor"]["maxReplicas"] = "8"
    errors = crd_errors(isvc)
    assert any("scaleMetric" in e for e in errors) and any("maxReplicas" in e for e in errors), errors


def test_featurestore_meets_the_crd_cel_rules() -> None:
    """The CRD's x-kubernetes-validations (CEL) are not evaluated by jsonschema: the ones that apply here,
    by hand."""
    store = one(render("base"), "FeatureStore", "genrec")["spec"]
    project_dir = store["feastProjectDir"]
    assert sum(k in project_dir for k in ("git", "init", "packaged")) == 1
    registry_file = store["services"]["registry"]["local"]["persistence"]["file"]
    pvc = registry_file["pvc"]
    assert "/" not in registry_file["path"], "with a PVC the registry path is a file name only"
    assert sum(k in pvc for k in ("ref", "create")) == 1
    assert re.fullmatch(r"/[^:]*", pvc["mountPath"])
    # Scaling rules only bite with replicas > 1 or autoscaling, which this CR does not use.
    assert store.get("replicas", 1) <= 1 and "scaling" not in store["services"]


# ---------------------------------------------------------------------------------------------------
# Pods: hardening and resources


def effective_security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
    inherited = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    return {**{k: pod_ctx[k] for k in inherited if k in pod_ctx}, **ctx}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_every_pod_is_hardened_and_bounded(overlay: str) -> None:
    pods = pod_specs(render(overlay))
    assert {w for w, _, _ in pods} >= {"InferenceService/genrec/predictor", "Deployment/genrec-controller"}
    for where, pod, _ in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            at = f"{overlay}: {where}/{container['name']}"
            ctx = effective_security(pod, container)
            assert ctx.get("runAsNonRoot") is True, f"{at}: runAsNonRoot"
            assert ctx.get("runAsUser", 1) != 0, f"{at}: runs as uid 0"
            assert ctx.get("readOnlyRootFilesystem") is True, f"{at}: readOnlyRootFilesystem"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation"
            assert ctx.get("privileged") is not True, f"{at}: privileged"
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), f"{at}: capabilities not dropped"
            assert not ctx.get("capabilities", {}).get("add"), f"{at}: adds capabilities"
            assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{at}: seccompProfile"
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(bound, {}), f"{at}: no {resource} {bound}"
            # The root filesystem is read-only, so /tmp must be a writable emptyDir.
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]] and not tmp[0].get("readOnly"), \
                f"{at}: no writable emptyDir at /tmp"
            assert container.get("image", "").split(":")[-1] not in ("", "latest"), f"{at}: untagged image"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_feast_operator_pods_get_what_the_cr_can_set(overlay: str) -> None:
    """The operator builds the Feast pods; the CR can only set the pod security context and resources."""
    services = one(render(overlay), "FeatureStore", "genrec")["spec"]["services"]
    ctx = services["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["seccompProfile"]["type"] == "RuntimeDefault"
    servers = [services["onlineStore"]["server"], services["registry"]["local"]["server"]]
    for server in servers:
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(server["resources"][bound])


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_predictor_probes_ports_and_model_location(overlay: str) -> None:
    docs = render(overlay)
    _, cfg = genrec_config(docs)
    spec, container = predictor(docs)
    annotations = one(docs, "InferenceService")["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    from genrec.deploy.bundle import FEATURE_REPO_DIR, MODEL_DIR

    # KServe's storage initializer puts the deploy step's serving bundle at /mnt/models.
    assert container["args"][:5] == ["serve", "--model-dir", f"/mnt/models/{MODEL_DIR}", "--feature-repo",
                                     f"/mnt/models/{FEATURE_REPO_DIR}"]
    assert container["args"][container["args"].index("--host") + 1] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The gRPC port is declared exactly when the config turns gRPC on.
    assert ports == {"http1": cfg.serving.http_port, **({"grpc": cfg.serving.grpc_port} if cfg.serving.grpc else {})}
    assert not {"--grpc", "--no-grpc"} & set(container["args"]), "gRPC is set in genrec-config, in one place"
    # The probes use the routes that tell the truth (tests/test_serving_hardening.py holds them to it).
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": cfg.serving.http_port}
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/v2/health/live", "port": cfg.serving.http_port}
    # On SIGTERM the server's own grace for requests in flight ends before the kubelet's.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    assert cfg.serving.shutdown_grace_seconds < grace, "the server must finish before the kubelet kills it"
    storage = env_of(container)["STORAGE_URI"]["value"]
    assert re.match(r"(s3|gs|pvc|https?|hf|oci)://.+", storage), storage
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    # Replicas scale through KEDA (or not at all, locally): never on a utilisation target, which the
    # beam controller's narrowing would drive down under load.
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    assert "scaleMetric" not in spec and "scaleTarget" not in spec and "autoScaling" not in spec
    pod_annotations = spec["annotations"]
    assert pod_annotations["prometheus.io/scrape"] == "true"
    assert pod_annotations["prometheus.io/port"] == str(cfg.serving.http_port)
    assert pod_annotations["prometheus.io/path"] == "/metrics"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    omp = int(env_of(container)["OMP_NUM_THREADS"]["value"])
    assert omp <= _cpu(container["resources"]["limits"]["cpu"]), "more torch threads than CPUs"


def _cpu(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gpu_limit(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_gpu_overlay_puts_the_predictor_on_gpu_nodes() -> None:
    docs = render("gpu")
    spec, container = predictor(docs)
    assert _gpu_limit(container) >= 1
    assert container["resources"]["requests"].get("nvidia.com/gpu", container["resources"]["limits"][
        "nvidia.com/gpu"]) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
               and (t["operator"] == "Exists" or "value" in t) for t in spec["tolerations"])
    assert container["image"].endswith("-cuda")
    # Only the predictor needs CUDA: the controller keeps the small CPU image and no GPU.
    _, controller = controller_pod(docs)
    assert not controller["image"].endswith("-cuda") and _gpu_limit(controller) == 0


@pytest.mark.parametrize("overlay", ["base", "local"])
def test_cpu_overlays_ask_for_no_gpu(overlay: str) -> None:
    for where, pod, _ in pod_specs(render(overlay)):
        assert "nodeSelector" not in pod and "tolerations" not in pod, where
        for container in pod["containers"]:
            assert _gpu_limit(container) == 0 and not container["image"].endswith("-cuda"), where


def test_local_overlay_is_small_and_uses_the_local_image() -> None:
    docs = render("local")
    spec, container = predictor(docs)
    assert spec["minReplicas"] == spec["maxReplicas"] == 1
    assert container["image"] == "genrec:cpu" and container["imagePullPolicy"] == "IfNotPresent"
    storage = env_of(container)["STORAGE_URI"]["value"]
    assert storage.startswith("pvc://")
    assert one(docs, "PersistentVolumeClaim", storage.removeprefix("pvc://").split("/")[0])
    for where, pod, _ in pod_specs(docs):
        for c in pod["containers"]:
            assert _cpu(c["resources"]["limits"]["cpu"]) <= 1, f"{where}: CPU limit too big for kind"


def test_ray_cluster_for_the_data_steps() -> None:
    """The gpu overlay's RayCluster: token auth from the Secret the steps read too, a head that runs
    no tasks, CPU workers that fit a bucket task, the Ray version the steps pin, and the shared
    volume mounted where the cluster config says (configs/cluster.yaml)."""
    docs = render("gpu")
    cluster = one(docs, "RayCluster", "genrec-ray")["spec"]
    config = GenrecConfig.from_yaml(REPO / "configs" / "cluster.yaml")
    assert cluster["authOptions"] == {"mode": "token", "secretName": config.ray.secret}
    assert config.ray.secret_token_key == "auth_token"  # the key KubeRay reads
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(rf"^ray==\s*{re.escape(cluster['rayVersion'])}\b", lock, re.M), "rayVersion != the pinned ray"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["client"] == 10001 and ports["gcs-server"] == 6379
    [workers] = cluster["workerGroupSpecs"]
    assert 1 <= workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    worker = workers["template"]["spec"]["containers"][0]
    assert int(workers["rayStartParams"]["num-cpus"]) == _cpu(worker["resources"]["limits"]["cpu"])
    for group in (head, workers):
        pod = group["template"]["spec"]
        [container] = pod["containers"]
        assert not container["image"].endswith("-cuda") and _gpu_limit(container) == 0
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        shared = volumes[mounts[config.ray.shared_dir]]["persistentVolumeClaim"]["claimName"]
        assert shared == config.ray.shared_volume_claim
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert config.data.engine == "ray" and config.ray.shared_dir and config.ray.shared_volume_claim


def test_ray_cluster_network_policy() -> None:
    docs = render("gpu")
    policies = find(docs, "NetworkPolicy")
    head = Peer(NAMESPACE, {"app.kubernetes.io/name": "genrec-ray", "app.kubernetes.io/component": "ray-head"},
                ip="10.1.1.1")
    worker = Peer(NAMESPACE, {"app.kubernetes.io/name": "genrec-ray", "app.kubernetes.io/component": "ray-worker"},
                  ip="10.1.1.2")
    step = Peer("kubeflow", {"genrec.io/ray-client": "true"}, ip="10.5.0.3")
    other_step = Peer("kubeflow", {"workflows.argoproj.io/workflow": "x"}, ip="10.5.0.4")
    prometheus = Peer("monitoring", {"app.kubernetes.io/name": "prometheus"}, ip="10.2.0.5")
    stranger = Peer("default", {"app": "curl"}, ip="10.4.0.7")
    neighbour = Peer(NAMESPACE, {"app.kubernetes.io/name": "something-else"}, ip="10.1.0.99")
    # The cluster's own pods, on any port (GCS, raylets, object managers, workers).
    for port in (6379, 10001, 8265, 12345):
        assert allowed(policies, worker, head, port) and allowed(policies, head, worker, port)
    # The data steps reach the Ray Client port only; nobody else reaches anything but metrics.
    assert allowed(policies, step, head, 10001)
    assert not allowed(policies, step, head, 6379) and not allowed(policies, step, worker, 12345)
    for outsider in (other_step, stranger, neighbour):
        for port in (10001, 6379, 8265):
            assert not allowed(policies, outsider, head, port), (outsider.labels, port)
    assert allowed(policies, prometheus, head, 8080) and not allowed(policies, prometheus, head, 8265)


# ---------------------------------------------------------------------------------------------------
# Config and cross-file consistency


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_generated_config_loads_strictly_and_agrees_with_the_manifests(overlay: str) -> None:
    docs = render(overlay)
    config_map, cfg = genrec_config(docs)
    isvc = one(docs, "InferenceService")
    spec, container = predictor(docs)
    ctl_pod, ctl = controller_pod(docs)

    # Both processes read the generated (hashed) ConfigMap with --config.
    for pod, c in ((spec, container), (ctl_pod, ctl)):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/genrec")
        assert volumes[mount["name"]]["configMap"]["name"] == config_map
        assert c["args"][-2:] == ["--config", "/etc/genrec/config.yaml"]
    assert ctl["args"][0] == "controller"

    # The controller finds the predictors where KServe (RawDeployment) puts them.
    assert cfg.controller.kubernetes_service == f"{isvc['metadata']['name']}-predictor"
    assert cfg.controller.kubernetes_namespace == isvc["metadata"]["namespace"]
    assert cfg.controller.admin_port == cfg.serving.http_port
    assert cfg.controller.state_file.startswith("/tmp/")

    # Its metrics port is the container's and the Service's.
    assert {p["name"]: p["containerPort"] for p in ctl["ports"]} == {"metrics": cfg.controller.metrics_port}
    service = one(docs, "Service", "genrec-controller")
    assert service["spec"]["ports"][0]["port"] == cfg.controller.metrics_port
    assert service["spec"]["selector"].items() <= one(docs, "Deployment", "genrec-controller")["spec"][
        "template"]["metadata"]["labels"].items()

    # The admin token reaches both from the same Secret under the configured variable name.
    for c in (container, ctl):
        ref = env_of(c)[cfg.serving.admin_token_env]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "genrec-admin-token", "key": "token"}

    # Feast: the config's project is the FeatureStore's, and the Redis connection comes from its Secret.
    store = one(docs, "FeatureStore")["spec"]
    assert cfg.features.project == store["feastProject"]
    assert cfg.features.online_store == "redis"
    variable = re.fullmatch(r"\$\{(\w+)\}", cfg.features.redis_connection_string)
    assert variable, "the Redis connection (with its password) must come from the environment"
    redis_ref = env_of(container)[variable.group(1)]["valueFrom"]["secretKeyRef"]
    assert redis_ref["name"] == store["services"]["onlineStore"]["persistence"]["store"]["secretRef"]["name"]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_prometheus_selector_matches_the_scrape_configs(overlay: str) -> None:
    docs = render(overlay)
    _, cfg = genrec_config(docs)
    spec, _ = predictor(docs)
    pod_monitor = one(docs, "PodMonitor", "genrec-predictor")["spec"]
    labels = spec["labels"]
    assert pod_monitor["selector"]["matchLabels"].items() <= labels.items()
    # jobLabel makes the job the value of that pod label: the controller's selector must match it.
    job = labels[pod_monitor["jobLabel"]]
    assert cfg.controller.selector == f'job="{job}"'
    endpoint = pod_monitor["podMetricsEndpoints"][0]
    assert endpoint["port"] == "http1" and endpoint["path"] == "/metrics"
    # rate() over the controller's window needs several samples.
    assert seconds(cfg.controller.window) >= 4 * seconds(endpoint["interval"])
    service_monitor = one(docs, "ServiceMonitor", "genrec-controller")["spec"]
    service = one(docs, "Service", "genrec-controller")
    assert service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_secret_references_are_documented(overlay: str) -> None:
    readme = (MANIFESTS / "README.md").read_text()
    refs = set()
    for _, pod, _ in pod_specs(render(overlay)):
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    store = one(render(overlay), "FeatureStore")["spec"]["services"]["onlineStore"]["persistence"]["store"]
    refs.add((store["secretRef"]["name"], store["secretKeyName"]))
    for cluster in find(render(overlay), "RayCluster"):  # KubeRay reads the token from key auth_token
        refs.add((cluster["spec"]["authOptions"]["secretName"], "auth_token"))
    assert refs
    for name, key in refs:
        pattern = rf"create secret generic {re.escape(name)}\b[^\n]*(\\\n[^\n]*)*--from-literal={re.escape(key)}="
        assert re.search(pattern, readme), f"manifests/README.md does not show how to create {name} key {key}"


# ---------------------------------------------------------------------------------------------------
# RBAC and network policies


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_controller_rbac_is_least_privilege(overlay: str) -> None:
    docs = render(overlay)
    _, cfg = genrec_config(docs)
    # The one cluster-wide grant: the pipeline reads the TrainJob runtime (gpu overlay; see
    # test_the_pipeline_may_run_trainjobs_in_its_namespace_and_nothing_more).
    expected = {"genrec-pipeline-trainingruntime-reader"} if overlay == "gpu" else set()
    assert {d["metadata"]["name"] for d in find(docs, "ClusterRole")} == expected
    assert {d["metadata"]["name"] for d in find(docs, "ClusterRoleBinding")} == expected
    role = one(docs, "Role", "genrec-controller")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["endpoints"],
                              "resourceNames": [cfg.controller.kubernetes_service],
                              "verbs": ["get", "list", "watch"]}]
    binding = one(docs, "RoleBinding", "genrec-controller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "genrec-controller"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "genrec-controller", "namespace": NAMESPACE}]
    ctl_pod, _ = controller_pod(docs)
    assert ctl_pod["serviceAccountName"] == "genrec-controller"
    assert one(docs, "ServiceAccount", "genrec-controller")
    # Nothing else talks to the API server: no token in the other pods.
    spec, _ = predictor(docs)
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount", spec["serviceAccountName"])["automountServiceAccountToken"] is False
    for where, pod, _ in pod_specs(docs):
        if where != "Deployment/genrec-controller":
            assert pod.get("automountServiceAccountToken") is False, f"{where} mounts an API token"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_pipeline_deployer_may_only_update_the_genrec_inference_service(overlay: str) -> None:
    """The deploy step (genrec.deploy.kserve) reads and replaces one InferenceService: nothing else."""
    from genrec.deploy.kserve import GROUP, PLURAL

    docs = render(overlay)
    _, cfg = genrec_config(docs)
    service = one(docs, "InferenceService")
    assert service["metadata"]["name"] == cfg.deploy.inference_service
    assert service["metadata"]["namespace"] == cfg.deploy.namespace
    role = one(docs, "Role", "genrec-pipeline-deployer")
    assert role["rules"] == [{"apiGroups": [GROUP], "resources": [PLURAL],
                              "resourceNames": [cfg.deploy.inference_service], "verbs": ["get", "update"]}]
    binding = one(docs, "RoleBinding", "genrec-pipeline-deployer")
    assert binding["roleRef"]["name"] == "genrec-pipeline-deployer"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


class Peer:
    """A pod somewhere in the cluster, for evaluating NetworkPolicies."""

    def __init__(self, namespace: str, labels: dict[str, str], ip: str = "10.0.0.1",
                 namespace_labels: dict[str, str] | None = None) -> None:
        self.namespace, self.labels, self.ip = namespace, labels, ip
        self.namespace_labels = {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})}


def _peer_matches(rule_peer: dict[str, Any], peer: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(peer.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "namespaceSelector" in rule_peer:
        if not _selects(rule_peer["namespaceSelector"], peer.namespace_labels):
            return False
    elif peer.namespace != policy_namespace:
        return False
    return _selects(rule_peer.get("podSelector"), peer.labels)


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int) -> bool:
    return not rule_ports or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in rule_ports)


def allowed(policies: list[dict[str, Any]], source: Peer, target: Peer, port: int) -> bool:
    """Whether the policies let source open a TCP connection to target:port (both directions' rules)."""

    def direction(pod: Peer, other: Peer, kind: str, rules_key: str, peers_key: str) -> bool:
        selecting = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                     and kind in p["spec"].get("policyTypes", ["Ingress"])
                     and _selects(p["spec"]["podSelector"], pod.labels)]
        if not selecting:
            return True
        return any(_port_matches(rule.get("ports"), port)
                   and (peers_key not in rule
                        or any(_peer_matches(peer, other, p["metadata"]["namespace"]) for peer in rule[peers_key]))
                   for p in selecting for rule in p["spec"].get(rules_key, []))

    return direction(target, source, "Ingress", "ingress", "from") and direction(source, target, "Egress",
                                                                                  "egress", "to")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_network_policies_let_through_only_what_they_should(overlay: str) -> None:
    docs = render(overlay)
    _, cfg = genrec_config(docs)
    policies = find(docs, "NetworkPolicy")
    spec, _ = predictor(docs)
    admin = cfg.controller.admin_port
    prometheus_port = urlparse(cfg.controller.prometheus_url).port
    predictor_pod = Peer(NAMESPACE, spec["labels"], ip="10.1.0.10")
    controller = Peer(NAMESPACE, one(docs, "Deployment", "genrec-controller")["spec"]["template"]["metadata"]["labels"],
                      ip="10.1.0.20")
    prometheus = Peer("monitoring", {"app.kubernetes.io/name": "prometheus"}, ip="10.2.0.5")
    gateway = Peer("istio-system", {"app": "istio-ingressgateway"}, ip="10.3.0.5")
    client = Peer("ads", {"app": "ad-server"})
    neighbour = Peer(NAMESPACE, {"app.kubernetes.io/name": "something-else"}, ip="10.1.0.99")
    stranger = Peer("default", {"app": "curl"}, ip="10.4.0.7")
    dns = Peer("kube-system", {"k8s-app": "kube-dns"}, ip="10.96.0.10")
    apiserver = Peer("default", {}, ip="172.18.0.2")

    # The admin port (shared with inference and /metrics): the controller yes, strangers no.
    assert allowed(policies, controller, predictor_pod, admin)
    assert not allowed(policies, neighbour, predictor_pod, admin)
    assert not allowed(policies, stranger, predictor_pod, admin)
    assert not allowed(policies, stranger, predictor_pod, cfg.serving.grpc_port)
    # gRPC is off in the cluster config, so nobody, the gateway included, reaches its port.
    assert allowed(policies, gateway, predictor_pod, cfg.serving.grpc_port) is cfg.serving.grpc
    # Prometheus scrapes both; the gateway and opted-in client namespaces call inference.
    assert allowed(policies, prometheus, predictor_pod, cfg.serving.http_port)
    assert allowed(policies, prometheus, controller, cfg.controller.metrics_port)
    assert not allowed(policies, stranger, controller, cfg.controller.metrics_port)
    # Clients call through the ingress gateway, never straight at the pods (8080 is also the admin port).
    assert allowed(policies, gateway, predictor_pod, cfg.serving.http_port)
    assert not allowed(policies, client, predictor_pod, cfg.serving.http_port)
    # The controller reaches DNS, Prometheus, the predictors and the API server, and nothing else.
    assert allowed(policies, controller, dns, 53)
    assert prometheus_port is not None and allowed(policies, controller, prometheus, prometheus_port)
    assert allowed(policies, controller, apiserver, 6443) and allowed(policies, controller, apiserver, 443)
    assert not allowed(policies, controller, stranger, 80)
    assert not allowed(policies, controller, prometheus, 9093)
    assert not allowed(policies, controller, Peer(NAMESPACE, {"app.kubernetes.io/name": "genrec-redis"}), 6379)
    if overlay == "local":
        redis = Peer(NAMESPACE, {"app.kubernetes.io/name": "genrec-redis"}, ip="10.1.0.30")
        assert allowed(policies, predictor_pod, redis, 6379)
        assert not allowed(policies, stranger, redis, 6379)


def test_network_policy_evaluator_is_not_vacuous() -> None:
    deny_all = {"metadata": {"namespace": "x"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert not allowed([deny_all], Peer("x", {}), Peer("x", {}), 80)
    assert allowed([], Peer("x", {}), Peer("x", {}), 80)


# ---------------------------------------------------------------------------------------------------
# Alerts and dashboard: metric names

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                   "unless", "offset", "inf", "nan", "atan2", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric (series) names a PromQL expression selects."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", text)
    text = re.sub(r"\$\w+|\$\{[^}]*\}", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d+(?:ms|s|m|h|d|w|y)", name):
            continue
        names.add(name)
    return names


def known_series() -> set[str]:
    names = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("genrec_")}
    assert names, "genrec/contract.py defines no metric names"
    histograms = {metrics.REQUEST_SECONDS, metrics.FEATURE_FETCH_SECONDS, metrics.DECODE_SECONDS,
                  metrics.BATCH_SIZE, metrics.REQUEST_STAGE_SECONDS, metrics.GC_PAUSE_SECONDS}
    return names | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}


def test_metric_name_extraction() -> None:
    expr = ('sum by (le) (rate(genrec_x_bucket{job="a",le="0.1"}[5m])) / on(job) group_left '
            'max(up offset 5m) > 14.4 * 1e-3 and absent(genrec_y{code="ok"}) or vector(0)')
    assert metric_names(expr) == {"genrec_x_bucket", "up", "genrec_y"}
    assert metric_names("genrec:ratio_rate5m > (6 * 0.01)") == {"genrec:ratio_rate5m"}
    assert metric_names("rate(genrec_z_total[$__rate_interval])") == {"genrec_z_total"}


def rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for rule in find(docs, "PrometheusRule") for g in rule["spec"]["groups"]]


def test_alerts_use_only_defined_metrics() -> None:
    groups = rule_groups(render("base"))
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    allowed_names = known_series() | recorded
    used: set[str] = set()
    for group in groups:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            unknown = names - allowed_names
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metric(s) {sorted(unknown)}"
            used |= names
    for name in recorded:
        assert name.startswith("genrec:") and name.count(":") == 2, f"{name}: level:metric:operations naming"
    # The alerts a platform owner needs exist and read the right series.
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    expected = {
        "GenrecLatencySLOFastBurn": metrics.REQUEST_SECONDS, "GenrecLatencySLOSlowBurn": metrics.REQUEST_SECONDS,
        "GenrecErrorSLOFastBurn": metrics.REQUESTS, "GenrecErrorSLOSlowBurn": metrics.REQUESTS,
        "GenrecFeastErrors": metrics.FEAST_ERRORS, "GenrecFeastMissesHigh": metrics.FEAST_MISSES,
        "GenrecFeatureStoreDown": metrics.FEATURE_STORE_UP,
        "GenrecControllerStuckOnLowestRung": metrics.CONTROLLER_RUNG,
        "GenrecControllerPrometheusErrors": metrics.CONTROLLER_PROM_ERRORS,
    }
    recording = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    for alert, metric in expected.items():
        assert alert in alerts, f"no alert {alert}"
        expr = alerts[alert]["expr"]
        resolved = expr + " ".join(recording[n] for n in metric_names(expr) if n in recording)
        assert metric in resolved, f"{alert} does not read {metric}"
        assert alerts[alert]["labels"]["severity"] in ("critical", "warning", "info")
        assert alerts[alert]["annotations"]["summary"]


def test_slo_rules_use_the_configured_slo() -> None:
    docs = render("base")
    _, cfg = genrec_config(docs)
    exprs = [r["expr"] for g in rule_groups(docs) for r in g["rules"]]
    buckets = {le for e in exprs for le in re.findall(r'le="([^"]+)"', e)}
    assert buckets == {repr(cfg.controller.slo_p99_seconds)}, "the SLO bucket must be controller.slo_p99_seconds"
    # A p99 objective leaves 1% of requests as the budget: burn thresholds are multiples of 0.01.
    slow = [e for e in exprs if "genrec:request_slow:" in e and ">" in e]
    assert slow and all(re.search(r"\*\s*0\.01\)", e) for e in slow)


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool")


def _write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(render("base"))}, sort_keys=False))
    return path


def test_promtool_accepts_the_rules(promtool: str, tmp_path: Path) -> None:
    result = subprocess.run([promtool, "check", "rules", str(_write_rules(tmp_path))], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_on_synthetic_series(promtool: str, tmp_path: Path) -> None:
    """promtool's rule unit tests: the burn-rate and controller alerts fire when they should, not otherwise."""
    rules = _write_rules(tmp_path)
    predictor_job, controller_job = 'job="genrec-predictor"', 'job="genrec-controller"'

    def firing(alert: str, value: int = 1, at: str = "70m") -> dict[str, Any]:
        return {"expr": f'count(ALERTS{{alertname="{alert}",alertstate="firing"}}) or vector(0)',
                "eval_time": at, "exp_samples": [{"labels": "{}", "value": value}]}

    slow = [  # 100 requests a minute, half of them slower than 0.1 s; Feast fails on 10%.
        {"series": f'genrec_request_duration_seconds_bucket{{{predictor_job},le="0.1"}}', "values": "0+50x90"},
        {"series": f"genrec_request_duration_seconds_count{{{predictor_job}}}", "values": "0+100x90"},
        {"series": f'genrec_requests_total{{{predictor_job},code="ok"}}', "values": "0+100x90"},
        {"series": f"genrec_feast_errors_total{{{predictor_job}}}", "values": "0+10x90"},
        {"series": f"genrec_feature_store_up{{{predictor_job}}}", "values": "0+0x90"},
        {"series": f"genrec_inflight_requests{{{predictor_job}}}", "values": "3+0x90"},
        {"series": f"genrec_controller_rung{{{controller_job}}}", "values": "0+0x90"},
        {"series": f"genrec_controller_prometheus_errors_total{{{controller_job}}}", "values": "0+0x90"},
    ]
    healthy = [  # every request fast, no errors, the controller on rung 2.
        {"series": f'genrec_request_duration_seconds_bucket{{{predictor_job},le="0.1"}}', "values": "0+100x90"},
        {"series": f"genrec_request_duration_seconds_count{{{predictor_job}}}", "values": "0+100x90"},
        {"series": f'genrec_requests_total{{{predictor_job},code="ok"}}', "values": "0+100x90"},
        {"series": f"genrec_feast_errors_total{{{predictor_job}}}", "values": "0+0x90"},
        {"series": f"genrec_feature_store_up{{{predictor_job}}}", "values": "1+0x90"},
        {"series": f"genrec_inflight_requests{{{predictor_job}}}", "values": "3+0x90"},
        {"series": f"genrec_controller_rung{{{controller_job}}}", "values": "2+0x90"},
        {"series": f"genrec_controller_prometheus_errors_total{{{controller_job}}}", "values": "0+0x90"},
    ]
    tests = [
        {"interval": "1m", "input_series": slow, "promql_expr_test": [
            firing("GenrecLatencySLOFastBurn"),
            firing("GenrecFeastErrors"), firing("GenrecFeatureStoreDown"),
            firing("GenrecControllerStuckOnLowestRung"), firing("GenrecErrorSLOFastBurn", 0),
            firing("GenrecControllerPrometheusErrors", 0), firing("GenrecPredictorAbsent", 0)]},
        {"interval": "1m", "input_series": healthy, "promql_expr_test": [
            {"expr": 'count(ALERTS{alertstate="firing"}) or vector(0)', "eval_time": "70m",
             "exp_samples": [{"labels": "{}", "value": 0}]},
            {"expr": "genrec:request_slow:ratio_rate1h", "eval_time": "70m",
             "exp_samples": [{"labels": "genrec:request_slow:ratio_rate1h", "value": 0}]}]},
    ]
    spec = tmp_path / "rules_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_parses_and_queries_known_metrics() -> None:
    docs = render("base")
    config_map = one(docs, "ConfigMap", "genrec-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (filename, text), = config_map["data"].items()
    assert filename.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = known_series()
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= known, f"{panel['title']!r}: unknown metric(s) {sorted(names - known)}"
            used |= names
    # What the dashboard must show.
    for metric in (f"{metrics.REQUEST_SECONDS}_bucket", metrics.REQUESTS, metrics.INFLIGHT, metrics.BEAM_RUNG,
                   metrics.CONTROLLER_RUNG, metrics.BEAM_WIDTH, metrics.DARE_ACCEPTED_TOKENS,
                   metrics.DARE_DRAFT_TOKENS, metrics.FEAST_MISSES, metrics.FEAST_ERRORS, metrics.FEATURE_STORE_UP,
                   metrics.CONNECTION_REJECTIONS, metrics.HTTP_RESPONSES,
                   f"{metrics.BATCH_SIZE}_bucket"):
        assert metric in used, f"the dashboard shows no {metric}"
    # The source file in the repository is the one shipped.
    assert dashboard == json.loads((MANIFESTS / "base" / "dashboards" / filename).read_text())


def test_manifest_files_are_all_used() -> None:
    """Every YAML/JSON file under manifests/ is referenced by a kustomization (nothing silently dropped)."""
    referenced: set[Path] = set()
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        base = kustomization.parent
        entries = list(spec.get("resources", [])) + list(spec.get("configurations", []))
        entries += [p["path"] for p in spec.get("patches", []) if "path" in p]
        for generator in spec.get("configMapGenerator", []):
            entries += [f.split("=", 1)[-1] for f in generator.get("files", [])]
        for entry in entries:
            referenced.add((base / entry).resolve())
        referenced.add(kustomization.resolve())
    files = {p.resolve() for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml", ".json")}
    unused = sorted(str(p.relative_to(MANIFESTS.resolve())) for p in files - referenced)
    assert not unused, f"files no kustomization uses: {unused}"


def test_training_runtime_for_the_trainjobs() -> None:
    """The gpu overlay's ClusterTrainingRuntime: what the kubeflow SDK needs to use it (the torch
    framework label, a `node` container under the trainer ancestor step), GPU nodes as the pipeline's
    GPU placement says, non-root, requests equal to limits, /dev/shm for NCCL, and the shared volume
    where the cluster config's trainjob section says."""
    docs = render("gpu")
    runtime = one(docs, "ClusterTrainingRuntime", "genrec-torch")
    config = GenrecConfig.from_yaml(REPO / "configs" / "cluster.yaml")
    assert config.train.launcher == "trainjob" and config.trainjob.runtime == "genrec-torch"
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert "torch" in runtime["spec"]["mlPolicy"]
    [job] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = job["template"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "node" and container["image"].endswith("-cuda")
    assert container["command"][0] == "torchrun"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["nodeSelector"] == config.pipeline.gpu_node_selector
    assert pod["tolerations"] == [{"key": t.key, "operator": t.operator, "effect": t.effect}
                                  for t in config.pipeline.gpu_tolerations]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] and _gpu_limit(container) == config.trainjob.gpus_per_node
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts[config.trainjob.shared_dir]]["persistentVolumeClaim"]["claimName"] == \
        config.trainjob.shared_volume_claim
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # The data steps' parts are on the same volume, so the nodes read them in place.
    assert config.ray.shared_dir == config.trainjob.shared_dir
    assert config.ray.shared_volume_claim == config.trainjob.shared_volume_claim


def test_the_pipeline_may_run_trainjobs_in_its_namespace_and_nothing_more() -> None:
    docs = render("gpu")
    role = one(docs, "Role", "genrec-pipeline-trainjobs")
    assert role["metadata"]["namespace"] == NAMESPACE
    grants = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
              for resource in rule["resources"] for verb in rule["verbs"]}
    assert grants == {("trainer.kubeflow.org", "trainjobs", "create"), ("trainer.kubeflow.org", "trainjobs", "get"),
                      ("trainer.kubeflow.org", "trainjobs", "delete"),
                      ("trainer.kubeflow.org", "trainingruntimes", "get"),
                      ("", "pods", "list"), ("", "pods/log", "get")}
    reader = one(docs, "ClusterRole", "genrec-pipeline-trainingruntime-reader")
    assert reader["rules"] == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"],
                                "resourceNames": ["genrec-torch"], "verbs": ["get"]}]
    for kind, name in (("RoleBinding", "genrec-pipeline-trainjobs"),
                       ("ClusterRoleBinding", "genrec-pipeline-trainingruntime-reader")):
        binding = one(docs, kind, name)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner",
                                        "namespace": "kubeflow"}]


def test_the_capacity_table_is_the_measured_one_and_gpu_nodes_turn_it_off() -> None:
    """The base (2-core CPU predictors) gives the controller's feed-forward the per-rung throughput
    bench_serving measured on two cores, rounded down; the GPU overlay, where those figures do not
    hold, clears it on the controller's command line."""
    from genrec.config import load_config

    base = render("base")
    _, cfg = genrec_config(base)
    measured = json.loads((REPO / "benchmarks" / "results" / "serving_load.json").read_text())["figures"]
    table = cfg.controller.rung_capacity_rps
    assert measured["rungs"][str(measured["default_rung"])]["widths"] == cfg.serving.beam_ladder[
        cfg.serving.default_rung], "serving_load.json was measured on another ladder"
    assert len(table) == len(cfg.serving.beam_ladder) == len(measured["rung_capacity_rps"])
    for rung, (configured, found) in enumerate(zip(table, measured["rung_capacity_rps"])):
        assert 0.8 * found <= configured <= found, (rung, configured, found)
    _, container = predictor(base)
    assert env_of(container)["OMP_NUM_THREADS"]["value"] == "1", "the capacities were measured with one thread"
    _, controller = controller_pod(render("gpu"))
    args = controller["args"]
    overrides = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--set"]
    assert "controller.rung_capacity_rps=[]" in overrides
    assert load_config(None, overrides).controller.rung_capacity_rps == []


# ---------------------------------------------------------------------------------------------------
# Replica autoscaling (KEDA)


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_scaledobject_is_the_autoscaling_config(overlay: str) -> None:
    """The ScaledObject says what genrec-config's autoscaling section says (the simulation in
    benchmarks/bench_fleet.py runs that section), targets the Deployment KServe makes for the
    predictor, and triggers on the widest rung's demand, the query genrec.fleet.trigger builds."""
    from genrec.fleet.autoscaler import (
        SCALE_DOWN_REPLICAS_PER_WINDOW,
        SCALE_UP_PERCENT,
        SCALE_UP_PERIOD_SECONDS,
    )
    from genrec.fleet.trigger import trigger_query

    docs = render(overlay)
    _, cfg = genrec_config(docs)
    a = cfg.autoscaling
    isvc = one(docs, "InferenceService", "genrec")
    spec = one(docs, "ScaledObject", "genrec-predictor")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": f"{isvc['metadata']['name']}-predictor"}
    assert spec["scaleTargetRef"]["name"] == cfg.controller.kubernetes_service
    assert spec["minReplicaCount"] == a.min_replicas == isvc["spec"]["predictor"]["minReplicas"]
    # The GPU overlay lowers the ceiling to its GPU budget, on both objects alike.
    assert spec["maxReplicaCount"] == isvc["spec"]["predictor"]["maxReplicas"] <= a.max_replicas
    assert (spec["maxReplicaCount"] == a.max_replicas) == (overlay == "base")
    assert spec["pollingInterval"] == a.polling_interval_seconds
    assert spec["fallback"] == {"failureThreshold": a.fallback_failures,
                                "replicas": min(a.fallback_replicas, spec["maxReplicaCount"])}
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == a.scale_up_stabilisation_seconds and up["selectPolicy"] == "Max"
    assert sorted((p["type"], p["value"], p["periodSeconds"]) for p in up["policies"]) == sorted([
        ("Pods", a.scale_up_replicas_per_minute, SCALE_UP_PERIOD_SECONDS),
        ("Percent", SCALE_UP_PERCENT, SCALE_UP_PERIOD_SECONDS)])
    assert down["stabilizationWindowSeconds"] == a.scale_down_stabilisation_seconds
    assert down["policies"] == [{"type": "Pods", "value": SCALE_DOWN_REPLICAS_PER_WINDOW,
                                 "periodSeconds": a.scale_down_stabilisation_seconds}]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["serverAddress"] == cfg.controller.prometheus_url
    assert trigger["metadata"]["query"] == trigger_query(cfg)
    assert float(trigger["metadata"]["threshold"]) == a.target_utilisation
    assert trigger["metadata"]["ignoreNullValues"] == "false"


def test_local_overlay_has_no_autoscaler() -> None:
    docs = render("local")
    assert not find(docs, "ScaledObject")
    spec, _ = predictor(docs)
    assert spec["minReplicas"] == spec["maxReplicas"]


def test_trigger_query_counts_every_request_over_the_widest_capacity(promtool: str, tmp_path: Path) -> None:
    """promtool evaluates the ScaledObject's query on synthetic series: 10 answered and 1 rejected
    request a second is 11 / 1190 widest-rung replicas; another job's requests do not count."""
    from genrec.fleet.trigger import widest_capacity

    docs = render("base")
    _, cfg = genrec_config(docs)
    query = one(docs, "ScaledObject", "genrec-predictor")["spec"]["triggers"][0]["metadata"]["query"]
    series = [  # a sample every 15 s
        {"series": 'genrec_requests_total{job="genrec-predictor",code="ok"}', "values": "0+150x400"},
        {"series": 'genrec_requests_total{job="genrec-predictor",code="429"}', "values": "0+15x400"},
        {"series": 'genrec_requests_total{job="someone-else",code="ok"}', "values": "0+1500x400"},
    ]
    expected = 11 / widest_capacity(cfg)
    tests = [{"interval": "15s", "input_series": series, "promql_expr_test": [
        {"expr": query, "eval_time": "60m", "exp_samples": [{"labels": "{}", "value": expected}]}]}]
    rules = tmp_path / "empty_rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": []}))
    spec = tmp_path / "trigger_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "15s", "tests": tests},
                                   sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
