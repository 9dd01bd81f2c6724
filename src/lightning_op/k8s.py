"""A thin wrapper over the kubernetes client: get-or-none, create-or-adopt, JSON patch, error mapping.

The controllers call these from a worker thread (``asyncio.to_thread``) because the kubernetes
client is synchronous and must never run on kopf's event loop. Objects go in and come out as plain
camelCase dicts (the manifests builders' format), read with ``_preload_content=False`` so no client
model classes sit in between. API errors are mapped to four exceptions the controllers turn into
kopf's retry policy: ``NotFound``, ``Conflict``, ``Invalid`` (a permanent problem with what we sent)
and ``Unavailable`` (retry later; ``QuotaExceeded``, a create a ResourceQuota refused, is one).

Only this module and ``controllers/`` import the kubernetes client (DESIGN.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from lightning_op.api import constants

log = logging.getLogger(__name__)
T = TypeVar("T")


class K8sError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(K8sError):
    pass


class Conflict(K8sError):
    pass


class PatchTestFailed(Conflict):
    """A JSON patch's ``test`` op failed (422 "testing value PATH failed"): the object changed since
    it was read. Read it again and rebuild the patch; it is not a refusal of what we meant to write."""


class Invalid(K8sError):
    """The API server refused what we sent (422/400/403): retrying the same request will not help."""


class Unavailable(K8sError):
    """The API server could not be reached or answered 5xx/429: retry later."""


class QuotaExceeded(Unavailable):
    """A ResourceQuota of the namespace refused a create (403 "exceeded quota"): the same request
    succeeds once something it counts is gone (a finished Job deleted, the quota raised)."""


def _reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


#: (connect, read) seconds for every request, as kopf's own client has (``controllers.common``): a
#: connection that never answers would otherwise hold the handler, and a worker thread, forever;
#: a timeout is ``Unavailable`` and retried
REQUEST_TIMEOUT = (10.0, 60.0)

#: every PATCH says its type: a list of operations, or an object merged in (the client would send
#: a dict to a built-in resource as a strategic merge patch, which custom resources refuse)
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"

#: what the API server's ResourceQuota admission says in its 403 (``jobs.batch "x" is forbidden:
#: exceeded quota: NAME, requested: ..., used: ..., limited: ...``), the one 403 that goes away by
#: itself; Argo Workflows tells it from RBAC's 403 the same way
_QUOTA_EXCEEDED = "exceeded quota"
#: how the API server (evanphx/json-patch) words a failed JSON-patch ``test``: "testing value
#: /metadata/resourceVersion failed: test failed"
_TEST_FAILED = "testing value"


def _call(what: str, func: Callable[[], T]) -> T:
    try:
        return func()
    except ApiException as exc:
        message = f"{what}: {exc.status} {_reason(exc)}"
        if exc.status == 404:
            raise NotFound(message, exc.status) from exc
        if exc.status == 409:
            raise Conflict(message, exc.status) from exc
        if exc.status == 422 and _TEST_FAILED in message.lower():
            raise PatchTestFailed(message, exc.status) from exc
        if exc.status == 403 and _QUOTA_EXCEEDED in message:
            raise QuotaExceeded(message, exc.status) from exc
        if exc.status in (400, 403, 422):
            raise Invalid(message, exc.status) from exc
        raise Unavailable(message, exc.status) from exc
    except (HTTPError, OSError) as exc:
        raise Unavailable(f"{what}: {exc}") from exc


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data or b"{}")
    return data


def load_api_client(server: str | None = None) -> client.ApiClient:
    """An ApiClient from ``server`` (tests), else in-cluster config, else the standard kubeconfig."""
    if server:
        configuration = client.Configuration()
        configuration.host = server.rstrip("/")
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Cluster:
    """Typed entry points over one ApiClient; every method returns plain dicts."""

    def __init__(self, api_client: client.ApiClient, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        #: on every typed call: the raw response (read as plain dicts, no client model classes) and
        #: the timeouts
        self._raw: dict[str, Any] = {"_preload_content": False, "_request_timeout": timeout}

    def _send_json(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send ``body`` as it is. The typed methods (``create_namespaced_job``...) first validate a
        dict into the client's pydantic models and serialize it back: that costs more CPU than the
        request, and refuses (a pydantic ``ValidationError``, not an ``ApiException``) any field
        those models do not know. A response other than 2xx is raised as an ``ApiException``,
        like the typed methods do."""
        request = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=[("fieldManager", constants.FIELD_MANAGER)],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=self.timeout)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return _json(response)

    # ------------------------------------------------------------ deployments

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                _call(
                    f"get Deployment {namespace}/{name}",
                    lambda: self.apps.read_namespaced_deployment(name, namespace, **self._raw),
                )
            )
        except NotFound:
            return None

    def json_patch_deployment(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return _json(
            _call(
                f"patch Deployment {namespace}/{name}",
                lambda: self.apps.patch_namespaced_deployment(
                    name,
                    namespace,
                    ops,
                    field_manager=constants.FIELD_MANAGER,
                    _content_type=JSON_PATCH,
                    **self._raw,
                ),
            )
        )

    # ------------------------------------------------------------ jobs and pods

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                _call(
                    f"get Job {namespace}/{name}",
                    lambda: self.batch.read_namespaced_job(name, namespace, **self._raw),
                )
            )
        except NotFound:
            return None

    def create_or_adopt_job(self, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the Job; if one with that name exists (409), return it: the name is deterministic,
        so an existing Job is ours from before a restart. Returns (job, created)."""
        name = body["metadata"]["name"]
        try:
            created = _call(
                f"create Job {namespace}/{name}",
                lambda: self._send_json("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body),
            )
            return created, True
        except Conflict:
            existing = self.get_job(namespace, name)
            if existing is None:
                raise
            return existing, False

    def delete_job(self, namespace: str, name: str) -> bool:
        try:
            _call(
                f"delete Job {namespace}/{name}",
                lambda: self.batch.delete_namespaced_job(
                    name,
                    namespace,
                    propagation_policy="Background",
                    **self._raw,
                ),
            )
            return True
        except NotFound:
            return False

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a Job (``{"spec": {"suspend": true}}`` suspends it: its pods stop, the Job stays)."""
        return _json(
            _call(
                f"patch Job {namespace}/{name}",
                lambda: self.batch.patch_namespaced_job(
                    name,
                    namespace,
                    patch,
                    field_manager=constants.FIELD_MANAGER,
                    # said, not left to the client (which sends a dict as a strategic merge patch)
                    _content_type=MERGE_PATCH,
                    **self._raw,
                ),
            )
        )

    def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        data = _json(
            _call(
                f"list Pods of Job {namespace}/{job_name}",
                lambda: self.core.list_namespaced_pod(
                    namespace,
                    label_selector=f"job-name={job_name}",
                    **self._raw,
                ),
            )
        )
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int = 50) -> str:
        """The last ``lines`` of one container's log. The container is named: in a pod with an
        injected sidecar (a service mesh) the API server refuses a log read that does not name one."""
        response = _call(
            f"read log of Pod {namespace}/{pod}",
            lambda: self.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                tail_lines=lines,
                **self._raw,
            ),
        )
        # With _preload_content=False the client returns the raw urllib3 response, not a str.
        data: bytes = getattr(response, "data", b"") or b""
        return data.decode("utf-8", errors="replace")

    def job_pod_refusal(self, namespace: str, job_name: str, job_uid: str) -> str | None:
        """The message of the newest ``FailedCreate`` Warning the Job controller posted on this Job:
        why it cannot create the Job's pods (a ResourceQuota on GPUs or pods, an admission webhook,
        a PodSecurity policy), or None. One list of the Job's Events, selected by the API server."""
        selector = ",".join(
            (
                "involvedObject.kind=Job",
                f"involvedObject.name={job_name}",
                f"involvedObject.uid={job_uid}",
                "reason=FailedCreate",
                "type=Warning",
            )
        )
        data = _json(
            _call(
                f"list Events of Job {namespace}/{job_name}",
                lambda: self.core.list_namespaced_event(namespace, field_selector=selector, **self._raw),
            )
        )
        events: list[dict[str, Any]] = data.get("items", [])
        if not events:
            return None

        def when(event: dict[str, Any]) -> str:
            meta = event.get("metadata") or {}
            return str(
                event.get("lastTimestamp") or event.get("eventTime") or meta.get("creationTimestamp") or ""
            )

        return str(max(events, key=when).get("message") or "the Job controller could not create a pod")

    # ------------------------------------------------------------ our custom resources

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                _call(
                    f"get {plural} {namespace}/{name}",
                    lambda: self.custom.get_namespaced_custom_object(
                        constants.GROUP,
                        constants.VERSION,
                        namespace,
                        plural,
                        name,
                        **self._raw,
                    ),
                )
            )
        except NotFound:
            return None

    def patch_custom_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource of one of our objects (daemons, which outlive kopf's patch)."""
        return _json(
            _call(
                f"patch {plural} {namespace}/{name} status",
                lambda: self.custom.patch_namespaced_custom_object_status(
                    constants.GROUP,
                    constants.VERSION,
                    namespace,
                    plural,
                    name,
                    {"status": status},
                    field_manager=constants.FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                    **self._raw,
                ),
            )
        )
