"""The RewardLabeling state machine: where a run starts after an operator restart, and the status each
stage reports (sample records, labeling progress, score statistics, verdict and diagnosis).

A run is: sample test (a few episodes graded, nothing written; ``SampleTested``), labeling
(``pipeline.labeling.label_batch`` over the store; ``Labeling``), then the dry run (``Completed`` with
``scores``, ``verdict`` and ``diagnosis``). The store is the durable progress: labels are written in
small batches (and those graded before a stop, at the stop), and ``label_batch`` skips episodes this
grader version already labeled, so a run interrupted anywhere resumes by running its stage again
(``resume_point``). ``Continuous`` mode labels again every ``intervalSeconds`` (no new sample test).

Pure functions over the spec, the status and the pipeline's results; the controller does the I/O.
Talks to ``api`` (RewardLabeling models, conditions), ``graders`` (spec validation) and
``pipeline.labeling`` (its result types).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lightning_op import graders
from lightning_op.api import labeling as rl
from lightning_op.api.common import FieldProblem, SpecError
from lightning_op.api.conditions import Condition, ConditionStatus, ConditionType, Reason
from lightning_op.pipeline import labeling as labeling_pipeline
from lightning_op.store import base as store_base

#: sample records whose reason is longer are cut (status stays small)
MAX_REASON_CHARS = 512


def grader_spec(spec: rl.RewardLabelingSpec) -> graders.GraderSpec:
    """The embedded grader as the graders module reads it; raises ``SpecError`` naming
    ``spec.grader.<field>`` for what the CRD schema cannot check (templates, operations, formulas)."""
    try:
        return graders.load_grader_spec(spec.grader.to_spec_dict())
    except graders.GraderSpecError as exc:
        problems = [
            FieldProblem(f"spec.grader.{path}" if path else "spec.grader", message)
            for path, message in exc.problems
        ]
        raise SpecError(problems) from None


class Stage(enum.StrEnum):
    """Where the daemon goes next."""

    SAMPLE = "Sample"
    LABEL = "Label"
    #: nothing to do until the spec changes (Once mode finished, or Failed for this spec)
    WAIT_FOR_CHANGE = "WaitForChange"
    #: Continuous mode: label again at ``next_run``
    WAIT_UNTIL = "WaitUntil"


@dataclass(frozen=True)
class ResumePoint:
    stage: Stage
    next_run: datetime | None = None


def resume_point(
    spec: rl.RewardLabelingSpec, status: rl.RewardLabelingStatus, generation: int | None, now: datetime
) -> ResumePoint:
    """The stage a (re)started daemon enters, from the status alone."""
    if status.observed_generation != generation or status.phase in (None, rl.LabelingPhase.PENDING):
        return ResumePoint(Stage.SAMPLE)
    if status.phase == rl.LabelingPhase.FAILED:
        return ResumePoint(Stage.WAIT_FOR_CHANGE)
    if status.phase in (rl.LabelingPhase.SAMPLE_TESTED, rl.LabelingPhase.LABELING):
        return ResumePoint(Stage.LABEL)
    if spec.mode == rl.LabelingMode.ONCE:
        return ResumePoint(Stage.WAIT_FOR_CHANGE)
    next_run = status.next_run_time or next_run_time(spec, status.last_run_time or now)
    return ResumePoint(Stage.LABEL) if next_run <= now else ResumePoint(Stage.WAIT_UNTIL, next_run)


def next_run_time(spec: rl.RewardLabelingSpec, last_run: datetime) -> datetime:
    return (last_run + timedelta(seconds=spec.interval_seconds)).astimezone(UTC).replace(microsecond=0)


def condition(type_: str, value: bool, reason: str, message: str, generation: int | None) -> Condition:
    return Condition(
        type=type_,
        status=ConditionStatus.TRUE if value else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        observed_generation=generation,
    )


#: status fields that describe one spec's run: removed when a new spec's first report is written
CLEARED_ON_NEW_SPEC: Mapping[str, Any] = {"verdict": None, "scores": None, "diagnosis": None}


@dataclass(frozen=True)
class Report:
    """A stage's outcome as the controller writes it: phase, reason, message, conditions, fields."""

    phase: rl.LabelingPhase
    reason: str
    message: str
    conditions: tuple[Condition, ...] = ()
    fields: Mapping[str, Any] | None = None


def _cut(text: str | None, limit: int = MAX_REASON_CHARS) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def labeling_outage_message(report: labeling_pipeline.LabelingReport) -> str:
    """``Ready``'s message while labeling stopped because the grader's backend never answered
    (``LabelingReport.backend_down``): nothing was recorded; the run goes on later."""
    return (
        f"the grader's backend failed on all {report.failed} episodes graded, with errors that may pass "
        f"(after retries): {report.backend_down}; none was recorded (they keep their tries); trying again"
    )


def dry_run_outage_message(dry: labeling_pipeline.DryRunResult, error: str) -> str:
    """``Ready``'s message while the dry run's grader backend failed on every episode
    (``backend_down``): there is no verdict to give yet; the run goes on later."""
    return (
        f"the grader's backend failed on all {len(dry.records)} dry-run episodes, with errors that "
        f"may pass (after retries): {error}; trying again"
    )


def sample_report(
    spec: rl.RewardLabelingSpec, result: labeling_pipeline.SampleTestResult, generation: int | None
) -> Report:
    """The sample test in status: each record's score and reason; Pending when there were no episodes,
    or when the grader's backend failed on every one with errors that may pass (a judge endpoint
    down or overloaded: tested again later); Failed when the grader failed on every one otherwise
    (labeling all episodes would fail the same way)."""
    if not result.records:
        message = f"no episodes of agent {spec.agent_id} in the store yet; waiting for some"
        return Report(
            rl.LabelingPhase.PENDING,
            Reason.NO_EPISODES,
            message,
            (condition(ConditionType.SAMPLE_TESTED, False, Reason.NO_EPISODES, message, generation),),
        )
    records = [
        rl.SampleRecord(
            episode_id=r.episode_id,
            score=None if r.score is None else min(1.0, max(0.0, r.score)),
            reason=_cut(r.reason) or "",
            error=_cut(r.error),
        ).to_json_dict()
        for r in result.records
    ]
    scored = [r for r in result.records if r.score is not None]

    def tested(phase: rl.LabelingPhase, reason: Reason, message: str, passed: bool = False) -> Report:
        sample_tested = condition(ConditionType.SAMPLE_TESTED, passed, reason, message, generation)
        return Report(phase, reason, message, (sample_tested,), {"sample": records})

    down = labeling_pipeline.backend_down(result.records)
    if down is not None:
        message = (
            f"the grader's backend failed on all {len(records)} sample episodes, with errors that "
            f"may pass (after retries): {down}; testing again"
        )
        return tested(rl.LabelingPhase.PENDING, Reason.BACKEND_UNAVAILABLE, message)
    if not scored:
        first = next((r.error for r in result.records if r.error), "no score")
        message = f"the grader failed on all {len(records)} sample episodes: {first}"
        return tested(rl.LabelingPhase.FAILED, Reason.SAMPLE_TEST_FAILED, message)
    average = result.average or 0.0
    message = f"sample of {len(records)} episodes scored {average:.2f} on average ({len(scored)} scored)"
    return tested(rl.LabelingPhase.SAMPLE_TESTED, Reason.SAMPLE_TEST_PASSED, message, passed=True)


@dataclass(frozen=True)
class LabelCounts:
    """Episodes of the selection that carry a label from one grader version: scored, or failed only."""

    labeled: int = 0
    failed: int = 0


def count_labels(
    store: store_base.EpisodeStore, spec: rl.RewardLabelingSpec, grader_name: str, grader_version: str
) -> LabelCounts:
    """Count, in the store, the selected episodes this grader version labeled (in any run, before a
    restart included). One scan of the agent's episodes; blocking, so run it off the event loop."""
    query = store_base.EpisodeQuery(
        agent_id=spec.agent_id, since=spec.selector.since, until=spec.selector.until
    )
    labeled = failed = 0
    for episode in store.iter_json(query):
        mine = [
            lb
            for lb in episode.get("labels") or []
            if lb.get("grader") == grader_name and lb.get("graderVersion") == grader_version
        ]
        if any(lb.get("score") is not None for lb in mine):
            labeled += 1
        elif mine:
            failed += 1
    return LabelCounts(labeled, failed)


def labeling_report(
    spec: rl.RewardLabelingSpec,
    progress: labeling_pipeline.LabelingProgress | None,
    generation: int | None,
    before: LabelCounts = LabelCounts(),
) -> Report:
    """Phase Labeling, with the counts so far: ``before`` (what this grader version labeled in earlier
    runs, counted in the store) plus this run's progress."""
    fields: dict[str, Any] = {}
    message = f"labeling episodes of agent {spec.agent_id}"
    if progress is not None:
        # What this grader version scored before, from the store: not the run's ``skipped``, which
        # without unlabeledOnly also holds episodes skipped as given up (failed too often) or in
        # conflict, and would show them as labeled.
        fields = {
            "labeled": before.labeled + progress.labeled,
            "failed": progress.failed,
            "total": None
            if progress.total is None
            else progress.total + (before.labeled if spec.selector.unlabeled_only else 0),
        }
        if progress.total:
            message = f"{message}: {progress.done} of {progress.total}"
    return Report(
        rl.LabelingPhase.LABELING,
        Reason.LABELING,
        message,
        (condition(ConditionType.PROGRESSING, True, Reason.LABELING, message, generation),),
        fields,
    )


_VERDICT_REASONS = {
    rl.Verdict.GO: Reason.VERDICT_GO,
    rl.Verdict.WARNING: Reason.VERDICT_WARNING,
    rl.Verdict.NO_GO: Reason.VERDICT_NO_GO,
}


def completed_report(
    spec: rl.RewardLabelingSpec,
    counts: LabelCounts,
    dry: labeling_pipeline.DryRunResult,
    generation: int | None,
    now: datetime,
) -> Report:
    """Phase Completed: counts, the dry run's statistics, verdict and diagnosis (and, in Continuous
    mode, when the next run starts)."""
    verdict = rl.Verdict(dry.verdict.verdict.value)
    m = dry.metrics
    scores = rl.ScoreStats(
        mean=_fraction(m.mean),
        std=_fraction(m.std),
        fraction_above_zero=_fraction(m.fraction_above_zero),
        fraction_perfect=_fraction(m.fraction_perfect),
        count=m.count,
        min=_fraction(m.min),
        max=_fraction(m.max),
        histogram=list(m.histogram),
    )
    diagnosis = [
        rl.DiagnosisEntry(
            code=d.code.value,
            severity=rl.Verdict(d.severity.value),
            metric=d.metric,
            message=d.message[:1024],
        ).to_json_dict()
        for d in dry.verdict.diagnosis
    ][:16]
    mean = f"{m.mean:.2f}" if m.mean is not None else "n/a"
    message = (
        f"verdict {verdict.value}: labeled {counts.labeled}, failed {counts.failed}; "
        f"dry run of {m.count} scores, mean {mean}"
    )
    if dry.verdict.diagnosis:
        message = f"{message}; {dry.verdict.diagnosis[0].message}"
    last_run = now.astimezone(UTC).replace(microsecond=0)
    fields: dict[str, Any] = {
        "labeled": counts.labeled,
        "failed": counts.failed,
        "scores": scores.to_json_dict(),
        "verdict": verdict.value,
        "diagnosis": diagnosis,
        "lastRunTime": last_run.isoformat().replace("+00:00", "Z"),
        "nextRunTime": None,
    }
    if spec.mode == rl.LabelingMode.CONTINUOUS:
        fields["nextRunTime"] = next_run_time(spec, last_run).isoformat().replace("+00:00", "Z")
    reason = _VERDICT_REASONS[verdict]
    return Report(
        rl.LabelingPhase.COMPLETED,
        reason,
        message,
        (condition(ConditionType.PROGRESSING, False, Reason.LABELING_COMPLETED, message, generation),),
        fields,
    )


def _fraction(value: float | None) -> float | None:
    return None if value is None else min(1.0, max(0.0, round(value, 6)))
