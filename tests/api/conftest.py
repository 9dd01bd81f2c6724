"""Fixtures for operator tests: the API-server emulator, a kubeconfig for it, the real operator as a
subprocess, HTTP helpers, and a test kubelet.

- ``emulator``: ``support.emulator.ApiServerEmulator`` on a free port with kopf's discovery kinds, the
  core/apps/batch kinds and our four CRDs (status subresource) registered.
- ``kubeconfig``: a kubeconfig file pointing at it (namespace ``test``), for ``KUBECONFIG``.
- ``api`` (``Api``): ``create`` (our kinds get the CRD's defaults and are validated as the API server
  would, see ``support.crd_validation``; ``validate=False`` lets a bad object in, as an older CRD
  would), ``get``, ``patch`` (dict = merge patch, list = JSON patch), ``delete``, ``events``,
  ``wait_for`` (polls an async check until it returns something truthy) and ``writes_since`` (the
  write requests the emulator received after a ``mark()``, for "no writes" assertions).
- ``kubelet`` (``Kubelet``): plays the nodes: a Job succeeded/failed, a Deployment rolled out or stuck
  (ProgressDeadlineExceeded), a Pod of a Job with a log served at ``.../pods/NAME/log``.
- ``operator`` (``OperatorProcess``, started) and ``operator_process`` (not started; ``start(**env)``):
  ``python -m lightning_op.cli operator --store URL --namespace test --metrics-port P`` with
  ``KUBECONFIG``; ``start`` waits for ``/healthz``; ``stop``/``restart`` let tests restart it. Timer
  intervals and retry delays are shortened through the environment (see ``FAST_ENV``).

Everything here is async on the test's event loop, which also serves the emulator: never block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kmock
import pytest
import yaml
from kmock._internal import apps as kmock_apps
from support import crd_validation
from support.emulator import ApiServerEmulator, register_resources

from lightning_op.api import constants, kinds
from lightning_op.manifests import crds

T = TypeVar("T")
NAMESPACE = "test"
REPO = Path(__file__).resolve().parents[2]
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crds.build_crds()}

#: apiVersion and plural of every kind the tests touch
RESOURCES: dict[str, tuple[str, str]] = {
    "Namespace": ("v1", "namespaces"),
    "Deployment": ("apps/v1", "deployments"),
    "Job": ("batch/v1", "jobs"),
    "Pod": ("v1", "pods"),
    "Event": ("v1", "events"),
    "Secret": ("v1", "secrets"),
    **{info.kind: (constants.API_VERSION, info.plural) for info in kinds.KINDS},
}

#: operator environment that makes tests fast: short timer intervals and retry delays
FAST_ENV = {
    "LIGHTNING_CAPTURE_SYNC_SECONDS": "0.5",
    "LIGHTNING_PROMOTION_POLL_SECONDS": "0.2",
    "LIGHTNING_FINETUNE_POLL_SECONDS": "0.2",
    "LIGHTNING_LABELING_POLL_SECONDS": "0.2",
    "LIGHTNING_RETRY_DELAY_SECONDS": "1",
    "LIGHTNING_COLLECTOR_URL": "http://collector.lightning-op.svc:8080",
}


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    api_version, plural = RESOURCES[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


# ----------------------------------------------------------------------------------------- emulator


@pytest.fixture
async def emulator() -> AsyncIterator[ApiServerEmulator]:
    server = ApiServerEmulator()
    register_resources(
        server,
        {
            info.resource: {
                "kind": info.kind,
                "namespaced": True,
                "verbs": ["get", "list", "watch", "create", "patch", "delete"],
                "shortnames": [info.short_name],
                "categories": [constants.CATEGORY],
                "subresources": ["status"],
            }
            for info in kinds.KINDS
        },
    )
    server.resources["v1/configmaps"] = {
        "kind": "ConfigMap",
        "namespaced": True,
        "verbs": ["get", "create", "patch", "delete"],
    }
    async with server, kmock_apps.Server(server) as http:
        url = str(server.url).rstrip("/")
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/v1/namespaces", json=namespace),
        ):
            pass
        yield server
        # A watch whose client went away (the operator was stopped) waits for the next event before it
        # notices; do not let aiohttp wait its default 60 s for such streams at shutdown.
        http.server.runner._shutdown_timeout = 0.5  # type: ignore[union-attr]


@pytest.fixture
def kubeconfig(emulator: ApiServerEmulator, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig.yaml"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": NAMESPACE}}
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- HTTP helpers


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class WriteCall:
    """One write request the emulator received."""

    method: str
    plural: str
    name: str | None
    subresource: str | None
    data: Any
    #: the HTTP status when the API server refused the write (409, 422, ...), else None
    refused: int | None = None
    #: the ``fieldManager`` the request named (who owns the fields it set), else None
    field_manager: str | None = None

    @property
    def kopf_bookkeeping(self) -> bool:
        """A patch that touches only kopf's annotations under our group (handler progress, the
        last-handled configuration, the self-wake ``touch-dummy``) or the finalizers."""
        if self.method != "PATCH" or self.subresource or not isinstance(self.data, dict):
            return False
        if set(self.data) != {"metadata"} or not set(self.data["metadata"]) <= {"annotations", "finalizers"}:
            return False
        annotations = self.data["metadata"].get("annotations") or {}
        return all(key.startswith(f"{constants.GROUP}/") for key in annotations)

    def __str__(self) -> str:
        target = f"{self.plural}/{self.name}" + (f"/{self.subresource}" if self.subresource else "")
        return f"{self.method} {target} {self.data}"


#: the User-Agent of the tests' own requests (``Api``), so a test can tell the operator's apart
TEST_USER_AGENT = "lightning-op-tests"


_OUR_KINDS = frozenset(info.kind for info in kinds.KINDS)


class Api:
    """What a test does with kubectl, over HTTP against the emulator."""

    def __init__(self, emulator: ApiServerEmulator, session: aiohttp.ClientSession) -> None:
        self.emulator = emulator
        self.session = session
        self.url = str(emulator.url).rstrip("/")

    async def _request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] = {}) -> Any:
        headers = {"User-Agent": TEST_USER_AGENT}
        if method == "PATCH":
            headers["Content-Type"] = (
                "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
            )
        async with self.session.request(
            method, self.url + path, json=body, params=dict(params), headers=headers
        ) as response:
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, data)
            return data

    async def create(
        self, body: Mapping[str, Any], namespace: str = NAMESPACE, *, validate: bool = True
    ) -> dict[str, Any]:
        """Create an object. Our kinds get the CRD's defaults and, unless ``validate=False``, are refused
        (``ApiError`` 422 naming the fields) where the API server would refuse them."""
        obj = copy.deepcopy(dict(body))
        obj.setdefault("metadata", {}).setdefault("namespace", namespace)
        kind = obj["kind"]
        obj.setdefault("apiVersion", RESOURCES[kind][0])
        if kind in CRDS:
            schema = crd_validation.openapi_schema(CRDS[kind])
            if validate:
                errors = crd_validation.validate(CRDS[kind], obj)
                if errors:
                    raise ApiError(422, "; ".join(str(e) for e in errors))
            defaulted = crd_validation.apply_defaults(
                schema, {k: v for k, v in obj.items() if k != "metadata"}
            )
            obj = {**defaulted, "metadata": obj["metadata"]}
        result: dict[str, Any] = await self._request("POST", _path(kind, namespace), obj)
        return result

    async def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._request("GET", _path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(
        self, kind: str, namespace: str = NAMESPACE, selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else {}
        data = await self._request("GET", _path(kind, namespace), params=params)
        items: list[dict[str, Any]] = data.get("items") or []
        return items

    async def patch(
        self, kind: str, name: str, patch: Any, namespace: str = NAMESPACE, subresource: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "PATCH", _path(kind, namespace, name, subresource), patch
        )
        return result

    async def delete(self, kind: str, name: str, namespace: str = NAMESPACE) -> None:
        await self._request("DELETE", _path(kind, namespace, name))

    async def events(self, name: str | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """Events (oldest first), of one involved object when ``name`` is given."""
        items = await self.list("Event", namespace)
        if name is not None:
            items = [e for e in items if (e.get("involvedObject") or {}).get("name") == name]
        return items

    async def wait_for(
        self, check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.05, what: str = ""
    ) -> T:
        """Poll ``check`` until it returns something truthy; fail with its last value after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or check}; last: {value!r}"
                )
            await asyncio.sleep(interval)

    async def wait_for_phase(
        self, kind: str, name: str, phase: str, timeout: float = 10.0, namespace: str = NAMESPACE
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.get(kind, name, namespace)
            return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

        try:
            found = await self.wait_for(check, timeout, what=f"{kind} {name} phase {phase}")
        except AssertionError:
            obj = await self.get(kind, name, namespace)
            raise AssertionError(
                f"{kind} {namespace}/{name} did not reach phase {phase} in {timeout} s; status: "
                f"{(obj or {}).get('status')}"
            ) from None
        if kind in _OUR_KINDS:
            # kopf posts the phase change's Event from a queue, moments after the status write: a test
            # that reads Events next must see it, as a user running kubectl a second later would.
            async def announced() -> bool:
                return any(
                    str(e.get("message", "")).split(":")[0].endswith(f"-> {phase}")
                    for e in await self.events(name, namespace)
                )

            await self.wait_for(announced, timeout, what=f"the Event of {kind} {name} entering {phase}")
        return found

    def mark(self) -> int:
        """A position in the emulator's request log, for ``writes_since``."""
        return len(self.emulator.history)

    def operator_reads_since(self, mark: int) -> list[str]:
        """GET requests after ``mark`` that did not come from the test (``METHOD plural[/sub] name``)."""
        return [
            f"GET {r.resource.plural}{'/' + r.subresource if r.subresource else ''} {r.name or ''}".rstrip()
            for r in self.emulator.history[mark:]
            if r.method == "GET" and r.resource is not None and r.headers.get("User-Agent") != TEST_USER_AGENT
        ]

    def writes_since(self, mark: int, plural: str | None = None) -> list[WriteCall]:
        """Create/patch/delete requests received after ``mark`` (of one plural when given), the
        refused ones included (``WriteCall.refused``)."""
        calls = []
        for index, request in enumerate(self.emulator.history[mark:], start=mark):
            if request.method not in ("POST", "PATCH", "PUT", "DELETE") or request.resource is None:
                continue
            if plural is not None and request.resource.plural != plural:
                continue
            name = request.name
            if name is None and isinstance(request.data, dict):
                name = (request.data.get("metadata") or {}).get("name")  # a create names it in the body
            calls.append(
                WriteCall(
                    str(request.method.value),
                    str(request.resource.plural),
                    name,
                    request.subresource,
                    request.data,
                    self.emulator.refused.get(index),
                    request.params.get("fieldManager"),
                )
            )
        return calls


@pytest.fixture
async def api(emulator: ApiServerEmulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(emulator, session)


# ----------------------------------------------------------------------------------------- kubelet


class Kubelet:
    """Plays the kubelet and the controllers a real cluster runs: sets child objects' status."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.logs: dict[tuple[str, str], bytes] = {}

    async def job_succeeded(self, name: str, namespace: str = NAMESPACE) -> None:
        await self.api.patch(
            "Job",
            name,
            {
                "status": {
                    "succeeded": 1,
                    "active": 0,
                    "startTime": _now(),
                    "completionTime": _now(),
                    "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": _now()}],
                }
            },
            namespace,
            subresource="status",
        )

    async def job_failed(
        self, name: str, reason: str = "BackoffLimitExceeded", namespace: str = NAMESPACE
    ) -> None:
        await self.api.patch(
            "Job",
            name,
            {
                "status": {
                    "failed": 1,
                    "active": 0,
                    "startTime": _now(),
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": reason,
                            "message": "Job has reached the specified backoff limit",
                            "lastTransitionTime": _now(),
                        }
                    ],
                }
            },
            namespace,
            subresource="status",
        )

    async def rollout(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        """The Deployment's current generation is rolled out: every replica updated and available."""
        deployment = await self.api.get("Deployment", name, namespace)
        assert deployment is not None, f"no Deployment {namespace}/{name}"
        replicas = int(deployment.get("spec", {}).get("replicas", 1))
        return await self.api.patch(
            "Deployment",
            name,
            {
                "status": {
                    "observedGeneration": deployment["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "unavailableReplicas": None,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                    ],
                }
            },
            namespace,
            subresource="status",
        )

    async def rollout_stuck(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        """The Deployment's new pods never became ready: Progressing False, ProgressDeadlineExceeded."""
        deployment = await self.api.get("Deployment", name, namespace)
        assert deployment is not None, f"no Deployment {namespace}/{name}"
        replicas = int(deployment.get("spec", {}).get("replicas", 1))
        return await self.api.patch(
            "Deployment",
            name,
            {
                "status": {
                    "observedGeneration": deployment["metadata"]["generation"],
                    "replicas": replicas + 1,
                    "updatedReplicas": 1,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "unavailableReplicas": 1,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {
                            "type": "Progressing",
                            "status": "False",
                            "reason": "ProgressDeadlineExceeded",
                            "message": f'ReplicaSet "{name}-7d9f" has timed out progressing.',
                        },
                    ],
                }
            },
            namespace,
            subresource="status",
        )

    @contextlib.asynccontextmanager
    async def rolling_out(
        self, name: str, namespace: str = NAMESPACE, delay: float = 0.1
    ) -> AsyncIterator[None]:
        """While inside, every new generation of the Deployment rolls out after ``delay`` seconds."""

        async def loop() -> None:
            while True:
                deployment = await self.api.get("Deployment", name, namespace)
                if deployment is not None:
                    status = deployment.get("status") or {}
                    if status.get("observedGeneration") != deployment["metadata"]["generation"]:
                        await asyncio.sleep(delay)
                        await self.rollout(name, namespace)
                await asyncio.sleep(0.05)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def serve_pod(
        self,
        job_name: str,
        pod_name: str,
        log: bytes | str = b"",
        phase: str = "Running",
        namespace: str = NAMESPACE,
    ) -> dict[str, Any]:
        """A Pod of the Job (label ``job-name``) whose log is served at ``.../pods/NAME/log``;
        ``set_log`` replaces the log later. The pod also has a sidecar (as a service mesh injects),
        so, as on a real API server, a log read must name its container: one that does not gets a 400."""
        job = await self.api.get("Job", job_name, namespace)
        owner = (
            [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job_name,
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            if job is not None
            else []
        )
        pod = await self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "labels": {"job-name": job_name, "batch.kubernetes.io/job-name": job_name},
                    # as the Job controller makes them (a Job's pod lists carry their owner's uid)
                    **({"ownerReferences": owner} if owner else {}),
                },
                "spec": {
                    "containers": [
                        {"name": "trainer", "image": "trainer"},
                        {"name": "istio-proxy", "image": "proxyv2"},
                    ]
                },
            },
            namespace,
        )
        await self.api.patch("Pod", pod_name, {"status": {"phase": phase}}, namespace, subresource="status")
        if phase in ("Pending", "Running") and job is not None:
            # The Job controller counts the pod, pending or running: a Job watch event, as on a cluster.
            await self.api.patch(
                "Job",
                job_name,
                {"status": {"active": 1, "startTime": _now()}},
                namespace,
                subresource="status",
            )
        key = (namespace, pod_name)
        first = key not in self.logs
        self.set_log(pod_name, log, namespace)
        if first:
            path = _path("Pod", namespace, pod_name, "log")
            logs = self.logs

            def serve_log(request: kmock.Request) -> Any:
                if request.params.get("container") != "trainer":
                    message = (
                        f"a container name must be specified for pod {pod_name}, "
                        "choose one of: [trainer istio-proxy]"
                    )
                    return kmock.Response(
                        status=400, payload={"kind": "Status", "code": 400, "message": message}
                    )
                return logs[key]

            self.api.emulator[kmock.method.GET, kmock.path(path)] << serve_log
        return pod

    def set_log(self, pod_name: str, log: bytes | str, namespace: str = NAMESPACE) -> None:
        self.logs[(namespace, pod_name)] = log.encode() if isinstance(log, str) else log


@pytest.fixture
def kubelet(api: Api) -> Kubelet:
    return Kubelet(api)


# ----------------------------------------------------------------------------------------- operator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """``lightning-op operator`` as a child process against the emulator; its log goes to a file."""

    def __init__(self, kubeconfig: Path, store_url: str, log_path: Path, namespace: str = NAMESPACE) -> None:
        self.kubeconfig = kubeconfig
        self.store_url = store_url
        self.log_path = log_path
        self.namespace = namespace
        self.port = _free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.env: dict[str, str] = dict(FAST_ENV)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout: float = 30.0, **env: str) -> OperatorProcess:
        assert self.proc is None, "operator already running"
        self.env.update(env)
        environ = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            environ.pop(name, None)  # never in-cluster, even when tests run in a Pod
        self.starts += 1
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"\n===== operator start #{self.starts} =====\n")
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lightning_op.cli",
                "-v",
                "operator",
                "--store",
                self.store_url,
                "--namespace",
                self.namespace,
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=environ,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"operator exited with {self.proc.returncode}; log:\n{self.log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return self
                if time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(f"operator not healthy within {timeout} s; log:\n{self.log}")
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    async def kill(self) -> None:
        """A crash: SIGKILL, no cleanup."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def restart(self, **env: str) -> OperatorProcess:
        await self.stop()
        return await self.start(**env)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/metrics") as response:
            return await response.text()


@pytest.fixture
async def operator_process(
    kubeconfig: Path, store_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[OperatorProcess]:
    """The operator, not started yet (``await operator_process.start(**env)``); its log is printed when
    the test fails."""
    process = OperatorProcess(kubeconfig, store_url, tmp_path / "operator.log")
    try:
        yield process
    finally:
        await process.kill()  # tests that need a graceful stop call stop() themselves
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(f"\n----- operator log -----\n{process.log[-20000:]}\n")


@pytest.fixture
async def operator(operator_process: OperatorProcess) -> OperatorProcess:
    return await operator_process.start()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


# ----------------------------------------------------------------------------------------- test data


def agent_deployment(name: str = "agent", replicas: int = 2) -> dict[str, Any]:
    """An agent Deployment with env of its own (a plain value and a secretKeyRef) and a sidecar."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "agent",
                            "image": "registry.example/agent:1.4",
                            "env": [
                                {"name": "MODEL_NAME", "value": "qwen-base"},
                                {"name": "LOG_LEVEL", "value": "info"},
                                {
                                    "name": "OPENAI_API_KEY",
                                    "valueFrom": {"secretKeyRef": {"name": "agent-keys", "key": "openai"}},
                                },
                            ],
                        },
                        {
                            "name": "proxy",
                            "image": "registry.example/proxy:2",
                            "env": [{"name": "MODE", "value": "sidecar"}],
                        },
                    ]
                },
            },
        },
    }


def container_env(deployment: Mapping[str, Any] | None, container: str = "agent") -> list[dict[str, Any]]:
    """The env list of one container of a Deployment body."""
    assert deployment is not None
    for body in deployment["spec"]["template"]["spec"]["containers"]:
        if body["name"] == container:
            return list(body.get("env") or [])
    raise AssertionError(f"no container {container!r}")


def env_dict(deployment: Mapping[str, Any] | None, container: str = "agent") -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_env(deployment, container)}


def example(kind: str, name: str) -> dict[str, Any]:
    """The walkthrough's example manifest of ``kind`` (examples/*.yaml), renamed, namespace ``test``."""
    files = {
        "EpisodeCapture": "capture.yaml",
        "RewardLabeling": "labeling.yaml",
        "FineTuneJob": "finetune.yaml",
        "ModelPromotion": "promotion.yaml",
    }
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / files[kind]).read_text(encoding="utf-8"))
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    return body


def live_episodes(
    agent: str,
    model: str,
    n: int,
    reward: float | None,
    *,
    errors: int = 0,
    at: datetime.datetime | None = None,
    prefix: str = "",
) -> list[Any]:
    """``n`` live episodes of ``model`` (the first ``errors`` with an error), labeled with ``reward``."""
    from lightning_op.api import episode as ep

    when = at or datetime.datetime.now(tz=datetime.UTC)
    return [
        ep.Episode(
            id=f"{prefix or model}-{i}".replace("/", "_"),
            agent_id=agent,
            model_version=model,
            timestamp=when - datetime.timedelta(milliseconds=i),
            state=ep.State(query=f"q{i}"),
            result="ok",
            reward=reward,
            error="tool timed out" if i < errors else None,
        )
        for i in range(n)
    ]


def quick_promotion(
    agent: str, model: str = "v2", window_seconds: int = 60, min_episodes: int = 5
) -> dict[str, Any]:
    """The example ModelPromotion of ``model`` (named, no gate) onto container ``agent`` of the
    Deployment ``agent``, with a short verification window."""
    body = example("ModelPromotion", agent)
    body["spec"].update(agentId=agent, targetRef={"name": agent, "container": "agent"}, model={"name": model})
    body["spec"]["verification"].update(windowSeconds=window_seconds, minEpisodes=min_episodes)
    return body


class Objects:
    """Builders and readers of test objects, as a fixture (conftest modules are not imported by tests)."""

    agent_deployment = staticmethod(agent_deployment)
    container_env = staticmethod(container_env)
    env_dict = staticmethod(env_dict)
    example = staticmethod(example)
    live_episodes = staticmethod(live_episodes)
    quick_promotion = staticmethod(quick_promotion)


@pytest.fixture
def objects() -> type[Objects]:
    return Objects
