"""A Kubernetes API on loopback for the TrainJob path, with a TrainJob's nodes run as local processes.

There is no cluster here, so this server answers the REST calls that the kubeflow SDK's Kubernetes
backend makes for a TrainJob, in the API's own JSON:

    GET    /api/v1/namespaces/{ns}/configmaps/{name}                       (the Trainer's version)
    GET    /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainingruntimes/{name}
    GET    /apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/{name}
    POST   /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs
    GET    /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
    DELETE /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=jobset.sigs.k8s.io/jobset-name=...
    GET    /api/v1/namespaces/{ns}/pods/{pod}/log?container=node[&follow=true]

What it checks, as a cluster would:
- the bearer token of the kube-config it writes (401 otherwise);
- RBAC: each request's verb, resource and namespace against the Roles and ClusterRoles bound to
  the subject it is given (403 otherwise), read from rendered manifests, and it records every
  permission used, so a test can also show that no granted rule is unused;
- a created TrainJob against a validator (the CRD's schema in the tests).

What the Trainer controller would do, it does in a small way: a created TrainJob gets one process
per node, running the job's command with the variables the runtime's torch policy sets (PET_NNODES,
PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT), so `torchrun` really meets across the nodes on
loopback. A pod's phase follows its process, node 0's output is its pod log, and when the nodes
have exited the TrainJob gets a Complete or Failed condition, with a reason and message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from testbed.http_json import send_json
from testbed.redis import free_port

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Permission:
    """One (verb, API group, resource, namespace) a request needs; namespace "" = cluster scope."""

    verb: str
    group: str
    resource: str
    namespace: str


@dataclass
class Rbac:
    """The rules of the Roles and ClusterRoles bound to one ServiceAccount, from manifests."""

    # (rule, the namespace it applies in or "" for the cluster, the role's name)
    rules: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)

    @classmethod
    def for_subject(cls, documents: list[dict[str, Any]], account: str, account_namespace: str) -> Rbac:
        roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
                 for d in documents if d.get("kind") in ("Role", "ClusterRole")}
        rbac = cls()
        for binding in documents:
            if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                       and s.get("namespace") == account_namespace for s in binding.get("subjects", [])):
                continue
            namespace = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
            ref = binding["roleRef"]
            role_namespace = namespace if ref["kind"] == "Role" else ""
            role = roles.get((ref["kind"], role_namespace, ref["name"]))
            if role is None:
                continue
            rbac.rules += [(rule, namespace, ref["name"]) for rule in role.get("rules", [])]
        return rbac

    def allows(self, need: Permission, name: str) -> bool:
        return any(self._matches(rule, scope, need, name) for rule, scope, _ in self.rules)

    @staticmethod
    def _matches(rule: dict[str, Any], scope: str, need: Permission, name: str) -> bool:
        if scope and scope != need.namespace:
            return False
        return (need.group in rule.get("apiGroups", []) and need.resource in rule.get("resources", [])
                and need.verb in rule.get("verbs", [])
                and (not rule.get("resourceNames") or name in rule["resourceNames"]))


@dataclass
class Node:
    index: int
    process: subprocess.Popen[bytes]
    log: Path
    pod: str


@dataclass
class Job:
    body: dict[str, Any]
    nodes: list[Node] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)


class KubeApi:
    """The server. `runtimes`: ClusterTrainingRuntime documents by name. `rbac`: the subject's
    rules (None: everything allowed). `validate`: raises ValueError on a TrainJob it rejects.
    `python`: the interpreter whose bin folder provides `torchrun` for the nodes."""

    def __init__(self, folder: Path, runtimes: dict[str, dict[str, Any]], rbac: Rbac | None = None,
                 validate: Callable[[dict[str, Any]], None] | None = None, namespace: str = "genrec",
                 env: dict[str, str] | None = None) -> None:
        self.folder, self.runtimes, self.rbac, self.validate = folder, runtimes, rbac, validate
        folder.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.env = env or {}
        self.token = uuid.uuid4().hex
        self.jobs: dict[str, Job] = {}
        self.used: set[Permission] = set()
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> KubeApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            self._kill(job)
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self) -> Path:
        """A kube-config naming this server, its token and the namespace."""
        path = self.folder / "kubeconfig.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "loopback",
            "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
            "users": [{"name": "runner", "user": {"token": self.token}}],
            "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "runner",
                                                          "namespace": self.namespace}}],
        }))
        return path

    # -- what the controller does ------------------------------------------------------------

    def _start_nodes(self, name: str, job: Job) -> None:
        spec = job.body["spec"]
        runtime = self.runtimes[spec["runtimeRef"]["name"]]
        trainer = spec.get("trainer") or {}
        nodes = int(trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes", 1))
        container = _runtime_container(runtime)
        command = list(trainer.get("command") or container.get("command") or [])
        args = list(trainer.get("args") or container.get("args") or [])
        if command and command[0] == "torchrun":
            command[0] = str(Path(sys.executable).parent / "torchrun")
        env = {**os.environ, **self.env}
        env.update({e["name"]: str(e.get("value", "")) for e in trainer.get("env") or []})
        port = free_port()
        folder = self.folder / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for index in range(nodes):
            node_env = {**env, "PET_NNODES": str(nodes), "PET_NODE_RANK": str(index),
                        "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
                        "PET_NPROC_PER_NODE": str(runtime["spec"]["mlPolicy"].get("torch", {}).get(
                            "numProcPerNode", "1"))}
            log = folder / f"node-{index}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT,
                                           env=node_env, start_new_session=True)
            job.nodes.append(Node(index, process, log, f"{name}-node-0-{index}-{uuid.uuid4().hex[:5]}"))
        threading.Thread(target=self._finish_when_done, args=(name, job), daemon=True).start()

    def _finish_when_done(self, name: str, job: Job) -> None:
        codes = [node.process.wait() for node in job.nodes]
        failed = [node.index for node, code in zip(job.nodes, codes, strict=True) if code != 0]
        with self.lock:
            if self.jobs.get(name) is not job:
                return
            if failed:
                job.conditions.append({
                    "type": "Failed", "status": "True", "reason": "TrainingFailed",
                    "message": f"node(s) {failed} exited with {[codes[i] for i in failed]}",
                    "lastTransitionTime": _now()})
            else:
                job.conditions.append({"type": "Complete", "status": "True", "reason": "JobSetCompleted",
                                       "message": "jobset completed", "lastTransitionTime": _now()})

    def _kill(self, job: Job) -> None:
        for node in job.nodes:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()

    # -- the resources as the API shows them ------------------------------------------------

    def _trainjob(self, name: str, job: Job) -> dict[str, Any]:
        body = json.loads(json.dumps(job.body))
        body["status"] = {"conditions": list(job.conditions)}
        return body

    def _pods(self, name: str) -> list[dict[str, Any]]:
        job = self.jobs.get(name)
        if job is None:
            return []
        pods = []
        for node in job.nodes:
            code = node.process.poll()
            phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
            pods.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": node.pod, "namespace": self.namespace, "creationTimestamp": _now(),
                             "labels": {JOBSET_NAME_LABEL: name,
                                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                        "batch.kubernetes.io/job-completion-index": str(node.index)}},
                "spec": {"containers": [{"name": "node", "image": job.body["spec"].get("trainer", {}).get(
                    "image", "genrec")}]},
                "status": {"phase": phase},
            })
        return pods

    def _pod_node(self, pod: str) -> Node | None:
        for job in self.jobs.values():
            for node in job.nodes:
                if node.pod == pod:
                    return node
        return None

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._serve(self, "GET")

            def do_POST(self) -> None:
                api._serve(self, "POST")

            def do_DELETE(self) -> None:
                api._serve(self, "DELETE")

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(request.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.requests.append((method, url.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return send_json(request, 401, _status(401, "Unauthorized", "no valid bearer token"))
        route = self._route(method, parts, query)
        if route is None:
            return send_json(request, 404, _status(404, "NotFound",
                                                   f"{method} {url.path} is not served here"))
        need, name, action = route
        if self.rbac is not None and not self.rbac.allows(need, name):
            return send_json(request, 403, _status(403, "Forbidden",
                                                   f"{need} on {name or '*'} is not granted"))
        with self.lock:
            self.used.add(need)
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return send_json(request, 413, _status(413, "RequestEntityTooLarge", "body too large"))
        body = json.loads(request.rfile.read(length)) if length else None
        action(request, body)

    def _route(self, method: str, parts: list[str], query: dict[str, str]) -> tuple[
            Permission, str, Callable[[BaseHTTPRequestHandler, Any], None]] | None:
        verb = {"GET": "get", "POST": "create", "DELETE": "delete"}[method]
        if parts[:2] == ["api", "v1"] and len(parts) >= 5 and parts[2] == "namespaces":
            namespace, kind = parts[3], parts[4]
            if kind == "configmaps" and len(parts) == 6 and method == "GET":
                return Permission("get", "", "configmaps", namespace), parts[5], lambda r, _: send_json(
                    r, 404, _status(404, "NotFound", f'configmaps "{parts[5]}" not found'))
            if kind == "pods" and len(parts) == 5 and method == "GET":
                return Permission("list", "", "pods", namespace), "", lambda r, _: self._list_pods(r, query)
            if kind == "pods" and len(parts) == 7 and parts[6] == "log" and method == "GET":
                return Permission("get", "", "pods/log", namespace), parts[5], lambda r, _: self._pod_log(
                    r, parts[5], query.get("follow", "").lower() in ("true", "1"))
            return None
        if parts[:3] != ["apis", GROUP, VERSION]:
            return None
        rest = parts[3:]
        if rest[:1] == ["clustertrainingruntimes"] and len(rest) == 2 and method == "GET":
            need = Permission("get", GROUP, "clustertrainingruntimes", "")
            return need, rest[1], lambda r, _: self._runtime(r, rest[1])
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, kind = rest[1], rest[2]
            if kind == "trainingruntimes" and len(rest) == 4 and method == "GET":
                need = Permission("get", GROUP, "trainingruntimes", namespace)
                return need, rest[3], lambda r, _: send_json(
                    r, 404, _status(404, "NotFound", f'trainingruntimes "{rest[3]}" not found'))
            if kind == "trainjobs" and len(rest) == 3 and method == "POST":
                return Permission("create", GROUP, "trainjobs", namespace), "", lambda r, body: self._create(
                    r, namespace, body)
            if kind == "trainjobs" and len(rest) == 4 and method in ("GET", "DELETE"):
                action = self._get_job if method == "GET" else self._delete_job
                need = Permission(verb, GROUP, "trainjobs", namespace)
                return need, rest[3], lambda r, _: action(r, rest[3])
        return None

    def _runtime(self, request: BaseHTTPRequestHandler, name: str) -> None:
        runtime = self.runtimes.get(name)
        if runtime is None:
            return send_json(request, 404, _status(404, "NotFound",
                                               f'clustertrainingruntimes "{name}" not found'))
        send_json(request, 200, runtime)

    def _create(self, request: BaseHTTPRequestHandler, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if self.validate is not None:
            try:
                self.validate(body)
            except ValueError as error:
                return send_json(request, 422, _status(422, "Invalid", str(error)))
        if body["spec"]["runtimeRef"]["name"] not in self.runtimes:
            return send_json(request, 422, _status(422, "Invalid", "no such runtime"))
        with self.lock:
            if name in self.jobs:
                return send_json(request, 409, _status(409, "AlreadyExists",
                                                   f'trainjobs "{name}" already exists'))
            body["metadata"].update({"namespace": namespace, "creationTimestamp": _now(),
                                     "uid": str(uuid.uuid4())})
            job = self.jobs[name] = Job(body)
        self._start_nodes(name, job)
        send_json(request, 201, body)

    def _get_job(self, request: BaseHTTPRequestHandler, name: str) -> None:
        with self.lock:
            job = self.jobs.get(name)
            if job is None:
                return send_json(request, 404, _status(404, "NotFound", f'trainjobs "{name}" not found'))
            send_json(request, 200, self._trainjob(name, job))

    def _delete_job(self, request: BaseHTTPRequestHandler, name: str) -> None:
        with self.lock:
            job = self.jobs.pop(name, None)
        if job is None:
            return send_json(request, 404, _status(404, "NotFound", f'trainjobs "{name}" not found'))
        self._kill(job)
        send_json(request, 200, _status(200, "Success", "deleted"))

    def _list_pods(self, request: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        selector = query.get("labelSelector", "")
        name = next((term.split("=", 1)[1] for term in selector.split(",")
                     if term.startswith(f"{JOBSET_NAME_LABEL}=")), "")
        with self.lock:
            pods = self._pods(name)
        send_json(request, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})

    def _pod_log(self, request: BaseHTTPRequestHandler, pod: str, follow: bool) -> None:
        node = self._pod_node(pod)
        if node is None:
            return send_json(request, 404, _status(404, "NotFound", f'pods "{pod}" not found'))
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()
        for chunk in _tail(node, follow):
            request.wfile.write(chunk)
            request.wfile.flush()


def _tail(node: Node, follow: bool) -> Iterator[bytes]:
    """The node's output so far, and with `follow` what it writes until it exits."""
    with node.log.open("rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or node.process.poll() is not None:
                rest = log.read()
                if rest:
                    yield rest
                return
            time.sleep(0.05)


def _runtime_container(runtime: dict[str, Any]) -> dict[str, Any]:
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        for container in job["template"]["spec"]["template"]["spec"]["containers"]:
            if container["name"] == "node":
                return dict(container)
    raise ValueError("the runtime has no container named node")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure" if code >= 400 else "Success", "message": message, "reason": reason,
            "code": code}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def running_kube_api(folder: Path, **kwargs: Any) -> Iterator[KubeApi]:
    api = KubeApi(folder, **kwargs).start()
    try:
        yield api
    finally:
        api.stop()
