"""The Ray session behind data.engine=ray: the embedded Ray starts bounded by the config and stops
without leaving a process behind; it refuses clients without its token; a cluster that does not
answer fails fast, naming its address; a remote cluster without a shared folder is refused before
anything runs. Each case runs in a fresh interpreter: Ray reads its authentication mode once per
process, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from genrec.config import ConfigError, GenrecConfig
from tests.conftest import REPO

TIMEOUT = 180


def run_python(code: str, env: dict[str, str] | None = None) -> dict:
    """Runs `code` in a fresh interpreter; it prints one JSON line last."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "GENREC_RAY_ADDRESS"}
    environment.update(env or {})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=environment,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_embedded_ray_is_bounded_runs_tasks_and_stops_cleanly() -> None:
    result = run_python("""
        import json, time, psutil
        from genrec.config import RayConfig
        from genrec.distributed import RaySession

        def square(x):
            return x * x

        me = psutil.Process()
        with RaySession.open(RayConfig(num_cpus=1, object_store_mb=100)) as session:
            import ray
            resources = ray.cluster_resources()
            squares = session.map(square, list(range(7)), "squares")
            during = len(me.children(recursive=True))
        stopped = not ray.is_initialized()
        deadline = time.monotonic() + 20
        while me.children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(json.dumps({"cpus": resources.get("CPU"), "store": resources.get("object_store_memory"),
                          "squares": squares, "during": during, "stopped": stopped,
                          "left": [p.name() for p in me.children(recursive=True)]}))
    """)
    assert result["cpus"] == 1 and result["store"] == pytest.approx(100 * 1024 * 1024, rel=0.05)
    assert result["squares"] == [x * x for x in range(7)]
    assert result["during"] > 0 and result["stopped"]
    assert result["left"] == [], "Ray processes outlived the session"


def test_a_task_error_reaches_the_driver_as_itself() -> None:
    result = run_python("""
        import json
        from genrec.config import RayConfig
        from genrec.distributed import RaySession
        from genrec.data.partitioned import PartitionError

        def fail(x):
            if x == 2:
                raise PartitionError(f"bucket {x} is missing")
            return x

        with RaySession.open(RayConfig(num_cpus=1, object_store_mb=100)) as session:
            try:
                session.map(fail, [0, 1, 2, 3], "fail")
                caught = None
            except PartitionError as exc:
                caught = str(exc)
        print(json.dumps({"caught": caught}))
    """)
    assert result["caught"] == "bucket 2 is missing"


def test_the_embedded_ray_refuses_a_client_without_its_token() -> None:
    result = run_python("""
        import json, os, subprocess, sys
        from genrec.config import RayConfig
        from genrec.distributed import RaySession

        join = "import ray; ray.init(address=sys.argv[1], log_to_driver=False); print('joined')"
        with RaySession.open(RayConfig(num_cpus=1, object_store_mb=100)):
            import ray
            address = ray.get_runtime_context().gcs_address
            clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
            clients = {"no token": {}, "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                       "the token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}}
            # The three clients try at once: a refused one may wait out Ray's own connect timeout.
            started = {name: subprocess.Popen([sys.executable, "-c", "import sys;" + join, address],
                                              env={**clean, **extra}, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True)
                       for name, extra in clients.items()}
            outcomes = {}
            for name, process in started.items():
                try:
                    outcomes[name] = "joined" in process.communicate(timeout=40)[0]
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
                    outcomes[name] = False
        print(json.dumps(outcomes))
    """)
    assert result == {"no token": False, "wrong token": False, "the token": True}


def refusal_opening(address: str) -> str | None:
    """RayUnavailable's message when a session is opened at `address` (None: it opened)."""
    result = run_python(f"""
        import json
        from genrec.config import RayConfig
        from genrec.distributed import RaySession, RayUnavailable
        try:
            with RaySession.open(RayConfig(address={address!r}, connect_timeout_seconds=2)):
                message = None
        except RayUnavailable as exc:
            message = str(exc)
        print(json.dumps({{"message": message}}))
    """)
    return result["message"]


def test_an_unreachable_cluster_fails_fast_and_names_its_address() -> None:
    started = time.perf_counter()
    message = refusal_opening("127.0.0.1:9")
    assert message and "127.0.0.1:9" in message
    assert time.perf_counter() - started < 60


def test_a_remote_cluster_needs_the_shared_folder() -> None:
    message = refusal_opening("ray://192.0.2.77:10001")
    assert message and "ray.shared_dir" in message


@pytest.mark.parametrize(("override", "field"), [
    ("ray.object_store_mb=10", "ray.object_store_mb"),
    ("ray.num_cpus=-1", "ray.num_cpus"),
    ("ray.shared_volume_claim=claim", "ray.shared_dir"),
    ("ray.shared_dir=relative/path", "ray.shared_dir"),
    ("ray.secret_token_key=", "ray.secret_token_key"),
    ("data.bucket_rows=0", "data.bucket_rows"),
    ("data.engine=spark", "data.engine"),
])
def test_bad_ray_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=field.replace(".", r"\.")):
        GenrecConfig().with_overrides([override])
