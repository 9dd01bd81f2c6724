"""The RewardLabeling state machine (``pipeline.labeling_flow``) without an operator.

Covers: where a (re)started daemon resumes for every phase and spec generation (Once and Continuous,
the next run due or not); the grader check naming ``spec.grader.<field>``; the sample-test report
(Pending with no episodes, Failed when the grader failed on all, SampleTested otherwise); labeling
progress counting labels from before a restart; the Completed report's verdict reason and next run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lightning_op.api import labeling as rl
from lightning_op.api.common import SpecError
from lightning_op.graders import dryrun
from lightning_op.pipeline import labeling as labeling_pipeline
from lightning_op.pipeline import labeling_flow as lflow

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GRADER = {"type": "string_check", "input": "{{episode.state.query}}", "reference": "a", "operation": "like"}


def spec(**overrides: Any) -> rl.RewardLabelingSpec:
    return rl.parse_spec(
        {"metadata": {"name": "rl"}, "spec": {"agentId": "bot", "grader": GRADER, **overrides}}
    )


def status(**fields: Any) -> rl.RewardLabelingStatus:
    return rl.RewardLabelingStatus.model_validate({"observedGeneration": 1, **fields})


@pytest.mark.parametrize(
    "phase,generation,mode,extra,stage",
    [
        (None, 1, "Once", {}, lflow.Stage.SAMPLE),
        ("Pending", 1, "Once", {}, lflow.Stage.SAMPLE),
        ("SampleTested", 1, "Once", {}, lflow.Stage.LABEL),
        ("Labeling", 1, "Once", {}, lflow.Stage.LABEL),
        ("Labeling", 2, "Once", {}, lflow.Stage.SAMPLE),
        ("Completed", 1, "Once", {}, lflow.Stage.WAIT_FOR_CHANGE),
        ("Failed", 1, "Once", {}, lflow.Stage.WAIT_FOR_CHANGE),
        ("Failed", 2, "Once", {}, lflow.Stage.SAMPLE),
        ("Completed", 1, "Continuous", {"nextRunTime": "2026-03-01T13:00:00Z"}, lflow.Stage.WAIT_UNTIL),
        ("Completed", 1, "Continuous", {"nextRunTime": "2026-03-01T11:00:00Z"}, lflow.Stage.LABEL),
    ],
    ids=[
        "new",
        "pending",
        "sample-tested",
        "labeling",
        "labeling-spec-changed",
        "completed-once",
        "failed",
        "failed-spec-changed",
        "continuous-not-due",
        "continuous-due",
    ],
)
def test_resume_point(
    phase: str | None, generation: int, mode: str, extra: dict[str, Any], stage: lflow.Stage
) -> None:
    s = spec(mode=mode, intervalSeconds=3600)
    point = lflow.resume_point(s, status(phase=phase, **extra), generation, NOW)
    assert point.stage == stage
    if stage == lflow.Stage.WAIT_UNTIL:
        assert point.next_run == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def test_grader_problems_name_the_field() -> None:
    bad = spec(grader={"type": "string_check", "input": "{{episode.state.query}}", "operation": "eq"})
    with pytest.raises(SpecError, match=r"spec\.grader\.reference: required"):
        lflow.grader_spec(bad)
    assert lflow.grader_spec(spec()) is not None


def _record(score: float | None, error: str | None = None) -> labeling_pipeline.SampleRecord:
    return labeling_pipeline.SampleRecord(episode_id="e1", score=score, reason="r", error=error)


def test_sample_reports() -> None:
    empty = lflow.sample_report(spec(), labeling_pipeline.SampleTestResult("g", "v", []), 1)
    assert empty.phase == rl.LabelingPhase.PENDING and empty.reason == "NoEpisodes"
    failed = lflow.sample_report(
        spec(), labeling_pipeline.SampleTestResult("g", "v", [_record(None, "judge: 401")]), 1
    )
    assert failed.phase == rl.LabelingPhase.FAILED and "judge: 401" in failed.message
    ok = lflow.sample_report(spec(), labeling_pipeline.SampleTestResult("g", "v", [_record(0.5)]), 1)
    assert ok.phase == rl.LabelingPhase.SAMPLE_TESTED
    assert ok.fields == {"sample": [{"episodeId": "e1", "score": 0.5, "reason": "r"}]}


def test_progress_counts_labels_from_before_a_restart() -> None:
    progress = labeling_pipeline.LabelingProgress(done=30, total=70, labeled=25, failed=1, skipped=0)
    report = lflow.labeling_report(spec(), progress, 1, lflow.LabelCounts(labeled=100))
    assert report.fields == {"labeled": 125, "failed": 1, "total": 170}
    rescanning = spec(selector={"unlabeledOnly": False})
    progress = labeling_pipeline.LabelingProgress(done=130, total=170, labeled=25, failed=1, skipped=100)
    assert lflow.labeling_report(rescanning, progress, 1, lflow.LabelCounts(labeled=100)).fields == {
        "labeled": 125,
        "failed": 1,
        "total": 170,
    }
    # ten episodes the grader gave up on (failed three times) are skipped by the rescan: not labeled
    given_up = labeling_pipeline.LabelingProgress(done=10, total=10, labeled=0, failed=0, skipped=10)
    fields = lflow.labeling_report(rescanning, given_up, 1, lflow.LabelCounts(labeled=0, failed=10)).fields
    assert fields is not None and fields["labeled"] == 0


def test_completed_report() -> None:
    metrics = dryrun.score_metrics([0.25, 0.5, 0.75] * 10)
    verdict = dryrun.dry_run_verdict(metrics)
    dry = labeling_pipeline.DryRunResult(
        agent_id="bot",
        grader="g",
        grader_version="v",
        sample_size=30,
        seed=0,
        metrics=metrics,
        verdict=verdict,
        ranges=dryrun.HealthyRanges(),
        records=[],
        duration_s=0.1,
    )
    report = lflow.completed_report(
        spec(mode="Continuous", intervalSeconds=600), lflow.LabelCounts(30, 2), dry, 1, NOW
    )
    assert report.phase == rl.LabelingPhase.COMPLETED and report.reason == "VerdictGo"
    assert report.fields is not None
    assert (
        report.fields["verdict"] == "GO" and report.fields["labeled"] == 30 and report.fields["failed"] == 2
    )
    assert report.fields["scores"]["mean"] == pytest.approx(0.5)
    assert report.fields["nextRunTime"] == (NOW + timedelta(seconds=600)).isoformat().replace("+00:00", "Z")
