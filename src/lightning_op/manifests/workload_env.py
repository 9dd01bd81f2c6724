"""JSON patches that set or remove env vars on one container of a Deployment, touching nothing else.

EpisodeCapture sets the capture variables, ModelPromotion sets ``USE_TUNED_MODEL`` and
``TUNED_MODEL_NAME`` and later restores exactly what was there. Both go through here.

Why JSON patch: a merge patch replaces the whole ``env`` list (losing the workload's other
variables), and a strategic merge patch is not available everywhere (kmock lacks it). A patch
begins with a ``test`` of the ``metadata.resourceVersion`` it was built from (as kopf's own
patches do): any write in between makes the API server refuse it (422) and the caller re-reads and
retries. Without it, an ``add .../env`` built for a container that had no env list would replace
one another writer just added, and an ``add .../env/-`` could append a second entry of a name added
meanwhile. Every op that edits an existing entry is also preceded by a ``test`` of that entry's
name (and of the container's name), which still guards a body read without a resourceVersion.

Pure functions over dicts; ``k8s.py`` sends the patch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONTAINERS = "/spec/template/spec/containers"


class ContainerNotFoundError(ValueError):
    """The named container is not in the workload's pod template."""


@dataclass(frozen=True)
class EnvSnapshot:
    """What a set of env vars looked like before we changed them: entry per name, or None if absent."""

    entries: dict[str, dict[str, Any] | None]

    def to_json(self) -> dict[str, Any]:
        return {name: entry for name, entry in sorted(self.entries.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnvSnapshot:
        return cls({str(k): (dict(v) if v is not None else None) for k, v in data.items()})


def find_container(workload: Mapping[str, Any], container: str | None) -> tuple[int, dict[str, Any]]:
    """The index and body of the named container (the first one when ``container`` is empty)."""
    containers = workload.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    if not containers:
        raise ContainerNotFoundError("the workload's pod template has no containers")
    if not container:
        return 0, containers[0]
    for index, body in enumerate(containers):
        if body.get("name") == container:
            return index, body
    names = ", ".join(str(c.get("name")) for c in containers)
    raise ContainerNotFoundError(f"container {container!r} not found (the pod template has: {names})")


def snapshot_env(workload: Mapping[str, Any], container: str | None, names: list[str]) -> EnvSnapshot:
    """Record the current entries of ``names`` (absent ones as None), for an exact rollback later."""
    _, body = find_container(workload, container)
    current = {e.get("name"): e for e in body.get("env") or []}
    return EnvSnapshot({name: copy.deepcopy(current.get(name)) for name in names})


def env_patch(
    workload: Mapping[str, Any], container: str | None, desired: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    """JSON-patch ops that make ``desired`` true: a string sets the var, None removes it.

    Returns ``[]`` when nothing needs to change, so an unchanged object causes no write.
    """
    entries: dict[str, dict[str, Any] | None] = {
        # an empty value as the API server stores it (it omits an empty ``value``)
        name: (None if value is None else {"name": name, "value": value} if value else {"name": name})
        for name, value in desired.items()
    }
    return restore_patch(workload, container, EnvSnapshot(entries))


def _stored(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An env entry as the API server keeps it: an empty ``value`` is left out (``omitempty``)."""
    return {k: v for k, v in entry.items() if not (k == "value" and v == "")}


def restore_patch(
    workload: Mapping[str, Any], container: str | None, snapshot: EnvSnapshot
) -> list[dict[str, Any]]:
    """JSON-patch ops that make the named env entries equal to the snapshot (absent ones removed)."""
    index, body = find_container(workload, container)
    base = f"{CONTAINERS}/{index}"
    env: list[dict[str, Any]] = list(body.get("env") or [])
    ops: list[dict[str, Any]] = [{"op": "test", "path": f"{base}/name", "value": body.get("name")}]
    changes: list[dict[str, Any]] = []
    removals: list[int] = []
    if "env" not in body:
        if not any(entry is not None for entry in snapshot.entries.values()):
            return []
        changes.append({"op": "add", "path": f"{base}/env", "value": []})
    positions = {e.get("name"): i for i, e in enumerate(env)}
    for name, entry in snapshot.entries.items():
        position = positions.get(name)
        if position is None:
            if entry is not None:
                changes.append({"op": "add", "path": f"{base}/env/-", "value": copy.deepcopy(entry)})
        elif entry is None:
            removals.append(position)
        elif _stored(env[position]) != _stored(entry):
            changes.append({"op": "test", "path": f"{base}/env/{position}/name", "value": name})
            changes.append({"op": "replace", "path": f"{base}/env/{position}", "value": copy.deepcopy(entry)})
    # Remove from the highest index down so earlier removals do not shift later ones.
    for position in sorted(removals, reverse=True):
        changes.append({"op": "test", "path": f"{base}/env/{position}/name", "value": env[position]["name"]})
        changes.append({"op": "remove", "path": f"{base}/env/{position}"})
    if not changes:
        return []
    version = workload.get("metadata", {}).get("resourceVersion")
    if version:
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
    return ops + changes
