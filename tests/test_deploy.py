"""The gate, the local model registry, the InferenceService update and `pipeline submit`."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from genrec.cli import app
from genrec.config import GateConfig, GenrecConfig
from genrec.deploy.gate import GateError, gate_decision
from genrec.deploy.kserve import DeployError, deployed_metrics, storage_uri, with_new_model
from genrec.deploy.registry import LocalRegistry
from pipelines.genrec_pipeline import SubmitError, submit_pipeline

GATE = GateConfig(recall_tolerance=0.002, value_tolerance=0.005)


def figures(recall: float, value: float) -> dict[str, float]:
    return {"test_recall@10": recall, "test_value@10": value, "test_ndcg@10": 0.01}


def test_gate_promotes_the_first_model_and_equal_or_better_ones() -> None:
    assert gate_decision(figures(0.05, 0.1), None, GATE).promote
    assert gate_decision(figures(0.05, 0.1), figures(0.05, 0.1), GATE).promote
    # Within the tolerance below the deployed model still passes; just past it does not.
    assert gate_decision(figures(0.0481, 0.0951), figures(0.05, 0.1), GATE).promote
    recall_worse = gate_decision(figures(0.0479, 0.2), figures(0.05, 0.1), GATE)
    assert not recall_worse.promote and "test_recall@10 0.0479 < deployed 0.0500" in recall_worse.summary()
    value_worse = gate_decision(figures(0.06, 0.0949), figures(0.05, 0.1), GATE)
    assert not value_worse.promote and "test_value@10" in value_worse.summary()


def test_gate_names_a_missing_or_broken_metric() -> None:
    with pytest.raises(GateError, match="candidate model has no metric 'test_value@10'.*gate.value_metric"):
        gate_decision({"test_recall@10": 0.1}, None, GATE)
    with pytest.raises(GateError, match="deployed model's metric 'test_recall@10' is nan"):
        gate_decision(figures(0.1, 0.1), figures(float("nan"), 0.1), GATE)


def test_gate_can_require_beating_a_baseline_whatever_is_deployed() -> None:
    gate = GateConfig(recall_tolerance=0.002, value_tolerance=0.005, must_beat="sasrec")
    candidate = {**figures(0.06, 0.1), "baseline_sasrec_test_recall@10": 0.07,
                 "baseline_popularity_test_recall@10": 0.01}
    first = gate_decision(candidate, None, gate)
    assert not first.promote and "test_recall@10 0.0600 <= sasrec baseline 0.0700" in first.summary()
    assert not gate_decision(candidate, figures(0.05, 0.1), gate).promote  # better than deployed, not enough
    assert gate_decision({**candidate, "baseline_sasrec_test_recall@10": 0.059}, None, gate).promote
    assert gate_decision(candidate, None, GateConfig(must_beat="popularity")).promote
    assert not gate_decision({**candidate, "baseline_sasrec_test_recall@10": 0.06}, None, gate).promote  # a tie
    with pytest.raises(GateError, match="gate.must_beat=sasrec but the evaluation has no "
                                        "'baseline_sasrec_test_recall@10'"):
        gate_decision(figures(0.06, 0.1), None, gate)
    with pytest.raises(Exception, match="gate.must_beat"):
        GenrecConfig.from_dict({"gate": {"must_beat": "sasrek"}})


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_registry_versions_are_written_once_and_never_overwritten(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"first")
    registry = LocalRegistry(tmp_path / "registry")
    assert registry.current() is None
    first = registry.register(model, figures(0.05, 0.1))
    kept = tree_hash(Path(first.path))
    (model / "weights.bin").write_bytes(b"second")
    second = registry.register(model, figures(0.06, 0.1))
    assert (first.version, second.version) == ("v0001", "v0002")
    assert tree_hash(Path(first.path)) == kept, "a promoted version changed after it was written"
    assert registry.current() == second and registry.current().metrics["test_recall@10"] == 0.06
    history = (registry.root / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in history] == ["v0001", "v0002"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        registry.register(tmp_path / "missing", {})
    registry.deployed_file.write_text("not json")
    with pytest.raises(ValueError, match="not a genrec deployment record"):
        registry.current()


def test_storage_uri_for_kserve() -> None:
    assert storage_uri("minio://mlpipeline/v2/artifacts/x/model", "m-1") == "s3://mlpipeline/v2/artifacts/x/model"
    assert storage_uri("gs://bucket/model", "m-1") == "gs://bucket/model"
    assert storage_uri("/local/model", "m-1", "s3://genrec-models/genrec/") == "s3://genrec-models/genrec/m-1"
    with pytest.raises(DeployError, match="deploy.storage_uri_prefix"):
        storage_uri("/local/model", "m-1")


def test_the_updated_inference_service_still_matches_the_kserve_crd() -> None:
    from tests.test_manifests import crd_errors, one, render

    for overlay in ("gpu", "local"):
        service = one(render(overlay), "InferenceService")
        before = json.dumps(service, sort_keys=True)
        updated = with_new_model(service, "s3://genrec-models/genrec/m-abc", "m-abc", figures(0.07, 0.2),
                                 canary_traffic_percent=10)
        assert json.dumps(service, sort_keys=True) == before, "with_new_model must not modify its input"
        assert crd_errors(updated) == []
        container = next(c for c in updated["spec"]["predictor"]["containers"] if c["name"] == "kserve-container")
        env = {e["name"]: e for e in container["env"]}
        assert env["STORAGE_URI"] == {"name": "STORAGE_URI", "value": "s3://genrec-models/genrec/m-abc"}
        assert updated["spec"]["predictor"]["canaryTrafficPercent"] == 10
        assert deployed_metrics(updated) == figures(0.07, 0.2)
        assert deployed_metrics(service) is None
        # Only the model moved: everything else (GPU resources, probes, security) is as applied.
        for key in ("resources", "securityContext", "readinessProbe", "image", "args"):
            assert container.get(key) == next(c for c in service["spec"]["predictor"]["containers"]
                                              if c["name"] == "kserve-container").get(key)
    with pytest.raises(DeployError, match="no container named kserve-container"):
        with_new_model({"metadata": {"name": "x"}, "spec": {"predictor": {"containers": []}}}, "s3://a", "v", {})


class FakeKubeflowPipelines(BaseHTTPRequestHandler):
    """The few routes of the Kubeflow Pipelines v2beta1 REST API that a submission uses. It records
    what it was sent, so the test can check the compiled pipeline and the config arrived."""

    received: list[tuple[str, str, Any]] = []

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.received.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.received.append(("POST", self.path, body))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({"run_id": "run-42", "display_name": body.get("display_name"),
                         "experiment_id": body.get("experiment_id")})
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kfp_endpoint() -> Any:
    FakeKubeflowPipelines.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKubeflowPipelines)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_submit_sends_the_compiled_pipeline_and_config_and_prints_the_run_url(kfp_endpoint: str) -> None:
    cfg = GenrecConfig().with_overrides(["pipeline.experiment=ads-nightly", "train.epochs=7"])
    run = submit_pipeline(cfg, kfp_endpoint, run_name="nightly")
    assert run.run_id == "run-42" and run.url == f"{kfp_endpoint}/#/runs/details/run-42"
    posted = {path.split("?")[0]: body for method, path, body in FakeKubeflowPipelines.received if method == "POST"}
    assert posted["/apis/v2beta1/experiments"]["display_name"] == "ads-nightly"
    created = posted["/apis/v2beta1/runs"]
    assert created["display_name"] == "nightly" and created["experiment_id"] == "exp-1"
    # With a platform spec (GPU placement) kfp nests the two; the default config asks for no GPU.
    spec = created["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)
    assert "exec-train-generator" in spec["deploymentSpec"]["executors"]
    sent = created["runtime_config"]["parameters"]["config"]
    assert GenrecConfig.from_dict(sent).train.epochs == 7

    result = CliRunner().invoke(app, ["pipeline", "submit", "--host", kfp_endpoint, "--run-name", "cli"])
    assert result.exit_code == 0, result.output
    assert f"{kfp_endpoint}/#/runs/details/run-42" in result.output.replace("\n", "")


def test_submit_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SubmitError, match="must be the http"):
        submit_pipeline(GenrecConfig(), "kubeflow.example.com")
    runner = CliRunner()
    result = runner.invoke(app, ["pipeline", "submit"])
    assert result.exit_code != 0 and "--host" in result.output
    # A closed port: a clear one-line error, not a traceback.
    result = runner.invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:9", "--package",
                                 str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "submitting to http://127.0.0.1:9 failed" in result.output


@pytest.mark.integration
def test_local_deploy_starts_then_restarts_the_model_server_on_the_new_version(tmp_path: Path) -> None:
    import httpx

    from genrec.deploy.bundle import write_serving_bundle
    from genrec.deploy.local_server import start_local_server, stop_local_server
    from testbed.serving import cached_tiny_model, free_port, tiny_request

    model_dir = cached_tiny_model()
    bundle = write_serving_bundle(tmp_path / "bundle", model_dir)
    cfg = GenrecConfig()
    cfg.serving.http_port, cfg.serving.grpc_port = free_port(), free_port()
    cfg.deploy.server_ready_timeout_seconds = 90
    registry = LocalRegistry(tmp_path / "registry")
    first = start_local_server(registry, registry.register(bundle, figures(0.1, 0.1)), cfg)
    try:
        assert first.url == f"http://127.0.0.1:{cfg.serving.http_port}" and first.version == "v0001"
        reply = httpx.post(f"{first.url}/v1/models/genrec:predict", json=tiny_request(model_dir), timeout=30)
        assert reply.status_code == 200, reply.text
        second = start_local_server(registry, registry.register(bundle, figures(0.1, 0.1)), cfg)
        assert second.version == "v0002" and second.pid != first.pid
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(first.pid, 0)
        assert json.loads((registry.root / "server.json").read_text())["version"] == "v0002"
        assert httpx.post(f"{second.url}/v1/models/genrec:predict", json=tiny_request(model_dir),
                          timeout=30).status_code == 200
    finally:
        stopped = stop_local_server(registry)
    assert stopped is not None and not (registry.root / "server.json").exists()
