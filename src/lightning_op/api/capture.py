"""EpisodeCapture (short name ``ec``): turns episode capture on for an agent workload and keeps count.

The controller patches the target container's env (``ENABLE_EPISODE_CAPTURE``,
``EPISODE_COLLECTOR_URL``, ``EPISODE_AGENT_ID``, ``EPISODE_SAMPLING_RATE``, and ``redaction`` as
``EPISODE_REDACT_BUILTINS`` and ``EPISODE_REDACT_PATTERNS``; names in ``api.constants``) and removes
them when capture is disabled or the object is deleted. The agent's capture client
(``collector.capture``) applies ``redaction`` before an episode leaves the pod; the collector, shared
by every agent, applies its own detectors to everything it stores as a safety net. The controller's
timer applies ``retention``. This module holds only the spec and status shapes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, field_validator

from lightning_op.api.common import (
    AgentId,
    ApiModel,
    Flag,
    Fraction,
    TargetRef,
    spec_with_agent_id,
    validate_at,
)
from lightning_op.api.conditions import StatusBase

KIND = "EpisodeCapture"


class CapturePhase(enum.StrEnum):
    """Life cycle of an EpisodeCapture."""

    PENDING = "Pending"
    ACTIVE = "Active"
    DISABLED = "Disabled"
    FAILED = "Failed"


class RedactionBuiltin(enum.StrEnum):
    """Built-in detectors of ``store.redaction`` whose matches are replaced before an episode is stored."""

    BEARER = "bearer"
    API_KEY = "api_key"
    EMAIL = "email"
    CREDIT_CARD = "credit_card"
    IP = "ip"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    PHONE = "phone"


#: the default: every detector (``ip`` covers ipv4 and ipv6), as ``Redactor.default()``
DEFAULT_REDACTION = [
    RedactionBuiltin.BEARER,
    RedactionBuiltin.API_KEY,
    RedactionBuiltin.EMAIL,
    RedactionBuiltin.CREDIT_CARD,
    RedactionBuiltin.IP,
    RedactionBuiltin.PHONE,
]


class Redaction(ApiModel):
    """What the agent's capture client replaces in an episode before it leaves the pod.

    Carried to the agent in ``EPISODE_REDACT_BUILTINS`` and ``EPISODE_REDACT_PATTERNS``. The
    collector is shared by all agents and keeps its own detectors (all builtins by default) on every
    episode it stores, so this can add redaction for one agent but never remove the collector's.
    """

    builtins: Annotated[list[RedactionBuiltin], Field(max_length=16)] = Field(
        default_factory=lambda: list(DEFAULT_REDACTION),
        description=(
            "Built-in detectors the agent's capture client applies before an episode leaves the pod; an "
            "empty list turns them off there. Default: all of them. The collector still applies its own "
            "detectors (all of them, unless its --redact flags say otherwise) to every episode as a "
            "safety net, so narrowing this list does not un-redact anything in the store."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set", "default": [str(b) for b in DEFAULT_REDACTION]},
    )
    patterns: Annotated[list[Annotated[str, Field(min_length=1, max_length=1000)]], Field(max_length=32)] = (
        Field(
            default_factory=list,
            description=(
                "Extra regular expressions (Python syntax) whose matches the agent's capture client "
                "replaces by [REDACTED:custom] before an episode leaves the pod, after the builtins. "
                "A pattern must compile and must not match the empty string. Only agents that send "
                "through the capture client (lightning_op.collector.capture) apply them; the collector "
                "applies no per-agent patterns."
            ),
        )
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        # The same checks as store.redaction's Redactor, which the capture client builds from these:
        # a pattern it would refuse turns capture off in the agent, so refuse it here, naming it.
        for i, pattern in enumerate(patterns):
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{i}] is not a valid regular expression: {exc}") from None
            if compiled.fullmatch("") is not None:
                raise ValueError(
                    f"patterns[{i}] {pattern!r} matches the empty string; make it match something"
                )
        return patterns


class Retention(ApiModel):
    """How long captured episodes are kept."""

    ttl_days: Annotated[int, Field(ge=1, le=3650)] | None = Field(
        default=None, description="Delete episodes older than this many days; unset keeps them."
    )


class EpisodeCaptureSpec(ApiModel):
    """Which workload to capture from, how much, and what to redact."""

    agent_id: AgentId | None = Field(
        default=None, description="Agent id recorded on every episode; defaults to metadata.name."
    )
    target_ref: TargetRef = Field(description="The Deployment (and container) that runs the agent.")
    enabled: Flag = Field(default=True, description="Capture on (true) or off (false, the env is removed).")
    sampling_rate: Fraction = Field(
        default=1.0, description="Fraction of interactions recorded, from 0 to 1."
    )
    redaction: Redaction = Field(
        default_factory=Redaction,
        description=(
            "Values the agent's capture client replaces before an episode leaves the pod (set on the "
            "agent as EPISODE_REDACT_BUILTINS and EPISODE_REDACT_PATTERNS)."
        ),
        json_schema_extra={"default": {}},
    )
    retention: Retention = Field(
        default_factory=Retention,
        description="How long episodes are kept.",
        json_schema_extra={"default": {}},
    )
    collector_url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")] | None = Field(
        default=None,
        description="Collector the agent sends episodes to; defaults to the operator's collector Service.",
    )


class EpisodeCaptureStatus(StatusBase):
    """What the operator observed: phase, episodes captured so far and when the last one came in."""

    phase: CapturePhase | None = Field(default=None, description="Pending, Active, Disabled or Failed.")
    episodes_captured: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Episodes stored for this agent."
    )
    last_episode_time: datetime | None = Field(default=None, description="Timestamp of the newest episode.")
    container: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="The container whose env the operator patched."
    )


def parse_spec(body: Mapping[str, Any]) -> EpisodeCaptureSpec:
    """The spec of an EpisodeCapture object body; raises ``SpecError`` naming the field."""
    return validate_at(EpisodeCaptureSpec, spec_with_agent_id(body))


def parse_status(body: Mapping[str, Any]) -> EpisodeCaptureStatus:
    """The status of an EpisodeCapture object body (empty when it has none yet)."""
    return validate_at(EpisodeCaptureStatus, body.get("status") or {}, root="status")
