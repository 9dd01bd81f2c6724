"""A kmock Kubernetes emulator that behaves like a real API server where kopf and our code rely on it.

kmock 0.8 stores objects as given. kopf 1.45 writes finalizers with a JSON patch that first ``test``s
``/metadata/resourceVersion``, and resumes watches from a list's resourceVersion, so against plain
kmock an object that needs a finalizer is never handled. This subclass (see DESIGN.md, "Testing
without a cluster"):

- stamps a new ``metadata.resourceVersion`` on every write, and ``uid``, ``creationTimestamp`` and
  ``generation`` on create; bumps ``generation`` when anything but metadata and status changes;
- separates the status subresource: a write to ``/status`` changes only ``status``, a write to the
  object itself never changes ``status`` (for resources registered with ``subresources: ['status']``);
- answers a failed JSON-patch ``test`` (or an invalid patch) with 422, a no-op patch with no new
  version and no watch event; refuses a patch whose body its Content-Type cannot carry (a dict
  sent as a JSON patch: 400), a strategic merge patch of a custom resource (415), as the API
  server does;
- reports the list's resourceVersion and starts a watch *after* the given resourceVersion, replaying
  only newer events (or, with none given, the current objects as ADDED);
- filters lists and watches by equality label selectors (``a=b,c=d``).

It also counts write calls per resource so tests can assert "no writes for an unchanged object".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, k8s, parsing, references, rendering

WRITE_ACTIONS = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)

_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads ``/api/v1/namespaces`` as the prefix of a namespaced path with no namespace and
    answers 500; kopf lists and watches Namespaces to serve ``--namespace``. Read ``/api/v1/namespaces``
    and ``/api/v1/namespaces/NAME`` as the cluster-scoped Namespace resource, as the API server does."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path


@attrs.frozen
class UnprocessableError(k8s.KubernetesError):
    status: int = 422
    reason: str = "Invalid"
    message: str = "the patch could not be applied"


@attrs.frozen
class BadPatchError(k8s.KubernetesError):
    status: int = 400
    reason: str = "BadRequest"
    message: str = "the patch body does not match its Content-Type"


@attrs.frozen
class UnsupportedPatchTypeError(k8s.KubernetesError):
    status: int = 415
    reason: str = "UnsupportedMediaType"
    message: str = "unsupported patch type"


JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def _contains_list(value: Any) -> bool:
    if isinstance(value, list):
        return True
    return isinstance(value, Mapping) and any(_contains_list(v) for v in value.values())


def _check_patch_type(headers: Mapping[str, str], patch: Any, resource: references.resource) -> None:
    """Refuse a PATCH as the API server would for its Content-Type (kmock itself reads a list as a
    JSON patch and a dict as a merge patch whatever the header): a body the type cannot carry is a
    400; a strategic merge patch of a custom resource, or a plain JSON body, a 415. A strategic
    merge patch of a built-in resource is applied as a merge patch while it holds no list (the two
    differ only in how they merge lists, which this emulator cannot do: such a patch is refused
    here, so the code under test does not come to rely on it)."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    media = content_type.split(";")[0].strip().lower()
    if media == JSON_PATCH and not isinstance(patch, list):
        raise BadPatchError(message=f"{JSON_PATCH}: the body must be a JSON array of operations")
    if media in (MERGE_PATCH, STRATEGIC_MERGE_PATCH) and not isinstance(patch, Mapping):
        raise BadPatchError(message=f"{media}: the body must be a JSON object")
    custom = "." in resource.group and not resource.group.endswith("k8s.io")
    if media == STRATEGIC_MERGE_PATCH and (custom or _contains_list(patch)):
        raise UnsupportedPatchTypeError(
            message=f"{STRATEGIC_MERGE_PATCH} "
            + (
                "is not supported for custom resources"
                if custom
                else "with lists: the emulator cannot apply it"
            )
        )
    if media not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        raise UnsupportedPatchTypeError(
            message=f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH} (got {content_type or 'none'})"
        )


def _failed_test_path(doc: Any, patch: list[Any]) -> str:
    """The path of the first ``test`` op of ``patch`` that fails on ``doc``."""
    for op in patch:
        try:
            doc = jsonpatch.apply_patch(doc, [op], in_place=False)
        except jsonpatch.JsonPatchTestFailed:
            return str(op.get("path"))
    return ""


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("metadata", "status")}


def _labels_match(obj: Mapping[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip().rstrip("=")) != value.strip():
                return False
        elif labels.get(term) is None:
            return False
    return True


def _fields_match(obj: Mapping[str, Any], selector: str | None) -> bool:
    """A field selector (``involvedObject.name=x,type!=Normal``: dotted paths, ``=``, ``==``, ``!=``),
    as the API server applies it to a list; a missing field reads as the empty string."""
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        negate = "!=" in term
        path, value = term.split("!=" if negate else "=", 1)
        found: Any = obj
        for part in path.strip().rstrip("=").split("."):
            found = found.get(part) if isinstance(found, Mapping) else None
        if (str(found if found is not None else "") == value.strip().lstrip("=")) == negate:
            return False
    return True


def _quota_exceeded(request: rendering.Request, quota: str) -> k8s.KubernetesError:
    """The 403 a real API server's ResourceQuota admission answers to a create over the limit."""
    assert request.resource is not None
    plural, group = str(request.resource.plural), request.resource.group
    counted = f"count/{plural}.{group}" if group else f"count/{plural}"
    name = ((request.data or {}).get("metadata") or {}).get("name", "")
    resource = f"{plural}.{group}" if group else plural
    return k8s.KubernetesError(
        status=403,
        reason="Forbidden",
        message=f'{resource} "{name}" is forbidden: exceeded quota: {quota}, requested: {counted}=1, '
        f"used: {counted}=4, limited: {counted}=4",
    )


@attrs.define(kw_only=True)
class ApiServerEmulator(k8s.KubernetesEmulator):
    _rv: int = attrs.field(default=0, init=False)
    #: every change as (resourceVersion, resource_key(resource), watch event); watches walk it
    _log: list[tuple[int, tuple[str, str, str], dict[str, Any]]] = attrs.field(factory=list, init=False)
    _log_changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    #: write calls (create/patch/delete) received, by plural name; tests reset it with ``writes.clear()``
    writes: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    #: every request received, in order (kmock's own history keeps only the one being routed),
    #: refused writes included
    history: list[rendering.Request] = attrs.field(factory=list, init=False)
    #: the HTTP status of each refused write (409, 422, 404...), by its index in ``history``
    refused: dict[int, int] = attrs.field(factory=dict, init=False)
    #: set before shutdown: open watches end (the server would otherwise wait for them)
    closing: bool = attrs.field(default=False, init=False)
    #: writes refused with 403, as RBAC refuses them: (plural, name, subresource or None)
    forbidden: set[tuple[str, str, str | None]] = attrs.field(factory=set, init=False)
    #: creates refused with 403 as a full ResourceQuota refuses them: plural -> the quota's name
    quota_full: dict[str, str] = attrs.field(factory=dict, init=False)
    #: JSON patches of (plural, name) that another writer beats, as the deployment controller's
    #: status updates do in a rollout: before each, the object gets a new resourceVersion (and
    #: a MODIFIED event), so a patch that tests the version it read fails; counts down to 0
    contended: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter, init=False)

    # ---------------------------------------------------------------- writes

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _has_status_subresource(self, resource: references.resource) -> bool:
        for res in self._resources:
            if res == resource:
                return "status" in set(self._resources[res].subresources or ())
        return False

    def _find(self, resource: references.resource, namespace: str | None, name: str) -> Any:
        key = (resource, namespace, name)
        if key in self._objects and not self._objects[key].deleted:
            return self._objects[key]
        return None

    async def _emit(self, resource: references.resource, event_type: str, raw: dict[str, Any]) -> None:
        rv = int(raw.get("metadata", {}).get("resourceVersion", self._rv))
        self._log.append((rv, resource_key(resource), {"type": event_type, "object": copy.deepcopy(raw)}))
        async with self._log_changed:
            self._log_changed.notify_all()

    async def _apply_write(self, request: rendering.Request) -> None:
        resource = request.resource
        assert resource is not None
        if request.action == enums.action.CREATE:
            body = copy.deepcopy(request.data or {})
            meta = body.setdefault("metadata", {})
            namespace = request.namespace or meta.get("namespace")
            name = meta.get("name")
            if not name and meta.get("generateName"):
                name = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
                meta["name"] = name
            if namespace:
                meta["namespace"] = namespace
            if self._find(resource, namespace, name) is not None:
                raise k8s.KubernetesObjectConflictError(message=f"{resource.plural} {name!r} already exists")
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=self._next_rv(),
                creationTimestamp=_now(),
                generation=1,
            )
            key = (resource, namespace, name)
            if key in self._objects:
                self._objects[key].create(body)
            else:
                self._objects[key] = body
            await self._emit(resource, "ADDED", body)
            return

        obj = self._find(resource, request.namespace, request.name or "")
        if obj is None:
            raise k8s.KubernetesObjectNotFoundError()
        old = copy.deepcopy(obj.raw)

        if request.action == enums.action.DELETE:
            meta = old.setdefault("metadata", {})
            if meta.get("deletionTimestamp"):
                return
            if meta.get("finalizers"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_rv()
                obj.create(old)
                await self._emit(resource, "MODIFIED", old)
            else:
                meta["resourceVersion"] = self._next_rv()
                obj.delete()
                await self._emit(resource, "DELETED", old)
            return

        # UPDATE: a list body is a JSON patch, a dict body a merge patch, as the Content-Type says.
        patch = request.data
        _check_patch_type(request.headers, patch, resource)
        contended = (str(resource.plural), request.name or "")
        if isinstance(patch, list) and self.contended[contended] > 0:
            self.contended[contended] -= 1
            old["metadata"]["resourceVersion"] = self._next_rv()
            obj.create(old)
            await self._emit(resource, "MODIFIED", old)
            old = copy.deepcopy(old)
        try:
            if isinstance(patch, list):
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch, in_place=False)
            elif isinstance(patch, Mapping):
                new = dict(dicts.merge_patch_dict(copy.deepcopy(old), patch))
            else:
                raise UnprocessableError(message=f"unsupported patch body: {type(patch).__name__}")
        except jsonpatch.JsonPatchTestFailed as exc:
            # the API server's words (evanphx/json-patch), which clients recognise a stale read by
            path = _failed_test_path(old, patch)
            raise UnprocessableError(message=f"testing value {path} failed: test failed ({exc})") from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError, TypeError) as exc:
            raise UnprocessableError(message=f"the patch could not be applied: {exc}") from exc

        if self._has_status_subresource(resource):
            if request.subresource == "status":
                merged = copy.deepcopy(old)
                if "status" in new:
                    merged["status"] = new["status"]
                else:
                    merged.pop("status", None)
                new = merged
            elif "status" in old or "status" in new:
                new = (
                    {**new, "status": old["status"]}
                    if "status" in old
                    else {k: v for k, v in new.items() if k != "status"}
                )
        new_meta = new.setdefault("metadata", {})
        for frozen in ("uid", "creationTimestamp", "name", "namespace"):
            if frozen in old.get("metadata", {}):
                new_meta[frozen] = old["metadata"][frozen]
        new_meta["resourceVersion"] = old["metadata"].get("resourceVersion")
        new_meta["generation"] = old["metadata"].get("generation", 1)
        if new == old:
            return  # a no-op patch: no new version, no event, as a real API server does
        if _spec_part(new) != _spec_part(old):
            new_meta["generation"] = int(new_meta["generation"]) + 1
        new_meta["resourceVersion"] = self._next_rv()
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            obj.create(new)
            obj.delete()
            await self._emit(resource, "DELETED", new)
        else:
            obj.create(new)
            await self._emit(resource, "MODIFIED", new)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if (
            request.resource is not None
            and request.action in WRITE_ACTIONS
            and (request.action == enums.action.CREATE or request.name is not None)
        ):
            self.writes[str(request.resource.plural)] += 1
            try:
                if (str(request.resource.plural), request.name, request.subresource) in self.forbidden:
                    raise k8s.KubernetesError(
                        status=403,
                        reason="Forbidden",
                        message=f"{request.resource.plural} {request.name}: forbidden",
                    )
                quota = self.quota_full.get(str(request.resource.plural))
                if quota is not None and request.action == enums.action.CREATE:
                    raise _quota_exceeded(request, quota)
                async with self._lock:
                    await self._apply_write(request)
            except k8s.KubernetesError as exc:
                # recorded, so that "no writes" checks also see a write sent again and again in vain
                self.refused[len(self.history)] = exc.status
                self.history.append(request)
                return await self._render_error(exc)
        # kmock routes a request by re-filtering its whole request history for each of its reactions:
        # time proportional to every request so far, which makes long tests (an operator restarted
        # 40 times, a test polling every 50 ms) quadratic. Nothing
        # awaits between recording this request and routing it, so kmock's history keeps only this one;
        # ``history`` keeps them all for the tests.
        self.history.append(request)
        self._requests[:] = [request]
        # Skip KubernetesEmulator._handle (its state changes are done above); route to the readers.
        return await k8s.KubernetesScaffold._handle(self, request)

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        meta = (request.data or {}).get("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        for (resource, ns, _), obj in reversed(list(self._objects.items())):
            if resource == request.resource and ns == namespace and not obj.deleted:
                if obj.raw.get("metadata", {}).get("name") == meta.get("name") or (
                    not meta.get("name") and meta.get("generateName")
                ):
                    return obj.raw
        raise k8s.KubernetesObjectNotFoundError()

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        return self._objects[key].last.raw  # type: ignore[index]

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        return self._objects[key].last.raw  # type: ignore[index]

    # ---------------------------------------------------------------- reads

    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        items = []
        for (resource, namespace, name), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name is not None and name != request.name:
                continue
            if _labels_match(obj.raw, selector) and _fields_match(obj.raw, fields):
                items.append(obj.raw)
        return items

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise k8s.KubernetesResourceNotFoundError()
        async with self._lock:
            items = copy.deepcopy(self._matching(request))
            rv = str(self._rv)
        return {"metadata": {"resourceVersion": rv}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion")
        log = self._log  # append-only: a watch walks it from its own index
        wanted = resource_key(request.resource)
        async with self._lock:
            if since and since.isdigit() and since != "0":
                index = next((i for i, entry in enumerate(log) if entry[0] > int(since)), len(log))
                initial: list[dict[str, Any]] = []
            else:
                index = len(log)
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self._matching(request)]
        for event in initial:
            yield event
        while True:
            if index < len(log):
                pending, index = log[index:], len(log)
                for _, key, event in pending:
                    if key != wanted:
                        continue
                    meta = event["object"].get("metadata", {})
                    if request.namespace is not None and meta.get("namespace") != request.namespace:
                        continue
                    if request.name is not None and meta.get("name") != request.name:
                        continue
                    if _labels_match(event["object"], selector):
                        yield event
                continue
            async with self._log_changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._log_changed.wait(), timeout=1.0)


def resource_key(resource: Any) -> tuple[str, str, str]:
    """(group, version, plural): what kmock's ``resource.__eq__`` compares, as a plain tuple that
    compares in a fraction of its time (every watch compares every change in the log)."""
    return (str(resource.group), str(resource.version), str(resource.plural))


def register_resources(server: kmock.KubernetesEmulator, extra: Mapping[str, Mapping[str, Any]] = {}) -> None:
    """Declare what kopf's discovery needs plus the core and batch kinds the operator touches."""
    server.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = {
        "kind": "CustomResourceDefinition",
        "namespaced": False,
        "verbs": ["list", "watch", "get", "create", "patch", "delete"],
    }
    server.resources["v1/namespaces"] = {
        "kind": "Namespace",
        "namespaced": False,
        "verbs": ["list", "watch", "get"],
    }
    server.resources["v1/events"] = {
        "kind": "Event",
        "namespaced": True,
        "verbs": ["create", "list", "get", "patch"],
    }
    server.resources["v1/pods"] = {
        "kind": "Pod",
        "namespaced": True,
        "verbs": ["get", "list", "watch"],
        "subresources": ["status", "log"],
    }
    server.resources["v1/secrets"] = {"kind": "Secret", "namespaced": True, "verbs": ["get"]}
    server.resources["apps/v1/deployments"] = {
        "kind": "Deployment",
        "namespaced": True,
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        "subresources": ["status"],
    }
    server.resources["batch/v1/jobs"] = {
        "kind": "Job",
        "namespaced": True,
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        "subresources": ["status"],
    }
    for key, info in extra.items():
        server.resources[key] = dict(info)
