"""ModelPromotion (short name ``mp``): puts a fine-tuned model in front of users, checks it on live
traffic, and rolls back if it got worse.

The controller checks the gate against the FineTuneJob's result, records the target container's
previous model env, sets the two env vars named in ``spec.env`` with a JSON patch, waits for the
rollout, compares live episodes by model version during the verification window, and restores the
previous env exactly on a failed rollout or a regression. This module holds only the spec and
status shapes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from lightning_op.api import constants
from lightning_op.api.common import (
    ENV_NAME_PATTERN,
    AgentId,
    ApiModel,
    FieldValueError,
    Flag,
    Fraction,
    ObjectRef,
    StatusModel,
    TargetRef,
    cel_rule,
    cel_rules,
    spec_with_agent_id,
    validate_at,
)
from lightning_op.api.conditions import StatusBase

KIND = "ModelPromotion"

EnvName = Annotated[str, Field(min_length=1, max_length=253, pattern=ENV_NAME_PATTERN)]


class PromotionPhase(enum.StrEnum):
    """Life cycle of a ModelPromotion."""

    PENDING = "Pending"
    GATED = "Gated"
    PROMOTING = "Promoting"
    VERIFYING = "Verifying"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class ModelSource(ApiModel):
    """The model to promote: the result of a FineTuneJob, or a model name. Exactly one."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "has(self.fineTuneJobRef) != has(self.name)",
                "exactly one of model.fineTuneJobRef or model.name must be set",
            )
        )
    )

    fine_tune_job_ref: ObjectRef | None = Field(
        default=None, description="A FineTuneJob in the same namespace; its fineTunedModel is promoted."
    )
    name: Annotated[str, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="A model name to promote directly (no gate on a FineTuneJob result)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.fine_tune_job_ref is None) == (self.name is None):
            raise ValueError("exactly one of model.fineTuneJobRef or model.name must be set")
        return self


class EnvNames(ApiModel):
    """Names of the env vars the agent reads to pick its model."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "self.useTunedModel != self.modelName",
                "useTunedModel and modelName must name different variables",
                field_path=".modelName",
            )
        )
    )

    use_tuned_model: EnvName = Field(
        default=constants.ENV_USE_TUNED_MODEL, description='Env var set to "true" to use the tuned model.'
    )
    model_name: EnvName = Field(
        default=constants.ENV_TUNED_MODEL_NAME, description="Env var set to the tuned model's name."
    )

    @model_validator(mode="after")
    def _distinct(self) -> EnvNames:
        if self.use_tuned_model == self.model_name:
            raise FieldValueError("modelName", "useTunedModel and modelName must name different variables")
        return self


class PromotionGate(ApiModel):
    """What the FineTuneJob's evaluation must show before the model is promoted."""

    min_improvement: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] = Field(
        default=0.0, description="Tuned score minus baseline score must be at least this."
    )
    max_regression: Fraction | None = Field(
        default=None,
        description=(
            "Most evaluation examples, as a fraction, that may score below the baseline; unset: no limit."
        ),
    )


class Verification(ApiModel):
    """How live traffic is compared after the rollout (episodes split by model version)."""

    window_seconds: Annotated[int, Field(ge=0, le=7 * 86400)] = Field(
        default=900, description="How long to watch live traffic after the rollout; 0 skips verification."
    )
    min_episodes: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=20, description="Live episodes on the new model needed before judging."
    )
    max_reward_drop: Fraction = Field(
        default=0.05, description="Roll back if the mean reward falls by more than this."
    )
    max_error_rate_increase: Fraction = Field(
        default=0.05, description="Roll back if the error rate rises by more than this."
    )


class Rollback(ApiModel):
    """What happens when the rollout fails or verification finds a regression."""

    automatic: Flag = Field(default=True, description="Restore the previous env automatically.")


class ModelPromotionSpec(ApiModel):
    """Which workload gets which model, the gate, and how the result is verified."""

    agent_id: AgentId | None = Field(
        default=None, description="Agent whose live episodes are compared; defaults to metadata.name."
    )
    target_ref: TargetRef = Field(description="The Deployment (and container) that runs the agent.")
    model: ModelSource = Field(description="The model to promote: fineTuneJobRef or name, exactly one.")
    env: EnvNames = Field(
        default_factory=EnvNames,
        description="Names of the env vars to set on the target container.",
        json_schema_extra={"default": {}},
    )
    gate: PromotionGate = Field(
        default_factory=PromotionGate,
        description="Conditions on the FineTuneJob's evaluation result.",
        json_schema_extra={"default": {}},
    )
    verification: Verification = Field(
        default_factory=Verification,
        description="Live-traffic verification after the rollout.",
        json_schema_extra={"default": {}},
    )
    rollback: Rollback = Field(
        default_factory=Rollback,
        description="Rollback on failure or regression.",
        json_schema_extra={"default": {}},
    )


class PreviousEnvVar(StatusModel):
    """One env var of the target container as it was before the promotion, to restore it exactly.

    A list of these (with ``present``) rather than a map of name to entry-or-null: status is written
    with merge patches, where a null value deletes the key, and "was absent" must survive."""

    name: EnvName = Field(description="Env var name.")
    present: bool = Field(description="Whether the container had the variable at all.")
    value: Annotated[str, Field(max_length=32768)] | None = Field(
        default=None, description="Its value, if plain."
    )
    value_from: dict[str, Any] | None = Field(
        default=None, description="Its valueFrom, if it had one (kept as the Deployment had it)."
    )

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, Any] | None) -> PreviousEnvVar:
        """From a container env entry (with ``value`` or ``valueFrom``), or None when it was absent."""
        if entry is None:
            return cls(name=name, present=False)
        return cls(name=name, present=True, value=entry.get("value"), value_from=entry.get("valueFrom"))

    def to_entry(self) -> dict[str, Any] | None:
        """The container env entry to restore, or None when the variable was absent."""
        if not self.present:
            return None
        entry: dict[str, Any] = {"name": self.name}
        if self.value is not None:
            entry["value"] = self.value
        if self.value_from is not None:
            entry["valueFrom"] = self.value_from
        return entry


def previous_env_from_snapshot(entries: Mapping[str, Mapping[str, Any] | None]) -> list[PreviousEnvVar]:
    """``status.previousEnv`` from a snapshot ``{name: env entry or None}`` (``manifests.workload_env``)."""
    return [PreviousEnvVar.from_entry(name, entry) for name, entry in sorted(entries.items())]


def snapshot_from_previous_env(items: Iterable[PreviousEnvVar]) -> dict[str, dict[str, Any] | None]:
    """The snapshot ``{name: env entry or None}`` that ``status.previousEnv`` recorded."""
    return {item.name: item.to_entry() for item in items}


class RolloutStatus(StatusModel):
    """The target Deployment's rollout, as observed."""

    generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The Deployment's metadata.generation after the env patch."
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The Deployment's status.observedGeneration."
    )
    replicas: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Desired replicas.")
    updated_replicas: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Replicas updated."
    )
    available_replicas: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Replicas available."
    )
    complete: bool | None = Field(default=None, description="Whether the rollout finished.")
    message: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="Why the rollout is stuck or failed, if it is."
    )


class VersionStats(StatusModel):
    """Live-traffic figures of one model version."""

    model: Annotated[str, Field(max_length=1024)] | None = Field(default=None, description="Model version.")
    avg_reward: Fraction | None = Field(default=None, description="Mean reward of labeled episodes.")
    error_rate: Fraction | None = Field(default=None, description="Fraction of episodes with an error.")
    episodes: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Episodes counted.")


class Comparison(StatusModel):
    """Live traffic before and after the promotion."""

    before: VersionStats | None = Field(default=None, description="The previous model.")
    after: VersionStats | None = Field(default=None, description="The promoted model.")


class ModelPromotionStatus(StatusBase):
    """Previous and promoted model, rollout state and the before/after comparison."""

    phase: PromotionPhase | None = Field(
        default=None, description="Pending, Gated, Promoting, Verifying, Promoted, RolledBack or Failed."
    )
    previous_model: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="The model the workload used before."
    )
    previous_env: Annotated[list[PreviousEnvVar], Field(max_length=8)] = Field(
        default_factory=list, description="The model env vars before the promotion, restored on rollback."
    )
    promoted_model: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="The model now in front of users."
    )
    rollout: RolloutStatus | None = Field(default=None, description="Observed Deployment rollout state.")
    comparison: Comparison | None = Field(default=None, description="Live traffic before and after.")
    promotion_time: datetime | None = Field(default=None, description="When the env was patched.")
    verification_deadline: datetime | None = Field(
        default=None, description="When the verification window ends."
    )


def parse_spec(body: Mapping[str, Any]) -> ModelPromotionSpec:
    """The spec of a ModelPromotion object body; raises ``SpecError`` naming the field."""
    return validate_at(ModelPromotionSpec, spec_with_agent_id(body))


def parse_status(body: Mapping[str, Any]) -> ModelPromotionStatus:
    """The status of a ModelPromotion object body (empty when it has none yet)."""
    return validate_at(ModelPromotionStatus, body.get("status") or {}, root="status")
