"""EpisodeCapture (short name ``ec``): turns episode capture on for an agent workload and keeps count.

The controller patches the target container's env (``ENABLE_EPISODE_CAPTURE``,
``EPISODE_COLLECTOR_URL``, ``EPISODE_AGENT_ID``, ``EPISODE_SAMPLING_RATE``; names in
``api.constants``) and removes them when capture is disabled or the object is deleted; the collector
applies ``redaction`` and ``retention``. This module holds only the spec and status shapes.
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
    """What the collector replaces in an episode before anything is written."""

    builtins: Annotated[list[RedactionBuiltin], Field(max_length=16)] = Field(
        default_factory=lambda: list(DEFAULT_REDACTION),
        description="Built-in detectors to apply; an empty list turns them off. Default: all of them.",
        json_schema_extra={"x-kubernetes-list-type": "set", "default": [str(b) for b in DEFAULT_REDACTION]},
    )
    patterns: Annotated[list[Annotated[str, Field(min_length=1, max_length=1000)]], Field(max_length=32)] = (
        Field(
            default_factory=list,
            description=(
                "Extra regular expressions (Python syntax) whose matches are replaced by [REDACTED:custom]."
            ),
        )
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{i}] is not a valid regular expression: {exc}") from None
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
        description="Values replaced before an episode is stored.",
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
