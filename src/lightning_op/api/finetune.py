"""FineTuneJob (short name ``ftj``): builds a dataset from labeled episodes and trains on it, round
after round, until the evaluation passes.

The controller waits for the gate (a RewardLabeling's verdict), snapshots the dataset onto the model
volume (sha256 in status), then runs one trainer round after another with the learning rate decayed
by ``evaluation.lrDecay`` until the score reaches ``evaluation.threshold`` or ``maxRounds`` is spent.
``backend`` and ``baseModel`` are fixed at creation (a CEL transition rule). Hyperparameter defaults
and ranges match ``training.config.Hyperparameters``. This module holds only the spec and status shapes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from lightning_op.api.common import (
    AgentId,
    ApiModel,
    EmbeddedGrader,
    FieldValueError,
    Flag,
    Fraction,
    GraderType,
    K8sName,
    ObjectRef,
    Quantity,
    SecretKeyRef,
    SpecTime,
    StatusModel,
    cel_rule,
    cel_rules,
    immutable,
    spec_with_agent_id,
    validate_at,
)
from lightning_op.api.conditions import StatusBase

KIND = "FineTuneJob"
MAX_ROUNDS = 20


class FineTunePhase(enum.StrEnum):
    """Life cycle of a FineTuneJob."""

    PENDING = "Pending"
    WAITING_FOR_GATE = "WaitingForGate"
    BUILDING_DATASET = "BuildingDataset"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Backend(enum.StrEnum):
    """Where training runs."""

    LOCAL = "local"
    AZURE_OPENAI = "azureOpenAI"


class Method(enum.StrEnum):
    """Training method."""

    SFT = "sft"


class DatasetSpec(ApiModel):
    """Which labeled episodes become training rows."""

    min_reward: Fraction = Field(default=0.7, description="Only episodes with reward >= this are used.")
    min_episodes: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=10, description="Fail (and say so) when fewer episodes qualify."
    )
    max_episodes: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        default=None, description="Use at most this many episodes (highest reward first)."
    )
    since: SpecTime | None = Field(
        default=None, description="Only episodes at or after this time (RFC 3339)."
    )
    validation_fraction: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        default=0.1, description="Fraction held out for validation and evaluation; below 1."
    )


class GateSpec(ApiModel):
    """Start training only once a RewardLabeling says the data gives a learning signal."""

    labeling_ref: ObjectRef | None = Field(
        default=None, description="The RewardLabeling whose verdict gates training; unset: no gate."
    )
    allow_warning: Flag = Field(default=False, description="Also start on a WARNING verdict (not only GO).")


class Hyperparameters(ApiModel):
    """How to train. The local backend uses all of these; azureOpenAI uses epochs, batchSize,
    learningRateMultiplier and seed."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = Field(default=3, description="Passes over the dataset.")
    learning_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = Field(
        default=2e-4, description="Local backend: peak learning rate of the first round."
    )
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] | None = Field(
        default=None,
        description="azureOpenAI backend: learning rate multiplier; unset lets the service choose.",
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(default=8, description="Rows per batch.")
    lora_rank: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=16, description="Local backend: LoRA rank."
    )
    lora_alpha: Annotated[float, Field(gt=0, le=4096, allow_inf_nan=False)] = Field(
        default=32, description="Local backend: LoRA alpha (scaling)."
    )
    lora_dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = Field(
        default=0.05, description="Local backend: LoRA dropout; below 1."
    )
    max_seq_length: Annotated[int, Field(ge=8, le=131_072)] = Field(
        default=1024, description="Local backend: tokens per training row."
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(default=42, description="Random seed.")


# The threshold is in the grader's own units: a score_model with ``range: [0, 10]`` takes 7.5;
# every other grader scores in [0, 1]. ``normalized_threshold()`` maps it onto [0, 1], the scale
# graders report on and evaluation rounds compare against.
_THRESHOLD_IN_RANGE = cel_rule(
    "(has(self.grader.type) && self.grader.type == 'score_model' && has(self.grader.range))"
    " ? (self.threshold >= self.grader.range[0] && self.threshold <= self.grader.range[1])"
    " : self.threshold <= 1.0",
    "threshold must lie within the grader's range ([0, 1] unless a score_model grader declares a range)",
    field_path=".threshold",
)


class EvaluationSpec(ApiModel):
    """How each round is scored, and when to stop."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_THRESHOLD_IN_RANGE))

    grader: EmbeddedGrader = Field(description="The grader that scores the tuned model on held-out episodes.")
    threshold: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=0.75,
        description=(
            "Score a round must reach to succeed, in the grader's units: within the range of a "
            "score_model grader that declares one (e.g. 7.5 on [0, 10]), else in [0, 1]."
        ),
    )
    max_rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] = Field(
        default=3, description="Rounds to try before failing."
    )
    lr_decay: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = Field(
        default=0.6, description="Each new round's learning rate is the previous one times this."
    )

    def _declared_range(self) -> tuple[float, float]:
        grader_range = self.grader.range
        if self.grader.type == GraderType.SCORE_MODEL and grader_range is not None:
            return float(grader_range[0]), float(grader_range[1])
        return 0.0, 1.0

    def normalized_threshold(self) -> float:
        """The threshold on the [0, 1] scale graders report on."""
        low, high = self._declared_range()
        return (self.threshold - low) / (high - low)

    @model_validator(mode="after")
    def _threshold_in_range(self) -> EvaluationSpec:
        low, high = self._declared_range()
        if not low <= self.threshold <= high:
            raise FieldValueError(
                "threshold",
                f"threshold {self.threshold} must lie within the grader's range [{low:g}, {high:g}]",
            )
        return self


class TolerationOperator(enum.StrEnum):
    """How a toleration matches a taint."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(enum.StrEnum):
    """The taint effect a toleration matches."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


#: a label key: an optional DNS-subdomain prefix and "/", then a name of up to 63 characters
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: a label value: empty, or up to 63 characters starting and ending alphanumeric
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# a CRD schema cannot constrain a map's keys: CEL does, as the API server's Pod validation would
_LABEL_KEYS_RULE = cel_rule(
    f"self.all(k, k.matches('{LABEL_KEY_PATTERN.replace(chr(92), chr(92) * 2)}'))",
    "every key must be a label key (an optional prefix/ and a name of up to 63 letters, digits, "
    "'-', '_' or '.')",
)


class Toleration(ApiModel):
    """A Pod toleration for the trainer (as in a Pod spec)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
                field_path=".value",
            ),
            cel_rule(
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "operator must be Exists when key is empty (a toleration of every taint)",
                field_path=".operator",
            ),
            cel_rule(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds needs effect NoExecute",
                field_path=".tolerationSeconds",
            ),
        )
    )

    key: Annotated[str, Field(max_length=316)] | None = Field(
        default=None, description="Taint key to tolerate."
    )
    operator: TolerationOperator | None = Field(default=None, description="Equal (default) or Exists.")
    value: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="Taint value (Equal)."
    )
    effect: TaintEffect | None = Field(
        default=None, description="NoSchedule, PreferNoSchedule or NoExecute; unset matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="NoExecute: how long the pod stays bound."
    )

    @model_validator(mode="after")
    def _as_the_api_server_checks(self) -> Toleration:
        # the Pod validation a trainer Job would meet: refused here, not when a round's Job is made
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise FieldValueError("value", "value must be empty when operator is Exists")
        if not self.key and self.operator != TolerationOperator.EXISTS:
            raise FieldValueError(
                "operator", "operator must be Exists when key is empty (a toleration of every taint)"
            )
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise FieldValueError("tolerationSeconds", "tolerationSeconds needs effect NoExecute")
        return self


class LocalSecretRef(ApiModel):
    """A Secret in the same namespace, by name (a Pod's ``imagePullSecrets`` entry)."""

    name: K8sName = Field(description="Name of the Secret, in the same namespace as this object.")


class ResourcesSpec(ApiModel):
    """What the trainer Pod asks for and where it may run (local backend)."""

    gpu: Annotated[int, Field(ge=0, le=16)] = Field(
        default=1, description="GPUs for the trainer; 0 trains on CPU."
    )
    gpu_resource_name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$")
    ] = Field(default="nvidia.com/gpu", description="Extended resource that counts GPUs.")
    cpu: Quantity | None = Field(
        default=None, description='CPU request and limit (a quantity string: "4", "500m").'
    )
    memory: Quantity | None = Field(default=None, description='Memory request and limit ("24Gi").')
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]],
        Field(max_length=32, json_schema_extra=cel_rules(_LABEL_KEYS_RULE)),
    ] = Field(default_factory=dict, description="Node labels the trainer Pod must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=list,
        description="Tolerations for the trainer Pod (GPU node pools are often tainted).",
    )
    image_pull_secrets: Annotated[list[LocalSecretRef], Field(max_length=8)] = Field(
        default_factory=list,
        description=(
            "Secrets (kubernetes.io/dockerconfigjson, in this namespace) the trainer Pod pulls its "
            "image with, as a Pod's imagePullSecrets: the trainer image in a private registry."
        ),
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if len(key) > 317 or not re.fullmatch(LABEL_KEY_PATTERN, key)]
        if bad:
            raise ValueError(f"not a label key: {', '.join(repr(k) for k in bad[:3])}")
        return value


class ModelVolume(ApiModel):
    """The PersistentVolumeClaim that holds base models, dataset snapshots and trained adapters."""

    claim_name: K8sName = Field(description="Name of the PersistentVolumeClaim, in the same namespace.")


class Credentials(ApiModel):
    """azureOpenAI backend: where the API key is. Omit secretRef to use the operator's workload identity."""

    secret_ref: SecretKeyRef | None = Field(default=None, description="Secret key holding the API key.")
    endpoint: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https://")] | None = Field(
        default=None, description="Azure OpenAI endpoint (https://NAME.openai.azure.com)."
    )


_LOCAL_NEEDS_VOLUME = cel_rule(
    "self.backend != 'local' || has(self.modelVolume)",
    "modelVolume is required for the local backend",
    field_path=".modelVolume",
    reason="FieldValueRequired",
)


class FineTuneJobSpec(ApiModel):
    """What to train on, with which backend and model, and how to evaluate it."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_LOCAL_NEEDS_VOLUME))

    agent_id: AgentId | None = Field(
        default=None, description="Agent whose labeled episodes are trained on; defaults to metadata.name."
    )
    dataset: DatasetSpec = Field(
        default_factory=DatasetSpec,
        description="Which labeled episodes become training rows.",
        json_schema_extra={"default": {}},
    )
    gate: GateSpec = Field(
        default_factory=GateSpec,
        description="The RewardLabeling verdict that must allow training first.",
        json_schema_extra={"default": {}},
    )
    backend: Backend = Field(
        default=Backend.LOCAL,
        description="Where training runs: local (a trainer Job on this cluster) or azureOpenAI. Immutable.",
        json_schema_extra=immutable("backend"),
    )
    base_model: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        description=(
            "local: path of the base model on the model volume; azureOpenAI: base model name. Immutable."
        ),
        json_schema_extra=immutable("baseModel"),
    )
    method: Method = Field(default=Method.SFT, description="Training method (sft).")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="How to train.",
        json_schema_extra={"default": {}},
    )
    evaluation: EvaluationSpec | None = Field(
        default=None, description="How rounds are scored; unset: train one round and succeed."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        description="Trainer Pod resources and placement (local backend).",
        json_schema_extra={"default": {}},
    )
    model_volume: ModelVolume | None = Field(
        default=None, description="Volume for models, datasets and adapters; required for the local backend."
    )
    credentials: Credentials | None = Field(default=None, description="azureOpenAI backend: credentials.")
    suspend: Flag = Field(
        default=False, description="Stop the running round and start none until false again."
    )
    active_deadline_seconds: Annotated[int, Field(ge=1, le=30 * 86400)] | None = Field(
        default=None, description="Fail a round's trainer after this many seconds."
    )

    @model_validator(mode="after")
    def _local_needs_volume(self) -> FineTuneJobSpec:
        if self.backend == Backend.LOCAL and self.model_volume is None:
            raise FieldValueError("modelVolume", "modelVolume is required for the local backend")
        return self


class DatasetStatus(StatusModel):
    """The dataset snapshot the rounds train on."""

    episodes: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Episodes in the dataset.")
    train_episodes: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Rows in the train split."
    )
    validation_episodes: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Rows in the validation split."
    )
    tokens: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Tokens in the train split.")
    sha256: Annotated[str, Field(pattern=r"^[a-f0-9]{64}$")] | None = Field(
        default=None, description="Fingerprint of the snapshot."
    )
    path: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="Where the snapshot is on the model volume."
    )
    avg_reward: Fraction | None = Field(default=None, description="Mean reward of the episodes used.")
    min_reward: Fraction | None = Field(default=None, description="Lowest reward used.")
    max_reward: Fraction | None = Field(default=None, description="Highest reward used.")


class Progress(StatusModel):
    """Training progress of the current round, as the trainer reports it."""

    percent: Annotated[int, Field(ge=0, le=100)] | None = Field(default=None, description="Percent done.")
    round: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] | None = Field(
        default=None, description="Current round."
    )
    epoch: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="Current (fractional) epoch."
    )
    step: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Optimizer steps done.")
    total_steps: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Optimizer steps planned."
    )
    eta_seconds: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Estimated seconds left."
    )
    loss: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        default=None, description="Latest train loss."
    )


class RoundStatus(StatusModel):
    """One training round and its evaluation."""

    round: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] = Field(description="Round number, from 1.")
    learning_rate: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="Learning rate (or multiplier) of this round."
    )
    train_loss: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        default=None, description="Final train loss."
    )
    valid_loss: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        default=None, description="Final validation loss."
    )
    score: Fraction | None = Field(default=None, description="Evaluation score in [0, 1].")
    checkpoint: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="Adapter or model produced by the round."
    )
    job_name: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="The trainer Job (local) or external job id (azureOpenAI) of the round."
    )


class Baseline(StatusModel):
    """The base model's evaluation score, measured before training."""

    score: Fraction | None = Field(default=None, description="Evaluation score of the base model.")


class EvaluationResult(StatusModel):
    """The latest evaluated round compared with the baseline, example by example."""

    score: Fraction | None = Field(default=None, description="Evaluation score of the tuned model.")
    improvements: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Evaluation examples that scored higher than the baseline."
    )
    regressions: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Evaluation examples that scored lower than the baseline."
    )
    examples: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Evaluation examples scored."
    )
    passed: bool | None = Field(default=None, description="Whether the score reached the threshold.")


class FineTuneJobStatus(StatusBase):
    """Dataset, progress, rounds, baseline and result, and the model that came out."""

    phase: FineTunePhase | None = Field(
        default=None,
        description=(
            "Pending, WaitingForGate, BuildingDataset, Training, Evaluating, Succeeded, Failed or Suspended."
        ),
    )
    dataset: DatasetStatus | None = Field(default=None, description="The dataset snapshot.")
    progress: Progress | None = Field(default=None, description="Progress of the current round.")
    rounds: Annotated[list[RoundStatus], Field(max_length=MAX_ROUNDS)] = Field(
        default_factory=list, description="Every round so far, oldest first."
    )
    baseline: Baseline | None = Field(default=None, description="The base model's evaluation.")
    result: EvaluationResult | None = Field(
        default=None, description="The latest evaluated round against the baseline."
    )
    fine_tuned_model: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None,
        description="The trained model: adapter path (local) or deployed model name (azureOpenAI).",
    )
    external_job_id: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="azureOpenAI: the fine-tuning job id of the current round."
    )
    start_time: datetime | None = Field(default=None, description="When the first round started.")
    completion_time: datetime | None = Field(default=None, description="When the job succeeded or failed.")


def parse_spec(body: Mapping[str, Any]) -> FineTuneJobSpec:
    """The spec of a FineTuneJob object body; raises ``SpecError`` naming the field."""
    return validate_at(FineTuneJobSpec, spec_with_agent_id(body))


def parse_status(body: Mapping[str, Any]) -> FineTuneJobStatus:
    """The status of a FineTuneJob object body (empty when it has none yet)."""
    return validate_at(FineTuneJobStatus, body.get("status") or {}, root="status")
