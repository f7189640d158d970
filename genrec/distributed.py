"""Ray for the data steps: an embedded local Ray, or a cluster's; and bucket tasks on Ray Data.

    with RaySession.open(config.ray) as session:
        partials = session.map(count_bucket, specs, "split", progress)

`RaySession.open` connects to `ray.address` (or the address in the environment variable
`ray.address_env`, which a Kubernetes Secret fills), else starts an embedded Ray in this process
tree with `ray.num_cpus` CPUs and an object store of `ray.object_store_mb`, token authentication on
(Ray listens on every interface), no dashboard, no usage reporting. An address where nothing answers
fails within `ray.connect_timeout_seconds`, naming it. Leaving the block shuts down what it started
(an embedded Ray's processes included) and leaves a Ray that was already running alone.

`session.map(fn, specs)` runs `fn(spec)` once per spec as Ray Data tasks, at most
`ray.max_concurrency` at once, and returns the results in spec order. A spec and a result are small
(paths, counts, a few example rows): the data itself moves as parquet between the tasks and the
artefacts, never through the driver. An error raised by `fn` is raised again in the driver as the
same exception, so a bad row at scale reads the same as in memory.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from genrec.config import RayConfig
from genrec.progress import LineProgress

S = TypeVar("S")
R = TypeVar("R")
Progress = Callable[[int, int], None]

NAMESPACE = "genrec"
MIB = 1024 * 1024
# Ray's own environment switches for an embedded run: no usage report leaves the machine, and
# no progress bars of Ray Data's (the steps print their own progress lines).
QUIET_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1",
                     "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


AUTH_MODE, AUTH_TOKEN = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"


class RayUnavailable(RuntimeError):
    """Ray could not be started or reached; the message says which address and what to check."""


@dataclass
class RaySession:
    config: RayConfig
    # The cluster's address, or "" for the embedded Ray.
    address: str
    # Whether this session started Ray (and so stops it).
    owns_ray: bool

    @property
    def embedded(self) -> bool:
        return not self.address

    @classmethod
    @contextmanager
    def open(cls, config: RayConfig) -> Iterator[RaySession]:
        address = cluster_address(config)
        if not address:
            require_token_authentication()
        elif os.environ.get(AUTH_TOKEN) and AUTH_MODE not in os.environ and "ray" not in sys.modules:
            # A cluster's token from its Secret (KubeRay's authOptions): Ray needs the mode with it.
            os.environ[AUTH_MODE] = "token"
        import ray

        if ray.is_initialized():
            yield cls(config, address, owns_ray=False)
            return
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        logging.getLogger("ray").setLevel(logging.WARNING)
        if address and not config.shared_dir and not on_this_machine(address):
            raise RayUnavailable(
                f"a Ray cluster at {address} cannot write into this step's own folders: set "
                "ray.shared_dir to a folder that the cluster's pods and the pipeline's pods mount at "
                "the same path (and ray.shared_volume_claim to its PersistentVolumeClaim)")
        _start(config, address)
        try:
            _quiet_ray_data()
            yield cls(config, address, owns_ray=True)
        finally:
            ray.shutdown()

    @contextmanager
    def staging(self, near: str | Path, what: str) -> Iterator[Path]:
        """A scratch folder the tasks and this process both see, removed afterwards: beside `near`
        with the embedded Ray, under `ray.shared_dir` with a cluster."""
        root = Path(self.config.shared_dir) if self.config.shared_dir else Path(near).resolve().parent
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".genrec-{what}-", dir=root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def parts_folder(self, artefact: Path) -> tuple[Path, str]:
        """Where bucket tasks write an artefact's parts, and the `location` its partitioning records:
        the artefact folder itself with the embedded Ray; a fresh folder under `ray.shared_dir` when
        tasks run elsewhere (the artefact then points at it)."""
        if not self.config.shared_dir:
            return artefact, ""
        folder = Path(self.config.shared_dir) / f"genrec-{uuid.uuid4().hex}" / artefact.name
        folder.mkdir(parents=True)
        return folder, str(folder)

    def concurrency(self, tasks: int) -> int:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        limit = self.config.max_concurrency or cpus
        return max(1, min(tasks, limit, cpus))

    def map(self, fn: Callable[[S], R], specs: Sequence[S], what: str,
            progress: Progress | None = None, concurrency: int | None = None) -> list[R]:
        """`[fn(spec) for spec in specs]`, as Ray Data tasks; results in spec order. Progress lines
        name `what` unless `progress` is given. `concurrency` caps the tasks at once below the
        session's own cap (1 for a sink that takes one writer)."""
        results: list[Any] = [None] * len(specs)
        for index, outcome in self.imap(fn, specs, what, progress, concurrency):
            results[index] = outcome
        return results

    def imap(self, fn: Callable[[S], R], specs: Sequence[S], what: str,
             progress: Progress | None = None, concurrency: int | None = None) -> Iterator[tuple[int, R]]:
        """Like `map`, yielding (index of the spec, result) as tasks finish, so that the caller can
        fold results in without holding them all."""
        import ray

        progress = progress or LineProgress(what)
        if not specs:
            return
        rows = [{"index": index, "spec": pickle.dumps(spec)} for index, spec in enumerate(specs)]
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": self.config.task_retries}
        if self.config.task_memory_mb:
            options["memory"] = self.config.task_memory_mb * MIB
        pool = ray.data.TaskPoolStrategy(size=min(self.concurrency(len(rows)), concurrency or len(rows)))
        task = functools.partial(_run_task, fn=fn)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map(task, compute=pool, **options)
        for done, row in enumerate(dataset.iter_rows(), start=1):
            outcome = pickle.loads(row["outcome"])
            if isinstance(outcome, TaskFailure):
                raise outcome.error
            progress(done, len(rows))
            yield row["index"], outcome


@dataclass
class TaskFailure:
    """An exception a task raised, carried back to the driver to be raised there as itself."""

    error: BaseException


def _run_task(row: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    try:
        outcome: Any = fn(pickle.loads(row["spec"]))
    except Exception as exc:  # noqa: BLE001 (re-raised in the driver, as the same exception)
        outcome = TaskFailure(exc)
    try:
        payload = pickle.dumps(outcome)
    except (pickle.PicklingError, TypeError, AttributeError):
        payload = pickle.dumps(TaskFailure(RuntimeError(f"{fn.__name__}: {outcome!r}")))
    return {"index": row["index"], "outcome": payload}


def require_token_authentication() -> None:
    """Switches on Ray's token authentication for an embedded Ray (RAY_AUTH_MODE=token, a fresh
    random RAY_AUTH_TOKEN), unless the environment already sets it up.

    Ray binds its servers to every interface of the machine (it turns a loopback node address into
    a reachable one), so without a token anyone who reaches this machine could run code in the
    embedded Ray while it is up. The switch must come before Ray is first imported in this process:
    Ray reads it once, at import. Processes started from this one (a local run's steps) inherit
    both variables and so can join.
    """
    if os.environ.get(AUTH_MODE) == "token":
        return
    if "ray" in sys.modules:
        raise RayUnavailable(
            "Ray was imported in this process before genrec could switch on Ray's token authentication; "
            f"set {AUTH_MODE}=token and {AUTH_TOKEN}=<a secret> in the environment before starting it")
    os.environ[AUTH_MODE] = "token"
    os.environ.setdefault(AUTH_TOKEN, secrets.token_hex(32))


def on_this_machine(address: str) -> bool:
    """Whether the Ray at `address` runs on this machine (a local run's shared Ray), and so sees its
    folders: its host is one of this machine's own addresses."""
    if address == "auto":
        return True
    host = address.removeprefix("ray://").rpartition(":")[0]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))  # only an address of this machine can be bound
    except OSError:
        return False
    return True


@contextmanager
def shared_local_ray(config: RayConfig) -> Iterator[str]:
    """One embedded Ray for every step of a local pipeline run: started here, its address handed to
    the steps (subprocesses) through `ray.address_env`, stopped at the end. Starting Ray once
    instead of once per step saves some ten seconds a step. Yields "" (and starts nothing) when the
    run already names a cluster."""
    if cluster_address(config):
        yield ""
        return
    require_token_authentication()
    import ray

    with RaySession.open(config):
        address = ray.get_runtime_context().gcs_address
        # The steps read ray.address_env; Feast's Ray offline store (inside steps) reads RAY_ADDRESS.
        names = (config.address_env, "RAY_ADDRESS")
        previous = {name: os.environ.get(name) for name in names}
        os.environ.update(dict.fromkeys(names, address))
        try:
            yield address
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def cluster_address(config: RayConfig) -> str:
    """The configured cluster, else the one named in the environment (a Secret); "" = embedded."""
    return config.address or os.environ.get(config.address_env, "").strip()


def _start(config: RayConfig, address: str) -> None:
    import ray

    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": True,
                              "logging_level": logging.WARNING}
    if address:
        _probe(address, config.connect_timeout_seconds)
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=config.num_cpus or os.cpu_count() or 1,
                      object_store_memory=config.object_store_mb * MIB)
        if config.temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(os.path.expanduser(config.temp_dir))
    where = f"the Ray cluster at {address}" if address else "an embedded Ray"
    started = time.perf_counter()
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 (reported with the address)
        raise RayUnavailable(f"{where} could not be started or reached after "
                             f"{time.perf_counter() - started:.1f}s: {exc}") from exc


def _probe(address: str, timeout: float) -> None:
    """Fails fast, naming the address, when nothing answers there: ray.init would otherwise retry
    for minutes. "auto" (the Ray of this node) is left to Ray."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"ray.address={address!r} is not HOST:PORT or ray://HOST:PORT (or 'auto')")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailable(f"nothing answers at the Ray address {address} ({exc}): check the address, "
                             "the head's Service and the NetworkPolicy") from exc


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Data warns once that its bars are off: the steps print their own progress lines.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
