"""RewardLabeling (short name ``rl``): scores an agent's episodes with a grader and reports whether the
data gives a learning signal.

The controller runs the pipeline's sample test (a few episodes, scores shown in status for review),
then labels the selected episodes and runs the dry run, whose verdict (GO, WARNING, NO-GO) gates
FineTuneJobs. The grader is embedded as the graders module reads it (``common.EmbeddedGrader``).
This module holds only the spec and status shapes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from lightning_op.api.common import (
    AgentId,
    ApiModel,
    EmbeddedGrader,
    FieldValueError,
    Flag,
    Fraction,
    SpecTime,
    StatusModel,
    cel_rule,
    cel_rules,
    spec_with_agent_id,
    validate_at,
)
from lightning_op.api.conditions import StatusBase

KIND = "RewardLabeling"
MAX_SAMPLE_SIZE = 100


class LabelingPhase(enum.StrEnum):
    """Life cycle of a RewardLabeling."""

    PENDING = "Pending"
    SAMPLE_TESTED = "SampleTested"
    LABELING = "Labeling"
    COMPLETED = "Completed"
    FAILED = "Failed"


class LabelingMode(enum.StrEnum):
    """Label once, or keep labeling new episodes every ``intervalSeconds``."""

    ONCE = "Once"
    CONTINUOUS = "Continuous"


class Verdict(enum.StrEnum):
    """The dry run's verdict on the labeled data."""

    GO = "GO"
    WARNING = "WARNING"
    NO_GO = "NO-GO"


_SINCE_BEFORE_UNTIL = cel_rule(
    "!has(self.since) || !has(self.until) || self.since < self.until",
    "since must be before until",
    field_path=".until",
)


class EpisodeSelector(ApiModel):
    """Which of the agent's episodes to label."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_SINCE_BEFORE_UNTIL))

    unlabeled_only: Flag = Field(default=True, description="Skip episodes that already have a reward.")
    since: SpecTime | None = Field(
        default=None, description="Only episodes at or after this time (RFC 3339)."
    )
    until: SpecTime | None = Field(default=None, description="Only episodes before this time (RFC 3339).")
    limit: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None,
        description="Label at most this many episodes, oldest first (narrow with since for recent ones).",
    )

    @model_validator(mode="after")
    def _since_before_until(self) -> EpisodeSelector:
        if self.since is not None and self.until is not None and not self.since < self.until:
            raise FieldValueError("until", "since must be before until")
        return self


class SampleTest(ApiModel):
    """A few episodes graded first, their scores and reasons shown in status for a person to review."""

    size: Annotated[int, Field(ge=1, le=MAX_SAMPLE_SIZE)] = Field(
        default=5, description="Episodes in the sample test."
    )


#: (lower, upper) bounds that must be in order, by their JSON names
_ORDERED_RANGES = (
    ("meanMin", "meanMax"),
    ("stdMin", "stdMax"),
    ("fractionAboveZeroNoGo", "fractionAboveZeroMin"),
    ("fractionPerfectMax", "fractionPerfectNoGo"),
)


def _ordered_rule(low: str, high: str) -> dict[str, str]:
    return cel_rule(
        f"!has(self.{low}) || !has(self.{high}) || self.{low} <= self.{high}",
        f"{low} must not be greater than {high}",
        field_path=f".{high}",
    )


class HealthyRanges(ApiModel):
    """Where the dry run's metrics must lie for GO (graders.dryrun gives the exact boundaries). The
    defaults suit graded scores; a pass/fail grader, whose share of perfect scores is its pass rate
    and whose std is sqrt(p(1-p)), needs its own (examples/labeling.yaml has a set)."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*(_ordered_rule(a, b) for a, b in _ORDERED_RANGES)))

    mean_min: Fraction = Field(default=0.25, description="Mean score below this is WARNING (too harsh).")
    mean_max: Fraction = Field(default=0.65, description="Mean score above this is WARNING (too lenient).")
    std_min: Annotated[float, Field(ge=0.0, le=0.5, allow_inf_nan=False)] = Field(
        default=0.10, description="Score std below this is WARNING (no spread)."
    )
    std_max: Annotated[float, Field(ge=0.0, le=0.5, allow_inf_nan=False)] = Field(
        default=0.25, description="Score std above this is WARNING (inconsistent data)."
    )
    fraction_above_zero_min: Fraction = Field(
        default=0.20, description="A smaller share of scores above zero is WARNING (harsh)."
    )
    fraction_above_zero_no_go: Fraction = Field(
        default=0.10, description="A smaller share of scores above zero is NO-GO (too harsh)."
    )
    fraction_perfect_max: Fraction = Field(
        default=0.30, description="A larger share of perfect scores is WARNING (lenient)."
    )
    fraction_perfect_no_go: Fraction = Field(
        default=0.50, description="A larger share of perfect scores is NO-GO (too lenient)."
    )
    min_samples: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=30, description="Fewer scored samples is WARNING (none at all is NO-GO)."
    )
    max_failed_fraction: Fraction = Field(
        default=0.10, description="A larger share of samples the grader failed on is WARNING."
    )

    @model_validator(mode="after")
    def _ordered(self) -> HealthyRanges:
        values = self.model_dump(by_alias=True)
        for low, high in _ORDERED_RANGES:
            if values[low] > values[high]:
                raise FieldValueError(
                    high, f"{low} ({values[low]}) must not be greater than {high} ({values[high]})"
                )
        return self


class DryRun(ApiModel):
    """Score statistics over a larger sample, turned into the GO / WARNING / NO-GO verdict."""

    sample_size: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=200, description="Episodes scored for the dry run's statistics."
    )
    healthy_ranges: HealthyRanges | None = Field(
        default=None,
        description=(
            "Where the metrics must lie for GO; unset: the defaults, made for graded scores. A "
            "pass/fail grader needs its own (see examples/labeling.yaml)."
        ),
    )


class RewardLabelingSpec(ApiModel):
    """Which episodes to label, with which grader, and how."""

    agent_id: AgentId | None = Field(
        default=None, description="Agent whose episodes are labeled; defaults to metadata.name."
    )
    selector: EpisodeSelector = Field(
        default_factory=EpisodeSelector,
        description="Which episodes to label.",
        json_schema_extra={"default": {}},
    )
    grader: EmbeddedGrader = Field(
        description="The grader spec (type and its settings), as `lightning-op test-grader` reads it."
    )
    sample_test: SampleTest = Field(
        default_factory=SampleTest,
        description="The sample test run before labeling.",
        json_schema_extra={"default": {}},
    )
    dry_run: DryRun = Field(
        default_factory=DryRun,
        description="The dry run that yields the verdict.",
        json_schema_extra={"default": {}},
    )
    mode: LabelingMode = Field(
        default=LabelingMode.ONCE,
        description="Once: label and stop. Continuous: label new episodes periodically.",
    )
    interval_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = Field(
        default=3600, description="Continuous mode: seconds between labeling runs."
    )
    concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        default=4, description="Episodes graded at once (model graders call an API)."
    )


class SampleRecord(StatusModel):
    """One graded episode of the sample test."""

    episode_id: Annotated[str, Field(max_length=256)] = Field(description="Id of the episode.")
    score: Fraction | None = Field(default=None, description="Score in [0, 1]; unset when grading failed.")
    reason: Annotated[str, Field(max_length=4096)] = Field(default="", description="The grader's reason.")
    error: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="Why grading failed, when it did."
    )


class ScoreStats(StatusModel):
    """Statistics of the dry run's scores."""

    mean: Fraction | None = Field(default=None, description="Mean score.")
    std: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
        default=None, description="Standard deviation of the scores."
    )
    fraction_above_zero: Fraction | None = Field(default=None, description="Fraction of scores above 0.")
    fraction_perfect: Fraction | None = Field(default=None, description="Fraction of scores equal to 1.")
    count: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Scores the statistics cover."
    )
    min: Fraction | None = Field(default=None, description="Lowest score.")
    max: Fraction | None = Field(default=None, description="Highest score.")
    histogram: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=100)] = Field(
        default_factory=list, description="Scores per equal-width bin over [0, 1]."
    )


class DiagnosisEntry(StatusModel):
    """One finding of the dry run (from ``graders.dryrun``)."""

    code: Annotated[str, Field(max_length=64)] = Field(
        description="CamelCase finding: GraderTooHarsh, GraderTooLenient, InconsistentData, NoSpread, ..."
    )
    severity: Verdict = Field(description="How bad the finding is: WARNING or NO-GO.")
    metric: Annotated[str, Field(max_length=64)] = Field(default="", description="The metric it is about.")
    message: Annotated[str, Field(max_length=1024)] = Field(
        default="", description="What it means and what to do."
    )


class RewardLabelingStatus(StatusBase):
    """Sample test results, labeling progress, score statistics and the verdict."""

    phase: LabelingPhase | None = Field(
        default=None, description="Pending, SampleTested, Labeling, Completed or Failed."
    )
    sample: Annotated[list[SampleRecord], Field(max_length=MAX_SAMPLE_SIZE)] = Field(
        default_factory=list, description="The sample test: episode, score and reason per record."
    )
    total: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Episodes selected for labeling."
    )
    labeled: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Episodes labeled so far.")
    failed: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Episodes the grader could not score."
    )
    scores: ScoreStats | None = Field(default=None, description="Statistics of the dry run's scores.")
    verdict: Verdict | None = Field(default=None, description="GO, WARNING or NO-GO.")
    diagnosis: Annotated[list[DiagnosisEntry], Field(max_length=16)] = Field(
        default_factory=list,
        description="What the statistics suggest: grader too harsh, too lenient, or inconsistent data.",
    )
    last_run_time: datetime | None = Field(default=None, description="When the last labeling run finished.")
    next_run_time: datetime | None = Field(
        default=None, description="Continuous mode: when the next labeling run starts."
    )


def parse_spec(body: Mapping[str, Any]) -> RewardLabelingSpec:
    """The spec of a RewardLabeling object body; raises ``SpecError`` naming the field."""
    return validate_at(RewardLabelingSpec, spec_with_agent_id(body))


def parse_status(body: Mapping[str, Any]) -> RewardLabelingStatus:
    """The status of a RewardLabeling object body (empty when it has none yet)."""
    return validate_at(RewardLabelingStatus, body.get("status") or {}, root="status")
