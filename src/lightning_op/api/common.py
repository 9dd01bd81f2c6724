"""Building blocks shared by the four custom resources: the camelCase base model, references to other
objects and Secrets, the workload target, the embedded grader, CEL rule helpers and ``SpecError``.

The kind modules (``capture``, ``labeling``, ``finetune``, ``promotion``) build their spec and status
models from these; ``manifests.crds`` turns those models into CustomResourceDefinitions, so every
``description`` here becomes ``kubectl explain`` text and every ``x-kubernetes-validations`` entry a
CEL rule the API server enforces. The same rules are mirrored as pydantic validators, so the operator
rejects a bad spec with the same field path even where no CEL runs (the emulator, the CLI).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

#: a Kubernetes object name (DNS-1123 subdomain)
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: a container name (DNS-1123 label)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: an agent id, as the Episode model accepts it
AGENT_ID_PATTERN = r"^[A-Za-z0-9._\-]+$"
#: a Kubernetes resource quantity (``16Gi``, ``500m``, ``2``)
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: a container environment variable name, as Kubernetes validates it
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)]
AgentId = Annotated[str, Field(min_length=1, max_length=253, pattern=AGENT_ID_PATTERN)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Quantity = Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)]
#: a spec boolean: ``"yes"`` or ``"true"`` strings are refused, as the API server refuses them
Flag = Annotated[bool, Field(strict=True)]


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


#: a time in a spec; one without an offset (``2026-01-01T00:00:00``, as a CLI user may type it) is
#: UTC, as episode timestamps are, so it compares with them (the CRD's ``date-time`` needs an offset)
SpecTime = Annotated[datetime, AfterValidator(_as_utc)]

M = TypeVar("M", bound=BaseModel)


def cel_rule(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry: a CEL ``rule`` and the ``message`` shown when it fails.

    ``field_path`` (``.modelVolume``) points the error at a child field; ``reason`` is one of the API
    server's (``FieldValueInvalid``, ``FieldValueRequired``, ``FieldValueForbidden``, ...).
    """
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules for a model or a field."""
    return {"x-kubernetes-validations": list(rules)}


def immutable(field: str) -> dict[str, Any]:
    """``json_schema_extra`` with the transition rule that fixes a field once the object exists."""
    return cel_rules(cel_rule("self == oldSelf", f"{field} is immutable", reason="FieldValueForbidden"))


class ApiModel(BaseModel):
    """Base of every CRD spec/status model: camelCase JSON, snake_case Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    def to_json_dict(self) -> dict[str, Any]:
        """The object's JSON form (camelCase keys, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(ApiModel):
    """Base of status models: tolerant of fields a newer or older operator wrote."""

    model_config = ConfigDict(extra="ignore")


class ObjectRef(ApiModel):
    """A reference to another object of this project in the same namespace."""

    name: K8sName = Field(description="Name of the object, in the same namespace.")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace; the value is read when needed, never copied into status."""

    name: K8sName = Field(description="Name of the Secret, in the same namespace as this object.")
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = Field(
        description="Key inside the Secret's data."
    )


class WorkloadKind(enum.StrEnum):
    """Kinds of workload the operator can patch."""

    DEPLOYMENT = "Deployment"


class TargetRef(ApiModel):
    """The agent workload: a Deployment in the same namespace and the container that runs the agent."""

    kind: WorkloadKind = Field(
        default=WorkloadKind.DEPLOYMENT, description="Kind of the workload; only Deployment is supported."
    )
    name: K8sName = Field(description="Name of the Deployment, in the same namespace.")
    container: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)] | None = Field(
        default=None,
        description="Container that runs the agent; defaults to the Deployment's first container.",
    )


class GraderType(enum.StrEnum):
    """The grader types the graders module implements (see graders.spec)."""

    STRING_CHECK = "string_check"
    TEXT_SIMILARITY = "text_similarity"
    TOOL_CALL = "tool_call"
    JSON_SCHEMA = "json_schema"
    SCORE_MODEL = "score_model"
    LABEL_MODEL = "label_model"
    PYTHON = "python"
    MULTI = "multi"


_GRADER_TYPE_OR_PRESET = cel_rule(
    "has(self.type) || has(self.preset)",
    "a grader needs a type (or a preset)",
    field_path=".type",
    reason="FieldValueRequired",
)
_GRADER_RANGE_RULE = cel_rule(
    "!has(self.range) || self.range[0] < self.range[1]",
    "range must be [min, max] with min < max",
    field_path=".range",
)


class EmbeddedGrader(ApiModel):
    """A grader spec, embedded as the graders module reads it: ``type`` picks the grader (or
    ``preset`` names a ready one, other keys overriding its fields), the other keys are that
    grader's settings, snake_case as in OpenAI's grader JSON. The API server checks only ``type``,
    ``preset``, ``name`` and ``range``; the operator validates the rest when it reconciles and reports
    a Failed condition that names the field. API keys are never inlined: judges name the env var
    that holds theirs."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra=cel_rules(_GRADER_TYPE_OR_PRESET, _GRADER_RANGE_RULE)
    )

    type: GraderType | None = Field(default=None, description="Grader type; may be left out with a preset.")
    preset: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")] | None = Field(
        default=None, description="A ready-made grader (tool_selection, exact_match, task_adherence)."
    )
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="Name recorded on every label this grader writes."
    )
    range: (
        Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=2, max_length=2)]
        | None
    ) = Field(default=None, description="score_model: the [min, max] range of the judge's raw score.")

    @model_validator(mode="after")
    def _checked_fields(self) -> EmbeddedGrader:
        if self.type is None and self.preset is None:
            raise FieldValueError("type", "a grader needs a type (or a preset)")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise FieldValueError("range", "range must be [min, max] with min < max")
        return self

    def to_spec_dict(self) -> dict[str, Any]:
        """The full grader spec (declared and grader-specific keys) for ``graders.spec`` to validate."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- errors ----------------------------------------------------------------------------------------


class FieldValueError(ValueError):
    """Raised by a model validator about one of the model's fields, so the error path names that field
    (``spec.modelVolume``) as the matching CEL rule's ``fieldPath`` does, not only the model."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: its path in the object (``spec.dataset.minReward``) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A custom resource's spec is invalid. ``str()`` names every bad field:
    ``spec.dataset.minReward: must be <= 1``; ``problems`` lists them, ``path`` is the first."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.problems = list(problems) or [FieldProblem("spec", "invalid")]
        super().__init__("; ".join(str(p) for p in self.problems))

    @property
    def path(self) -> str:
        return self.problems[0].path

    @property
    def message(self) -> str:
        return self.problems[0].message

    @classmethod
    def from_validation(cls, exc: ValidationError, root: str = "spec") -> SpecError:
        problems = []
        for err in exc.errors():
            loc: tuple[int | str, ...] = tuple(err["loc"])
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, FieldValueError):
                loc = (*loc, cause.field)
            problems.append(FieldProblem(_format_path(root, loc), _format_message(err)))
        return cls(problems)


def _format_path(root: str, loc: Sequence[int | str]) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "(object)"


def _num(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _format_message(err: ErrorDetails) -> str:
    """Short, Kubernetes-like messages (``must be <= 1``) instead of pydantic's sentences."""
    kind = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    simple = {
        "missing": "Required value",
        "extra_forbidden": "unknown field",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be a boolean",
        "bool_parsing": "must be a boolean",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "datetime_type": "must be a date-time (RFC 3339)",
        "datetime_parsing": "must be a date-time (RFC 3339)",
        "datetime_from_date_parsing": "must be a date-time (RFC 3339)",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "less_than_equal": ("<=", "le"),
        "greater_than_equal": (">=", "ge"),
        "less_than": ("<", "lt"),
        "greater_than": (">", "gt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {_num(ctx.get(key))}"
    if kind in ("enum", "literal_error"):
        return f"Unsupported value {err.get('input')!r}: must be one of {ctx.get('expected')}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


def validate_at(model: type[M], data: Any, root: str = "spec") -> M:
    """Validate ``data`` as ``model``; on failure raise ``SpecError`` with paths under ``root``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError.from_validation(exc, root) from None


def object_name(body: Mapping[str, Any]) -> str:
    """``metadata.name`` of an object body, or '' when it has none."""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def spec_with_agent_id(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body's ``spec`` as a dict, with ``agentId`` defaulted to ``metadata.name`` as DESIGN.md says."""
    spec = body.get("spec")
    if spec is None:
        raise SpecError([FieldProblem("spec", "Required value")])
    if not isinstance(spec, Mapping):
        raise SpecError([FieldProblem("spec", "must be an object")])
    data = dict(spec)
    if not data.get("agentId") and not data.get("agent_id") and object_name(body):
        data["agentId"] = object_name(body)
    return data
