"""EpisodeCapture's logic, as plain functions: the env the agent container gets, and the figures and
retention kept in step with the store.

``capture_env`` says which env vars the target container should have (the capture variables, or their
removal when capture is off); ``manifests.workload_env.env_patch`` turns that into a JSON patch. They
include ``spec.redaction`` (``EPISODE_REDACT_BUILTINS``, ``EPISODE_REDACT_PATTERNS``), which the
agent's capture client applies before an episode leaves the pod: the collector is shared by every
agent and cannot read EpisodeCaptures, so the agent is where per-agent redaction can happen.
``store_figures`` reads ``episodesCaptured`` and ``lastEpisodeTime`` from the store (one aggregate
query) and ``purge_expired`` applies ``retention.ttlDays``. The EpisodeCapture controller calls these;
nothing here talks to Kubernetes. Talks to ``api`` and ``store``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lightning_op.api import capture, constants
from lightning_op.store import base as store_base

#: the variables EpisodeCapture owns on the target container (and removes, nothing else)
CAPTURE_ENV_NAMES = (
    constants.ENV_ENABLE_CAPTURE,
    constants.ENV_COLLECTOR_URL,
    constants.ENV_AGENT_ID,
    constants.ENV_SAMPLING_RATE,
    constants.ENV_REDACT_BUILTINS,
    constants.ENV_REDACT_PATTERNS,
)


@dataclass(frozen=True)
class Target:
    """The workload container an EpisodeCapture patches."""

    name: str
    container: str | None


def capture_env(spec: capture.EpisodeCaptureSpec, default_collector_url: str) -> dict[str, str | None]:
    """The capture variables the container should have: set when enabled, all None (removed) when not."""
    if not spec.enabled:
        return dict.fromkeys(CAPTURE_ENV_NAMES)
    return {
        constants.ENV_ENABLE_CAPTURE: "true",
        constants.ENV_COLLECTOR_URL: spec.collector_url or default_collector_url,
        constants.ENV_AGENT_ID: str(spec.agent_id),
        # repr: every digit ("g" made 0.9999999 into "1", capturing everything)
        constants.ENV_SAMPLING_RATE: repr(float(spec.sampling_rate)),
        **redaction_env(spec.redaction),
    }


def redaction_env(redaction: capture.Redaction) -> dict[str, str]:
    """``spec.redaction`` as the capture client reads it: builtins comma-separated (empty: none),
    patterns as a JSON array (a regex may contain commas). Both always set, so what the agent
    applies is visible on the Deployment."""
    return {
        constants.ENV_REDACT_BUILTINS: ",".join(str(b) for b in redaction.builtins),
        constants.ENV_REDACT_PATTERNS: json.dumps(
            redaction.patterns, ensure_ascii=False, separators=(",", ":")
        ),
    }


def removal_env() -> dict[str, str | None]:
    """Every capture variable removed (disable, delete, or a target the object no longer names)."""
    return dict.fromkeys(CAPTURE_ENV_NAMES)


def raw_target(spec: Mapping[str, Any] | None) -> Target | None:
    """The target a raw ``spec`` names, read without validating the rest (so a delete or a retarget
    cleans up even when the spec became invalid); None when it names none."""
    ref = spec.get("targetRef") if isinstance(spec, Mapping) else None
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) or not ref.get("name"):
        return None
    container = ref.get("container")
    return Target(ref["name"], container if isinstance(container, str) and container else None)


def target_of(spec: capture.EpisodeCaptureSpec) -> Target:
    return Target(spec.target_ref.name, spec.target_ref.container)


def abandoned_target(old_spec: Mapping[str, Any] | None, spec: capture.EpisodeCaptureSpec) -> Target | None:
    """The previous spec's target when an update moved capture elsewhere, else None."""
    before = raw_target(old_spec)
    if before is None or before == target_of(spec):
        return None
    return before


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def store_figures(store: store_base.EpisodeStore, agent_id: str) -> dict[str, Any]:
    """``status.episodesCaptured`` and ``status.lastEpisodeTime`` of the agent, from the store."""
    stats = store.reward_stats(agent_id=agent_id)
    return {"episodesCaptured": stats.count, "lastEpisodeTime": _rfc3339(stats.last_timestamp)}


def purge_expired(
    store: store_base.EpisodeStore, spec: capture.EpisodeCaptureSpec, now: datetime | None = None
) -> int:
    """Delete the agent's episodes older than ``retention.ttlDays`` (nothing when unset); how many."""
    if spec.retention.ttl_days is None:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=spec.retention.ttl_days)
    return store.purge_older_than(cutoff, agent_id=spec.agent_id)
