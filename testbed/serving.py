"""Helpers to test against a real predictor: a tiny trained model in seconds, and a real
`genrec serve` process on a free loopback port.

    from testbed.serving import cached_tiny_model, start_server

    model_dir = cached_tiny_model()    # a real LazyAR artefact, trained once per machine (~10 s)
    server = start_server(model_dir, env={"GENREC_ADMIN_TOKEN": "secret"})
    try:
        httpx.post(f"{server.url}/v1/models/genrec:predict", json={"instances": [...]})
        httpx.put(f"{server.url}/admin/beam-policy", json={"rung": 0},
                  headers={"Authorization": "Bearer secret"})
    finally:
        server.stop()

`tiny_request(model_dir)` gives a valid v1 body for that model. `server.metrics()` returns the
`/metrics` text. Servers bind 127.0.0.1 only and run without gRPC.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "genrec"
HISTORY_FILE = "history.parquet"


def tiny_data(users: int = 40, items: int = 60, per_user: int = 8, seed: int = 0) -> Any:
    """A contract-shaped interaction log with some structure (users prefer one item group)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    groups = 4
    for u in range(users):
        group = u % groups
        pool = [i for i in range(items) if i % groups == group]
        chosen = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
        for position, item in enumerate(chosen):
            stamp = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=u * 100 + position)
            rows.append({"user_id": f"u{u}", "item_id": f"i{item}", "timestamp": stamp,
                         "value": float(rng.uniform(0.5, 3.0))})
    return pd.DataFrame(rows)


def build_tiny_model(folder: str | Path, *, users: int = 40, items: int = 60, seed: int = 0,
                     summary_dim: int = 0, epochs: int = 2) -> Path:
    """Trains a tiny LazyAR generator (3 SID levels) and saves its model folder at `folder`; also
    writes the interaction log it was trained on as `folder.parent / "history.parquet"`. With
    `summary_dim` > 0 the model reads `summary_dim`-wide summary tokens (random per user, two
    tokens) and `folder.parent / "summaries.npz"` holds them (users, summaries). Returns `folder`."""
    import torch

    from genrec.config import GenrecConfig, SidConfig
    from genrec.data.split import leave_one_out
    from genrec.model.artefact import save_model
    from genrec.sid.codebook import Codebook
    from genrec.train.loop import Trainer, TrainingData

    folder = Path(folder)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    codes = np.unique(np.stack([rng.integers(0, 6, 4 * items), rng.integers(0, 6, 4 * items),
                                rng.integers(0, 4, 4 * items)], 1), axis=0)
    codes = codes[rng.permutation(len(codes))[:items]]
    item_ids = np.array([f"i{i}" for i in range(items)])
    codebook = Codebook(item_ids, codes, [6, 6, 4], SidConfig())
    log = tiny_data(users=users, items=items, seed=seed)
    splits = leave_one_out(log)
    config = GenrecConfig.from_dict({
        "model": {"d_model": 16, "layers": 2, "heads": 2, "recent_items": 6, "dropout": 0.0,
                  "use_summary": summary_dim > 0},
        "train": {"epochs": epochs, "batch_size": 16, "checkpoint_every": 1000, "valid_users": 5,
                  "beam_widths": [4], "top_k": 10, "threads": 1},
    })
    provider = None
    if summary_dim:
        from genrec.train.summaries import SnapshotSummaries

        user_ids = np.array(sorted(log["user_id"].unique()))
        summaries = rng.normal(size=(len(user_ids), 2, summary_dim)).astype(np.float32)
        provider = SnapshotSummaries(user_ids, np.full(len(user_ids), np.datetime64("2023-01-01T00:00:00")),
                                     summaries)
        np.savez(folder.parent / "summaries.npz", users=user_ids, summaries=summaries)
    data = TrainingData.from_splits(splits, codebook.item_ids, codebook.codes, codebook.level_sizes, config,
                                    provider)
    result = Trainer(config, data, folder.parent / f"{folder.name}-work", log=lambda _: None).fit()
    save_model(folder, result.decoder, codebook.item_ids)
    log.to_parquet(folder.parent / HISTORY_FILE)
    return folder


def cached_tiny_model(summary_dim: int = 0) -> Path:
    """`build_tiny_model` once per machine and parameters: kept under the temp folder (keyed by this
    file's content, so editing the recipe rebuilds) and reused by later test runs and processes."""
    import hashlib
    import shutil
    import tempfile

    key = hashlib.sha256(Path(__file__).read_bytes() + str(summary_dim).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / "genrec-test-models" / f"tiny-{summary_dim}-{key}"
    if not (root / "model").is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="building-", dir=root.parent))
        build_tiny_model(scratch / "model", summary_dim=summary_dim)
        try:
            scratch.rename(root)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(scratch, ignore_errors=True)
    return root / "model"


def build_tiny_feature_repo(folder: str | Path, model_dir: str | Path, *, redis_port: int | None = None,
                            materialize: bool | None = None) -> Path:
    """A Feast repo holding the summaries `build_tiny_model(summary_dim=...)` wrote, materialised into
    the sqlite online store. With `redis_port` the repo's online store is Redis at that loopback
    port instead, and nothing is materialised unless `materialize` (pass a closed port to get a store
    that is down)."""
    import pandas as pd

    from genrec.config import GenrecConfig
    from genrec.features.repo import FeatureRepo
    from genrec.vista.snapshot import encode_summary

    config = GenrecConfig().features
    if redis_port is not None:
        config.online_store = "redis"
        config.redis_connection_string = f"127.0.0.1:{redis_port}"
    repo = FeatureRepo.create(folder, config)
    stored = np.load(Path(model_dir).parent / "summaries.npz")
    encoded = [encode_summary(s) for s in stored["summaries"]]
    repo.write_user_summaries(pd.DataFrame({
        "user_id": stored["users"].astype(str),
        "event_timestamp": pd.Timestamp("2024-06-01", tz="UTC"),
        "summary": [e[0] for e in encoded], "summary_shape": [e[1] for e in encoded],
        "n_items": 5}))
    if materialize if materialize is not None else redis_port is None:
        repo.apply()
        repo.materialize()
    return repo.path


def corrupt_feature_store(repo: str | Path) -> None:
    """Overwrites a repo's sqlite registry and online store with garbage: a store every read fails on."""
    for path in Path(repo).rglob("*.db"):
        path.write_bytes(b"corrupt" * 1000)


def tiny_request(model_dir: str | Path, user: str = "u1", k: int = 5, items: Sequence[str] = ("i1", "i5"),
                 beam_policy: Sequence[int] | None = None) -> dict[str, Any]:
    """A valid v1 body for a model built by `build_tiny_model`."""
    instance: dict[str, Any] = {"user_id": user, "k": k}
    if items:
        instance["recent_items"] = list(items)
    if beam_policy is not None:
        instance["beam_policy"] = list(beam_policy)
    return {"instances": [instance]}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a block: the tiny models here are overhead-bound, and on a shared
    2-core machine a second torch thread waiting on a busy core makes them many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerHandle:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    predict_url: str = field(init=False)
    infer_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.predict_url = f"{self.url}/v1/models/{MODEL_NAME}:predict"
        self.infer_url = f"{self.url}/v2/models/{MODEL_NAME}/infer"

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stops the server (SIGTERM, then SIGKILL); returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def start_server(model_dir: str | Path, *, feature_repo: str | Path | None = None,
                 config: str | Path | None = None, overrides: Sequence[str] = (),
                 env: dict[str, str] | None = None, extra_args: Sequence[str] = (),
                 port: int | None = None, timeout: float = 90.0, log_path: str | Path | None = None
                 ) -> ServerHandle:
    """Starts `genrec serve` on 127.0.0.1 (a free port unless given) and waits until the model
    answers ready; raises RuntimeError with the server's log if it does not. `overrides` are
    `--set section.key=value` strings; `env` is added to this process's environment."""
    port = port or free_port()
    args = [sys.executable, "-m", "genrec.cli", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
            "--http-port", str(port), "--no-grpc"]
    if feature_repo is not None:
        args += ["--feature-repo", str(feature_repo)]
    if config is not None:
        args += ["--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    args += list(extra_args)
    log_file = Path(log_path) if log_path else Path(model_dir).parent / f"server-{port}.log"
    handle = open(log_file, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    process = subprocess.Popen(args, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    server = ServerHandle(f"http://127.0.0.1:{port}", process, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"genrec serve exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/v1/models/{MODEL_NAME}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"genrec serve did not become ready in {timeout:.0f}s:\n{server.log()[-4000:]}")


def predict(server: ServerHandle, body: Any, timeout: float = 30.0) -> httpx.Response:
    """POSTs a v1 body (a dict, or raw bytes sent as-is) with Content-Type: application/json."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.predict_url, content=content, headers={"Content-Type": "application/json"},
                      timeout=timeout)


def damaged_model_copies(model_dir: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of a model folder under `root`: case -> (the copy, the file its start-up error
    must name). Zero-byte, truncated and garbage weights, missing and foreign items, a truncated and
    a missing manifest."""
    import shutil

    cases: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        target = root / name / "model"
        shutil.copytree(model_dir, target)
        return target

    folder = copy("empty-weights")
    (folder / "model.pt").write_bytes(b"")
    cases["zero-byte model.pt"] = (folder, "model.pt")
    folder = copy("truncated-weights")
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    cases["truncated model.pt"] = (folder, "model.pt")
    folder = copy("garbage-weights")
    (folder / "model.pt").write_bytes(b"not a state dict" * 100)
    cases["garbage model.pt"] = (folder, "model.pt")
    folder = copy("no-items")
    (folder / "items.json").unlink()
    cases["missing items.json"] = (folder, "items.json")
    folder = copy("short-items")
    (folder / "items.json").write_text(json.dumps(["i1", "i2"]))
    cases["items.json of another model"] = (folder, "items.json")
    folder = copy("broken-manifest")
    (folder / "model.json").write_text('{"format": 1, "decoder": ')
    cases["truncated model.json"] = (folder, "model.json")
    folder = copy("no-manifest")
    (folder / "model.json").unlink()
    cases["missing model.json"] = (folder, "model.json")
    return cases
