"""Where the replicas are, and how the rung reaches them.

Discovery: a fixed list of base URLs (`StaticReplicas`), or the ready addresses of a Service's
Endpoints (`KubernetesReplicas`). Pushing: `ReplicaPusher` PUTs the rung to each replica's admin
endpoint (`genrec.contract`) on its own task, with retries and back-off, so a slow or refusing
replica never holds up the others or the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from genrec.config import ControllerConfig
from genrec.contract import ADMIN_PATH, rung_body, rung_of

log = logging.getLogger("genrec.controller")

# Status codes after which retrying the same push cannot help: the replica rejects the rung itself
# (its ladder differs from ours). Everything else (401 while a rotated Secret propagates, 403, 5xx,
# timeouts, refused connections) is retried with back-off.
PERMANENT_PUSH_FAILURES = frozenset({400, 422})


def _host(ip: str) -> str:
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def parse_endpoints(doc: Mapping[str, Any], port: int) -> list[str]:
    """Base URLs of the ready addresses of a v1 Endpoints document that serve `port`.

    Endpoints list target (container) ports, so `port` is the predictor's container port. An address
    in `notReadyAddresses` is skipped: it is starting or failing its probe, and pushing to it would
    only count errors; it gets the policy once it turns ready. A subset without ports (a headless
    Service without ports) is taken to serve `port`.
    """
    urls: set[str] = set()
    for subset in doc.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or []]
        if ports and port not in ports:
            continue
        for address in subset.get("addresses") or []:
            if address.get("ip"):
                urls.add(f"http://{_host(address['ip'])}:{port}")
    return sorted(urls)


class StaticReplicas:
    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = [u.rstrip("/") for u in urls]

    async def discover(self) -> list[str]:
        return list(self.urls)


class KubernetesReplicas:
    """The ready addresses of a Service, read from its Endpoints object with the `kubernetes` client.

    The `kubernetes` client is pinned in requirements.lock (kfp depends on it), so the image has it.
    In a pod the client uses the service account (token and CA under
    /var/run/secrets/kubernetes.io/serviceaccount); outside one, the local kubeconfig. The Role in
    manifests/base/controller.yaml allows `get` on this one Endpoints object only. The raw JSON is
    parsed (not the client's models), so the same `parse_endpoints` serves every path; it is read
    once per interval, so replicas that come and go are picked up within one interval.
    """

    def __init__(self, service: str, namespace: str, port: int, api_client: Any = None) -> None:
        self.service, self.namespace, self.port = service, namespace, port
        self._api_client = api_client
        self._api: Any = None

    def _core(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            if self._api_client is None:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
                self._api_client = client.ApiClient()
            self._api = client.CoreV1Api(self._api_client)
        return self._api

    def _read(self) -> list[str]:
        response = self._core().read_namespaced_endpoints(self.service, self.namespace,
                                                          _preload_content=False)
        return parse_endpoints(json.loads(response.data), self.port)

    async def discover(self) -> list[str]:
        return await asyncio.to_thread(self._read)


class ReplicaPusher:
    """Pushes the rung to each replica on its own task; retries with exponential back-off.

    `reconcile` never waits: a replica that times out or refuses only delays itself. A newer rung
    cancels an older push in progress. A replica that acknowledged the rung is left alone until
    `resync_seconds` have passed (a process restarted at the same address comes back on its default
    rung; a new address is a new replica and is pushed at once).
    """

    def __init__(self, http: httpx.AsyncClient, token: str, c: ControllerConfig, on_error: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.http, self.token = http, token
        self.timeout, self.retries = c.push_timeout_seconds, c.push_retries
        self.backoff = c.push_backoff_seconds
        self.resync = c.resync_seconds
        self.on_error, self.clock = on_error, clock
        self.acked: dict[str, tuple[int, float]] = {}
        self.tasks: dict[str, tuple[int, asyncio.Task[bool]]] = {}

    def reconcile(self, urls: Sequence[str], rung: int) -> None:
        now = self.clock()
        for gone in set(self.tasks) - set(urls):
            self.tasks.pop(gone)[1].cancel()
        for gone in set(self.acked) - set(urls):
            del self.acked[gone]
        for url in urls:
            running = self.tasks.get(url)
            if running and not running[1].done():
                if running[0] == rung:
                    continue
                running[1].cancel()
            acked = self.acked.get(url)
            if acked and acked[0] == rung and now - acked[1] < self.resync:
                continue
            self.tasks[url] = (rung, asyncio.create_task(self._push(url, rung)))

    async def wait(self) -> None:
        """Waits for the pushes in progress (tests, shutdown)."""
        running = [t for _, t in self.tasks.values() if not t.done()]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def cancel(self) -> None:
        for _, task in self.tasks.values():
            task.cancel()

    async def _push(self, url: str, rung: int) -> bool:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            permanent = False
            try:
                response = await self.http.put(url + ADMIN_PATH, json=rung_body(rung), timeout=self.timeout,
                                               headers={"Authorization": f"Bearer {self.token}"})
                if response.status_code == 200 and _acknowledges(response, rung):
                    self.acked[url] = (rung, self.clock())
                    if attempt:
                        log.info("replica %s took rung %d after %d retries", url, rung, attempt)
                    return True
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                permanent = response.status_code in PERMANENT_PUSH_FAILURES
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.on_error()
            last = permanent or attempt == self.retries
            log.warning("push of rung %d to %s failed (attempt %d/%d): %s%s", rung, url, attempt + 1,
                        self.retries + 1, error, "; giving up until the next interval" if last else "")
            if last:
                return False
            await asyncio.sleep(delay)
            delay *= 2
        return False


def _acknowledges(response: httpx.Response, rung: int) -> bool:
    try:
        return rung_of(response.json()) == rung
    except ValueError:
        return False
