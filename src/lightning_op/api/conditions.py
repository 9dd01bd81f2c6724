"""Status conditions in the Kubernetes shape, their types and reasons, and the status base every kind shares.

A condition is ``type``, ``status`` (True/False/Unknown), ``reason`` (CamelCase, for machines),
``message`` (for people), ``lastTransitionTime`` and ``observedGeneration``, exactly as
``metav1.Condition``. Controllers build them with the constants below and merge them with
``set_condition``, which moves ``lastTransitionTime`` only when the status flips, so reconciling an
unchanged object writes an identical status (and the controller can skip the patch).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field, field_validator

from lightning_op.api.common import ApiModel, StatusModel

#: most conditions a status keeps; the list is a map keyed by ``type``
MAX_CONDITIONS = 32
# metav1.Condition's own patterns
_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)


class ConditionStatus(enum.StrEnum):
    """Whether the condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(enum.StrEnum):
    """Condition types the controllers set. Positive polarity: ``True`` is the good state, except
    ``Failed`` and ``RolledBack`` which record a terminal problem."""

    #: the object reached its goal: capture active, labeling done, model trained, model promoted
    READY = "Ready"
    #: work is under way (labeling, training, verifying)
    PROGRESSING = "Progressing"
    #: a terminal failure; the reason says which (``InvalidSpec`` names the field in the message)
    FAILED = "Failed"
    #: EpisodeCapture: the capture env is set on the target container
    CAPTURE_ENABLED = "CaptureEnabled"
    #: RewardLabeling: the sample test ran and the grader returned scores
    SAMPLE_TESTED = "SampleTested"
    #: FineTuneJob and ModelPromotion: the gate (labeling verdict, evaluation result) is open
    GATE_PASSED = "GatePassed"
    #: FineTuneJob: the dataset snapshot is built (its sha256 is in status)
    DATASET_READY = "DatasetReady"
    #: FineTuneJob: the last round's evaluation reached the threshold
    EVALUATION_PASSED = "EvaluationPassed"
    #: FineTuneJob: ``spec.suspend`` is true and no trainer runs
    SUSPENDED = "Suspended"
    #: ModelPromotion: the target Deployment rolled out the new env
    ROLLED_OUT = "RolledOut"
    #: ModelPromotion: live traffic in the verification window did not regress
    VERIFIED = "Verified"
    #: ModelPromotion: the previous env was restored
    ROLLED_BACK = "RolledBack"


class Reason(enum.StrEnum):
    """Machine-readable reasons (CamelCase) used in conditions and Events."""

    # every kind
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    STORE_UNAVAILABLE = "StoreUnavailable"
    #: an unexpected error stops the reconcile (no model volume, a full disk); retried
    RECONCILE_ERROR = "ReconcileError"
    # EpisodeCapture and ModelPromotion targets
    TARGET_NOT_FOUND = "TargetNotFound"
    CONTAINER_NOT_FOUND = "ContainerNotFound"
    CAPTURE_ENABLED = "CaptureEnabled"
    CAPTURE_DISABLED = "CaptureDisabled"
    # RewardLabeling
    SAMPLE_TEST_PASSED = "SampleTestPassed"
    SAMPLE_TEST_FAILED = "SampleTestFailed"
    LABELING = "Labeling"
    LABELING_COMPLETED = "LabelingCompleted"
    NO_EPISODES = "NoEpisodes"
    VERDICT_GO = "VerdictGo"
    VERDICT_WARNING = "VerdictWarning"
    VERDICT_NO_GO = "VerdictNoGo"
    # gates (FineTuneJob on a RewardLabeling, ModelPromotion on a FineTuneJob)
    GATE_WAITING = "GateWaiting"
    GATE_NOT_FOUND = "GateNotFound"
    GATE_PASSED = "GatePassed"
    GATE_FAILED = "GateFailed"
    # FineTuneJob
    NOT_ENOUGH_EPISODES = "NotEnoughEpisodes"
    DATASET_BUILT = "DatasetBuilt"
    TRAINING = "Training"
    TRAINING_FAILED = "TrainingFailed"
    QUOTA_EXCEEDED = "QuotaExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    EVALUATING = "Evaluating"
    EVALUATION_PASSED = "EvaluationPassed"
    EVALUATION_BELOW_THRESHOLD = "EvaluationBelowThreshold"
    MAX_ROUNDS_REACHED = "MaxRoundsReached"
    SUSPENDED = "Suspended"
    BACKEND_NOT_IMPLEMENTED = "BackendNotImplemented"
    SUCCEEDED = "Succeeded"
    # ModelPromotion
    MODEL_NOT_READY = "ModelNotReady"
    PROMOTING = "Promoting"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_FAILED = "RolloutFailed"
    VERIFYING = "Verifying"
    VERIFIED = "Verified"
    NOT_ENOUGH_TRAFFIC = "NotEnoughTraffic"
    REGRESSION = "Regression"
    ROLLED_BACK = "RolledBack"


def _now() -> datetime:
    # Kubernetes times have second precision; sub-second noise would make every status look changed.
    return datetime.now(UTC).replace(microsecond=0)


class Condition(ApiModel):
    """One aspect of the object's state, as ``metav1.Condition``."""

    type: Annotated[str, Field(min_length=1, max_length=316, pattern=_TYPE_PATTERN)] = Field(
        description="Condition type, CamelCase (Ready, Progressing, Failed, ...)."
    )
    status: ConditionStatus = Field(description="Whether the condition holds: True, False or Unknown.")
    reason: Annotated[
        str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    ] = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="Human-readable details; names the field when the spec is invalid."
    )
    last_transition_time: datetime = Field(
        default_factory=_now, description="When the status last changed (RFC 3339)."
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the condition was computed from."
    )

    @field_validator("last_transition_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).replace(microsecond=0)


class StatusBase(StatusModel):
    """Fields every kind's status has: ``phase``, ``observedGeneration`` and ``conditions``.
    Each kind narrows ``phase`` to its own enum."""

    phase: str | None = Field(default=None, description="Where the object is in its life cycle.")
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the status was computed from."
    )
    conditions: Annotated[list[Condition], Field(max_length=MAX_CONDITIONS)] = Field(
        default_factory=list,
        description="Latest observations of the object's state, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def _coerce(condition: Condition | Mapping[str, Any]) -> Condition:
    return condition if isinstance(condition, Condition) else Condition.model_validate(condition)


def set_condition(
    conditions: Iterable[Condition | Mapping[str, Any]], new: Condition | Mapping[str, Any]
) -> list[Condition]:
    """Return ``conditions`` with ``new`` merged in (a new list; the input is not changed).

    A condition of the same type is replaced in place; ``lastTransitionTime`` keeps its old value
    unless ``status`` changed, so re-setting the same state is a no-op. Other types keep their order;
    a new type is appended. Plain dicts (a status as kopf hands it) are accepted.
    """
    incoming = _coerce(new)
    result: list[Condition] = []
    found = False
    for item in conditions:
        current = _coerce(item)
        if current.type != incoming.type:
            result.append(current)
            continue
        if found:  # duplicates of one type (hand-edited status): keep the first only
            continue
        found = True
        if current.status == incoming.status:
            incoming = incoming.model_copy(update={"last_transition_time": current.last_transition_time})
        result.append(incoming)
    if not found:
        result.append(incoming)
    return result


def get_condition(conditions: Iterable[Condition | Mapping[str, Any]], type_: str) -> Condition | None:
    """The condition of ``type_``, or None."""
    for item in conditions:
        condition = _coerce(item)
        if condition.type == type_:
            return condition
    return None


def is_condition_true(conditions: Iterable[Condition | Mapping[str, Any]], type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == ConditionStatus.TRUE


def conditions_to_json(conditions: Iterable[Condition]) -> list[dict[str, Any]]:
    """The JSON form of a condition list, ready for ``patch.status['conditions']``."""
    return [c.to_json_dict() for c in conditions]
