"""Starting (or restarting with a new model) the local `genrec serve` ModelServer.

The server runs detached from the pipeline step that starts it, so it keeps serving after the run;
its pid, URL and log live in the registry's server.json, which the next deployment reads to stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

import yaml

from genrec.config import GenrecConfig
from genrec.deploy.bundle import bundle_parts
from genrec.deploy.registry import DeployedModel, LocalRegistry
from genrec.io import write_json, write_text

# How long a stopping server gets between SIGTERM and SIGKILL, and how often readiness is polled.
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class LocalServer:
    pid: int
    url: str
    version: str
    log: str


def _alive(pid: int) -> bool:
    # A server this process started is reaped here: an exited child stays a zombie (and answers
    # signal 0) until its parent waits for it.
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_local_server(registry: LocalRegistry) -> LocalServer | None:
    record_file = registry.root / "server.json"
    if not record_file.exists():
        return None
    server = LocalServer(**json.loads(record_file.read_text()))
    if _alive(server.pid):
        os.killpg(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while _alive(server.pid) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if _alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
    record_file.unlink(missing_ok=True)
    return server


def _ready(url: str, model_name: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models/{model_name}", timeout=2) as response:
            return bool(json.loads(response.read()).get("ready"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_local_server(registry: LocalRegistry, model: DeployedModel, config: GenrecConfig) -> LocalServer:
    """Stops the server of the previous deployment, if any, and starts one on `model` (a registered
    serving bundle: the model and, when the run had one, its feature repo)."""
    model_dir, feature_repo = bundle_parts(model.path)
    stop_local_server(registry)
    config_file = registry.root / "server-config.yaml"
    write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), config_file)
    log = registry.root / f"server-{model.version}.log"
    command = [sys.executable, "-m", "genrec", "serve", "--model-dir", str(model_dir),
               "--config", str(config_file), "--host", config.deploy.local_server_host,
               "--http-port", str(config.serving.http_port)]
    if feature_repo is not None:
        command += ["--feature-repo", str(feature_repo)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    url = f"http://{config.deploy.local_server_host}:{config.serving.http_port}"
    deadline = time.monotonic() + config.deploy.server_ready_timeout_seconds
    while not _ready(url, config.serving.model_name):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the local ModelServer did not become ready at {url} "
                               f"(exit code {process.poll()}); its log ({log}) ends with:\n{tail}")
        time.sleep(POLL_SECONDS)
    server = LocalServer(pid=process.pid, url=url, version=model.version, log=str(log))
    write_json(asdict(server), registry.root / "server.json")
    return server
