"""The FineTuneJob state machine (``pipeline.finetune_flow``), step by step, without an operator.

Covers: what the controller is asked to observe in each state; Job states read from Job conditions;
the trainer's JSON lines folded from a log tail with other log lines in between (``evaluated`` ends a
baseline); the gate (GO, WARNING with and without ``allowWarning``, NO-GO, not found); the dataset
step (too few episodes fails with the message users see, enough starts the baseline or, with no
evaluation, round 1); recording the baseline and each round; the next round's learning rate
(``learningRate * lrDecay**(k-1)``) and initial adapter; ThresholdMet -> Succeeded with the best
round's adapter; MaxRounds -> Failed (``MaxRoundsReached``) with the result kept; failure reasons
(the trainer's first, DeadlineExceeded over it, the Job's otherwise); a ``failed`` line from a pod
the Job will retry is not the end; a Job that vanished is created again (adopted); a succeeded Job
whose result cannot be read waits, then fails; suspend and resume of the running round; a Failed job
restarts on a spec change only if no trainer ran; steps are idempotent (the same observation twice
makes no new transition); the trainer config of a round; the result counted example by example.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from lightning_op.api import finetune as ft
from lightning_op.datasets import build as dataset_build
from lightning_op.pipeline import finetune_flow as flow
from lightning_op.training import config as trainer_config_mod

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
META = {"name": "ftj", "namespace": "demo", "uid": "12345678-aaaa-bbbb-cccc-1234567890ab"}
LAYOUT = flow.VolumeLayout("demo", "ftj", META["uid"])


def spec(**overrides: Any) -> ft.FineTuneJobSpec:
    body: dict[str, Any] = {
        "agentId": "bot",
        "baseModel": "base/tiny",
        "modelVolume": {"claimName": "models"},
        "hyperparameters": {"learningRate": 0.001, "loraAlpha": 16.4},
        "evaluation": {
            "grader": {"preset": "tool_selection"},
            "threshold": 0.75,
            "maxRounds": 3,
            "lrDecay": 0.5,
        },
    }
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not None}
    return ft.parse_spec({"metadata": META, "spec": body})


def observed(generation: int = 1, **kwargs: Any) -> flow.Observed:
    return flow.Observed(generation, kwargs.pop("now", NOW), **kwargs)


def stats(episodes: int = 12, validation: int = 2) -> dataset_build.DatasetStats:
    return dataset_build.DatasetStats(
        name="ftj-dataset",
        agent_id="bot",
        path=str(LAYOUT.dataset),
        sha256="a" * 64,
        bytes=100,
        episodes=episodes,
        train_episodes=episodes - validation,
        validation_episodes=validation,
        tokens=400,
        avg_reward=0.9,
        min_reward=0.8,
        max_reward=1.0,
        scanned=episodes,
        duplicates_removed=0,
        created=NOW,
    )


def lines(*events: dict[str, Any], noise: bool = True) -> flow.TrainerOutput:
    import json

    text = []
    for event in events:
        if noise:
            text.append("2026-03-01 12:00:00 INFO lightning_op.training.local: something")
        text.append(json.dumps(event))
    return flow.parse_trainer_output("\n".join(text))


def job(state: flow.JobState, reason: str | None = None, finished: datetime | None = NOW) -> flow.JobView:
    return flow.JobView(state, reason, f"job {reason}" if reason else None, finished)


def run(s: ft.FineTuneJobSpec, status: ft.FineTuneJobStatus, **obs: Any) -> flow.Step:
    return flow.decide(s, status, observed(**obs))


def training_status(**fields: Any) -> ft.FineTuneJobStatus:
    """A status with the dataset built and the given fields (phase Training unless given)."""
    base: dict[str, Any] = {
        "phase": "Training",
        "observedGeneration": 1,
        "dataset": flow.dataset_status(stats(), str(LAYOUT.dataset)).to_json_dict(),
        "startTime": "2026-03-01T11:00:00Z",
    }
    base.update(fields)
    return ft.FineTuneJobStatus.model_validate(base)


def done_round(number: int, score: float, lr: float) -> dict[str, Any]:
    return {"round": number, "learningRate": lr, "score": score, "checkpoint": f"/models/r{number}/adapter"}


def completed(number: int, score: float | None) -> flow.TrainerOutput:
    return lines(
        {"event": "progress", "percent": 100.0, "step": 10, "totalSteps": 10},
        {
            "event": "completed",
            "reason": "Completed",
            "adapterPath": f"/models/r{number}/adapter",
            "trainLoss": 0.4,
            "validLoss": 0.6,
            "score": score,
        },
    )


def round_seen(
    number: int,
    state: flow.JobState,
    output: flow.TrainerOutput | None = None,
    reason: str | None = None,
    **kw: Any,
) -> flow.RoundObservation:
    return flow.RoundObservation(number, job(state, reason, kw.pop("finished", NOW)), output, **kw)


def condition(status: ft.FineTuneJobStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


# ------------------------------------------------------------------------------------------ observing


def test_need_follows_the_status() -> None:
    gated = spec(gate={"labelingRef": {"name": "rl"}})
    empty = ft.FineTuneJobStatus()
    assert flow.need(spec(), empty, 1).kind == flow.NeedKind.NOTHING  # first: enter BuildingDataset
    assert flow.need(gated, empty, 1).kind == flow.NeedKind.GATE
    building = ft.FineTuneJobStatus(phase=ft.FineTunePhase.BUILDING_DATASET)
    assert flow.need(spec(), building, 1).kind == flow.NeedKind.DATASET
    assert flow.need(spec(), training_status(), 1) == flow.Need(flow.NeedKind.ROUND, 0)
    assert flow.need(spec(evaluation=None), training_status(), 1) == flow.Need(flow.NeedKind.ROUND, 1)
    with_rounds = training_status(baseline={"score": 0.3}, rounds=[done_round(1, 0.5, 0.001), {"round": 2}])
    assert flow.need(spec(), with_rounds, 1) == flow.Need(flow.NeedKind.ROUND, 2)
    assert flow.need(spec(suspend=True), empty, 1).kind == flow.NeedKind.NOTHING
    assert flow.need(spec(), training_status(phase="Succeeded"), 1).kind == flow.NeedKind.NOTHING


@pytest.mark.parametrize(
    "raw,state,reason",
    [
        (None, flow.JobState.MISSING, None),
        ({"status": {}}, flow.JobState.RUNNING, None),
        ({"status": {"active": 1}}, flow.JobState.RUNNING, None),
        (
            {
                "status": {
                    "conditions": [{"type": "Complete", "status": "True"}],
                    "completionTime": "2026-03-01T11:59:00Z",
                }
            },
            flow.JobState.SUCCEEDED,
            None,
        ),
        (
            {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}},
            flow.JobState.FAILED,
            "DeadlineExceeded",
        ),
        (
            {"status": {"conditions": [{"type": "Suspended", "status": "True"}]}},
            flow.JobState.SUSPENDED,
            None,
        ),
        ({"spec": {"suspend": True}, "status": {}}, flow.JobState.SUSPENDED, None),
        (
            {"status": {"conditions": [{"type": "Failed", "status": "False"}], "active": 1}},
            flow.JobState.RUNNING,
            None,
        ),
    ],
    ids=[
        "missing",
        "new",
        "active",
        "complete",
        "failed",
        "suspended-condition",
        "suspend-requested",
        "not-failed",
    ],
)
def test_job_view(raw: dict[str, Any] | None, state: flow.JobState, reason: str | None) -> None:
    view = flow.job_view(raw)
    assert view.state == state and view.reason == reason


def test_trainer_lines_are_folded_and_noise_skipped() -> None:
    output = lines(
        {"event": "started", "totalSteps": 20},
        {
            "event": "progress",
            "percent": 40.0,
            "epoch": 1,
            "step": 8,
            "totalSteps": 20,
            "loss": 1.5,
            "etaSeconds": 12.5,
        },
    )
    assert output.final is None and output.last_event == "progress"
    assert output.status.percent == 40.0 and output.status.step == 8
    baseline = lines({"event": "evaluated", "score": 0.42})
    assert baseline.final is not None and baseline.status.score == 0.42
    assert flow.parse_trainer_output("not json\n{broken\n").lines == 0


def _pod(phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "ftj-r1-x"}, "status": {"phase": phase, **status}}


def _waiting(name: str, reason: str, message: str | None = None) -> dict[str, Any]:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return {"name": name, "state": {"waiting": waiting}}


def test_pod_problems_are_the_waits_a_person_has_to_end() -> None:
    creating = _pod("Pending", containerStatuses=[_waiting("trainer", "ContainerCreating")])
    assert flow.pod_problem(creating) is None, "a pod being created is no problem"
    assert flow.pod_problem(None) is None
    assert flow.pod_problem(_pod("Pending")) is None
    unschedulable = _pod(
        "Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes"}
        ],
    )
    assert flow.pod_problem(unschedulable) == flow.PodProblem(
        "Unschedulable", "trainer pod ftj-r1-x cannot be scheduled: 0/2 nodes"
    )
    init = _pod("Pending", initContainerStatuses=[_waiting("fetch", "ErrImagePull", "not found")])
    assert flow.pod_problem(init) == flow.PodProblem(
        "ErrImagePull", "trainer pod ftj-r1-x, container fetch: ErrImagePull: not found"
    )
    sidecar = _pod(
        "Pending",
        containerStatuses=[
            _waiting("trainer", "ContainerCreating"),
            _waiting("proxy", "CreateContainerConfigError"),
        ],
    )
    problem = flow.pod_problem(sidecar)
    assert problem is not None and problem.message.endswith("container proxy: CreateContainerConfigError")
    finished = _pod("Failed", containerStatuses=[_waiting("trainer", "CrashLoopBackOff")])
    assert flow.pod_problem(finished) is None, "a finished pod is the Job's to report"


def test_newest_pod_wins() -> None:
    pods = [
        {"metadata": {"name": "a", "creationTimestamp": "2026-03-01T10:00:00Z"}},
        {"metadata": {"name": "b", "creationTimestamp": "2026-03-01T11:00:00Z"}},
    ]
    assert flow.newest_pod(pods) == pods[1]
    assert flow.newest_pod([]) is None


# ------------------------------------------------------------------------------------------ gate


@pytest.mark.parametrize(
    "verdict,allow,state",
    [
        ("GO", False, flow.GateState.OPEN),
        ("WARNING", False, flow.GateState.BLOCKED),
        ("WARNING", True, flow.GateState.OPEN),
        ("NO-GO", True, flow.GateState.BLOCKED),
        (None, False, flow.GateState.WAITING),
    ],
    ids=["go", "warning-strict", "warning-allowed", "no-go", "no-verdict-yet"],
)
def test_gate_state(verdict: str | None, allow: bool, state: flow.GateState) -> None:
    s = spec(gate={"labelingRef": {"name": "rl"}, "allowWarning": allow})
    labeling = {
        "status": {"phase": "Labeling"} if verdict is None else {"phase": "Completed", "verdict": verdict}
    }
    assert flow.gate_state(s, labeling).state == state
    assert flow.gate_state(s, None).state == flow.GateState.NOT_FOUND


def test_a_verdict_of_an_earlier_spec_does_not_open_the_gate() -> None:
    """The RewardLabeling's spec changed (generation 2) and its daemon has not reported on it yet:
    its GO is the old grader's, so training waits."""
    s = spec(gate={"labelingRef": {"name": "rl"}})
    stale = {
        "metadata": {"generation": 2},
        "status": {"phase": "Completed", "verdict": "GO", "observedGeneration": 1},
    }
    seen = flow.gate_state(s, stale)
    assert seen.state == flow.GateState.WAITING
    assert "changed spec (generation 2)" in seen.message
    current = {**stale, "status": {**stale["status"], "observedGeneration": 2}}
    assert flow.gate_state(s, current).state == flow.GateState.OPEN


def test_closed_gate_waits_and_open_gate_builds_the_dataset() -> None:
    s = spec(gate={"labelingRef": {"name": "rl"}})
    blocked = flow.GateObservation(flow.GateState.BLOCKED, "RewardLabeling rl verdict is NO-GO")
    step = run(s, ft.FineTuneJobStatus(), gate=blocked)
    assert step.status.phase == ft.FineTunePhase.WAITING_FOR_GATE
    assert condition(step.status, "GatePassed").reason == "GateFailed"
    assert step.transition is not None and step.create_round is None
    again = run(s, step.status, gate=blocked)
    assert again.transition is None and again.status == step.status
    opened = run(s, step.status, gate=flow.GateObservation(flow.GateState.OPEN, "verdict is GO"))
    assert opened.status.phase == ft.FineTunePhase.BUILDING_DATASET
    assert condition(opened.status, "GatePassed").status == "True"


# ------------------------------------------------------------------------------------------ dataset


def test_too_few_episodes_fails_with_what_to_change() -> None:
    building = ft.FineTuneJobStatus(phase=ft.FineTunePhase.BUILDING_DATASET)
    step = run(spec(), building, dataset=flow.DatasetOutcome(stats=stats(episodes=3), episodes=3))
    assert step.status.phase == ft.FineTunePhase.FAILED
    failed = condition(step.status, "Failed")
    assert failed.reason == "NotEnoughEpisodes"
    assert failed.message == (
        "dataset has 3 episodes with reward >= 0.7, need at least 10 "
        "(lower spec.dataset.minReward, or label more episodes, then edit the spec to start again)"
    )
    assert step.transition is not None and step.transition.event_type == "Warning"
    empty = run(spec(), building, dataset=flow.DatasetOutcome(error="no episodes"))
    assert condition(empty.status, "Failed").message.startswith("dataset has 0 episodes")


def test_dataset_built_starts_the_baseline() -> None:
    building = ft.FineTuneJobStatus(phase=ft.FineTunePhase.BUILDING_DATASET)
    step = run(spec(), building, dataset=flow.DatasetOutcome(stats=stats(), episodes=12))
    assert step.status.phase == ft.FineTunePhase.EVALUATING
    assert step.create_round == flow.RoundPlan(0)
    assert step.status.dataset is not None and step.status.dataset.sha256 == "a" * 64
    assert step.status.start_time == NOW
    assert condition(step.status, "DatasetReady").status == "True"


def test_without_evaluation_round_one_starts_at_once() -> None:
    building = ft.FineTuneJobStatus(phase=ft.FineTunePhase.BUILDING_DATASET)
    step = run(spec(evaluation=None), building, dataset=flow.DatasetOutcome(stats=stats(), episodes=12))
    assert step.status.phase == ft.FineTunePhase.TRAINING
    assert step.create_round == flow.RoundPlan(1, 0.001)
    assert [r.round for r in step.status.rounds] == [1]


# ------------------------------------------------------------------------------------------ rounds


def test_baseline_recorded_then_round_one() -> None:
    step = run(
        spec(),
        training_status(phase="Evaluating"),
        round=round_seen(0, flow.JobState.SUCCEEDED, lines({"event": "evaluated", "score": 0.3})),
    )
    assert step.status.baseline == ft.Baseline(score=0.3)
    assert step.status.phase == ft.FineTunePhase.TRAINING
    assert step.create_round == flow.RoundPlan(1, 0.001)
    assert step.status.rounds == [ft.RoundStatus(round=1, learning_rate=0.001)]


def test_running_round_copies_progress_without_a_transition() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    output = lines(
        {
            "event": "progress",
            "percent": 55.5,
            "epoch": 1,
            "step": 11,
            "totalSteps": 20,
            "loss": 1.2,
            "etaSeconds": 9.7,
        }
    )
    step = run(spec(), status, round=round_seen(1, flow.JobState.RUNNING, output))
    assert step.transition is None and step.create_round is None
    assert step.status.progress == ft.Progress(
        percent=55, round=1, epoch=1.0, step=11, total_steps=20, eta_seconds=9, loss=1.2
    )
    again = run(spec(), step.status, round=round_seen(1, flow.JobState.RUNNING, output))
    assert again.status == step.status and again.transition is None


def test_scoring_shows_as_evaluating() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    output = lines({"event": "progress", "percent": 100.0}, {"event": "evaluating", "examples": 3})
    step = run(spec(), status, round=round_seen(1, flow.JobState.RUNNING, output))
    assert step.status.phase == ft.FineTunePhase.EVALUATING
    assert step.transition is not None and "scoring its adapter" in step.transition.message


def test_below_threshold_trains_the_next_round_from_the_last_adapter() -> None:
    status = training_status(
        baseline={"score": 0.3}, rounds=[done_round(1, 0.5, 0.001), {"round": 2, "learningRate": 0.0005}]
    )
    step = run(spec(), status, round=round_seen(2, flow.JobState.SUCCEEDED, completed(2, 0.6)))
    assert step.create_round == flow.RoundPlan(3, pytest.approx(0.00025), "/models/r2/adapter")
    assert step.status.rounds[1].score == 0.6 and step.status.rounds[1].train_loss == 0.4
    assert step.status.rounds[2].round == 3
    assert step.status.rounds[2].learning_rate == pytest.approx(0.00025)
    assert step.status.result is not None and step.status.result.passed is False


def test_threshold_met_succeeds_with_the_best_adapter() -> None:
    status = training_status(
        baseline={"score": 0.3}, rounds=[done_round(1, 0.5, 0.001), {"round": 2, "learningRate": 0.0005}]
    )
    seen = round_seen(
        2,
        flow.JobState.SUCCEEDED,
        completed(2, 0.8),
        examples={0: 1.0, 1: 1.0, 2: 0.0},
        baseline_examples={0: 0.0, 1: 1.0, 2: 0.5},
    )
    step = run(spec(), status, round=seen)
    assert step.status.phase == ft.FineTunePhase.SUCCEEDED
    assert step.status.fine_tuned_model == "/models/r2/adapter"
    assert step.status.result == ft.EvaluationResult(
        score=0.8, improvements=1, regressions=1, examples=3, passed=True
    )
    assert condition(step.status, "EvaluationPassed").status == "True"
    assert condition(step.status, "Ready").status == "True"
    assert step.status.completion_time == NOW
    assert step.create_round is None


@pytest.mark.parametrize(
    ("score", "phase", "passed"),
    [
        pytest.param(0.8, ft.FineTunePhase.SUCCEEDED, True, id="8-of-10-meets-7.5"),
        pytest.param(0.7, ft.FineTunePhase.TRAINING, False, id="7-of-10-trains-again"),
    ],
)
def test_a_ranged_grader_threshold_is_in_the_graders_units(
    score: float, phase: ft.FineTunePhase, passed: bool
) -> None:
    """A score_model grader on [0, 10] with threshold 7.5: its scores arrive on [0, 1] (0.8 is 8/10)."""
    judge = {
        "type": "score_model",
        "model": "gpt-4o-mini",
        "input": [{"role": "user", "content": "Rate 0 to 10: {{sample.output_text}}"}],
        "range": [0, 10],
    }
    ranged = spec(evaluation={"grader": judge, "threshold": 7.5, "maxRounds": 3, "lrDecay": 0.5})
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    step = run(ranged, status, round=round_seen(1, flow.JobState.SUCCEEDED, completed(1, score)))
    assert step.status.phase == phase
    assert step.status.result is not None and step.status.result.passed is passed
    assert (step.create_round is None) is passed


def test_max_rounds_fails_but_keeps_the_result_and_best_round() -> None:
    status = training_status(
        baseline={"score": 0.3},
        rounds=[done_round(1, 0.6, 0.001), done_round(2, 0.5, 0.0005), {"round": 3, "learningRate": 0.00025}],
    )
    step = run(spec(), status, round=round_seen(3, flow.JobState.SUCCEEDED, completed(3, 0.55)))
    assert step.status.phase == ft.FineTunePhase.FAILED
    failed = condition(step.status, "Failed")
    assert failed.reason == "MaxRoundsReached"
    assert "best round 1 (/models/r1/adapter)" in failed.message
    assert step.status.fine_tuned_model is None
    assert step.status.result is not None and step.status.result.score == 0.55


@pytest.mark.parametrize(
    "final,job_reason,expected",
    [
        ({"event": "failed", "reason": "Diverged", "message": "loss is NaN"}, "PodFailurePolicy", "Diverged"),
        ({"event": "failed", "reason": "OutOfMemory", "message": "OOM"}, "PodFailurePolicy", "OutOfMemory"),
        (
            {"event": "failed", "reason": "Terminated", "message": "SIGTERM"},
            "DeadlineExceeded",
            "DeadlineExceeded",
        ),
        (None, "BackoffLimitExceeded", "BackoffLimitExceeded"),
        (None, "PodFailurePolicy", "TrainingFailed"),
    ],
    ids=["diverged", "oom", "deadline-over-terminated", "backoff", "unknown"],
)
def test_failure_reasons(final: dict[str, Any] | None, job_reason: str, expected: str) -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    output = lines(final) if final else None
    step = run(spec(), status, round=round_seen(1, flow.JobState.FAILED, output, job_reason))
    assert step.status.phase == ft.FineTunePhase.FAILED
    assert condition(step.status, "Failed").reason == expected
    assert condition(step.status, "Failed").message.startswith("round 1 failed: ")


def test_failed_line_from_a_pod_the_job_retries_is_not_the_end() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    output = lines({"event": "failed", "reason": "Terminated", "message": "SIGTERM", "resumable": True})
    step = run(spec(), status, round=round_seen(1, flow.JobState.RUNNING, output))
    assert step.status.phase == ft.FineTunePhase.TRAINING and step.transition is None


def test_a_vanished_job_is_created_again() -> None:
    status = training_status(
        baseline={"score": 0.3}, rounds=[done_round(1, 0.5, 0.001), {"round": 2, "learningRate": 0.0005}]
    )
    step = run(spec(), status, round=round_seen(2, flow.JobState.MISSING))
    assert step.create_round == flow.RoundPlan(2, 0.0005, "/models/r1/adapter")
    assert step.transition is None and len(step.status.rounds) == 2


def test_a_job_deleted_mid_round_is_created_again_to_resume_from_its_checkpoint() -> None:
    """Deleting a Job stops its pod with SIGTERM: the trainer checkpoints and says ``failed``,
    ``Terminated``, resumable. That is not the round's end: the Job is created again (and resumes);
    a failure the trainer could not resume from still fails the job."""
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    terminated = {"event": "failed", "reason": "Terminated", "message": "SIGTERM", "resumable": True}
    step = run(spec(), status, round=round_seen(1, flow.JobState.MISSING, lines(terminated)))
    assert step.create_round == flow.RoundPlan(1, 0.001, None)
    assert step.status.phase == ft.FineTunePhase.TRAINING
    loading = {"event": "failed", "reason": "Terminated", "message": "SIGTERM", "resumable": False}
    fresh = run(spec(), status, round=round_seen(1, flow.JobState.MISSING, lines(loading)))
    assert fresh.create_round == flow.RoundPlan(1, 0.001, None), "stopped before a checkpoint: afresh"
    diverged = {"event": "failed", "reason": "Diverged", "message": "loss is NaN", "resumable": False}
    gone = run(spec(), status, round=round_seen(1, flow.JobState.MISSING, lines(diverged)))
    assert gone.status.phase == ft.FineTunePhase.FAILED and gone.create_round is None
    assert condition(gone.status, "Failed").reason == "Diverged"


def test_finished_job_gone_uses_the_volume_copy() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    step = run(spec(), status, round=round_seen(1, flow.JobState.MISSING, completed(1, 0.9)))
    assert step.status.phase == ft.FineTunePhase.SUCCEEDED


def test_unreadable_result_waits_then_fails() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    fresh = run(spec(), status, round=round_seen(1, flow.JobState.SUCCEEDED, lines(noise=True), finished=NOW))
    assert fresh.status.phase == ft.FineTunePhase.TRAINING
    late = run(
        spec(), status, round=round_seen(1, flow.JobState.SUCCEEDED, None, finished=NOW - timedelta(hours=1))
    )
    assert late.status.phase == ft.FineTunePhase.FAILED
    assert condition(late.status, "Failed").reason == "ResultUnavailable"


def test_missing_score_after_training_fails() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    step = run(spec(), status, round=round_seen(1, flow.JobState.SUCCEEDED, completed(1, None)))
    assert condition(step.status, "Failed").reason == "TrainingFailed"


# ------------------------------------------------------------------------------------------ suspend, restart


def test_suspend_the_running_round_and_resume_it() -> None:
    status = training_status(baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}])
    step = run(spec(suspend=True), status)
    assert step.status.phase == ft.FineTunePhase.SUSPENDED and step.suspend_job == 1
    assert condition(step.status, "Suspended").status == "True"
    again = run(spec(suspend=True), step.status)
    assert again.suspend_job is None and again.transition is None
    resumed = run(spec(), step.status, round=round_seen(1, flow.JobState.SUSPENDED))
    assert resumed.resume_job == 1 and resumed.status.phase == ft.FineTunePhase.TRAINING
    assert condition(resumed.status, "Suspended").status == "False"


def test_resumed_before_the_job_finished_suspending_is_resumed() -> None:
    # The Job still counts its pod (the Job controller has not stopped it yet) when the user resumes.
    status = training_status(
        phase="Suspended", baseline={"score": 0.3}, rounds=[{"round": 1, "learningRate": 0.001}]
    )
    stopping = flow.job_view({"spec": {"suspend": True}, "status": {"active": 1}})
    assert stopping.state == flow.JobState.RUNNING and stopping.suspend_requested
    resumed = flow.decide(spec(), status, observed(round=flow.RoundObservation(1, stopping)))
    assert resumed.resume_job == 1 and resumed.status.phase == ft.FineTunePhase.TRAINING
    running = flow.job_view({"spec": {"suspend": False}, "status": {"active": 1}})
    assert (
        flow.decide(spec(), resumed.status, observed(round=flow.RoundObservation(1, running))).resume_job
        is None
    )


def test_suspended_before_the_dataset_suspends_nothing() -> None:
    step = run(spec(suspend=True), ft.FineTuneJobStatus())
    assert step.status.phase == ft.FineTunePhase.SUSPENDED and step.suspend_job is None
    resumed = run(spec(), step.status)
    assert resumed.status.phase == ft.FineTunePhase.BUILDING_DATASET


def test_failed_restarts_on_a_spec_change_only_when_nothing_ran() -> None:
    early = ft.FineTuneJobStatus.model_validate({"phase": "Failed", "observedGeneration": 1})
    assert flow.is_terminal(early, 1) and not flow.is_terminal(early, 2)
    step = flow.decide(spec(), early, observed(generation=2))
    assert step.status.phase == ft.FineTunePhase.BUILDING_DATASET and step.status.observed_generation == 2
    late = training_status(phase="Failed", baseline={"score": 0.3})
    assert flow.is_terminal(late, 2)
    assert flow.decide(spec(), late, observed(generation=2)).status == late


def test_a_restart_checks_the_gate_again() -> None:
    """The failed job passed its gate under the old spec; the new spec may name another
    RewardLabeling. GatePassed is said False (conditions are merged when written, so leaving it out
    would keep the old True) and the job waits for the gate, not the dataset."""
    s = spec(gate={"labelingRef": {"name": "rl-new"}})
    failed = ft.FineTuneJobStatus.model_validate(
        {
            "phase": "Failed",
            "observedGeneration": 1,
            "conditions": [
                {"type": "GatePassed", "status": "True", "reason": "GatePassed", "message": "old",
                 "lastTransitionTime": "2026-03-01T11:00:00Z"},
            ],
        }
    )  # fmt: skip
    step = flow.decide(s, failed, observed(generation=2))
    gate = condition(step.status, "GatePassed")
    assert (gate.status, gate.message) == ("False", "the spec changed: checking the gate again")
    assert step.status.phase == ft.FineTunePhase.WAITING_FOR_GATE


def test_azure_backend_is_not_implemented() -> None:
    s = spec(backend="azureOpenAI", modelVolume=None)
    step = run(s, ft.FineTuneJobStatus())
    assert step.status.phase == ft.FineTunePhase.FAILED
    assert condition(step.status, "Failed").reason == "BackendNotImplemented"


# ------------------------------------------------------------------------------------------ trainer config


def test_round_trainer_config_paths_and_hyperparameters() -> None:
    config = flow.trainer_config(
        spec(), LAYOUT, flow.RoundPlan(2, 0.0005, "/models/x/round-1/adapter"), has_validation=True
    )
    root = "/models/finetunejobs/demo/ftj-12345678"
    assert config["baseModel"] == "/models/base/tiny"
    assert config["trainFile"] == f"{root}/dataset/train.jsonl"
    assert config["validationFile"] == f"{root}/dataset/train.validation.jsonl"
    assert config["outputDir"] == f"{root}/round-2"
    assert config["round"] == 2 and config["resumeFrom"] == "auto"
    assert config["initAdapter"] == "/models/x/round-1/adapter"
    assert config["hyperparameters"]["learningRate"] == 0.0005
    assert config["hyperparameters"]["loraAlpha"] == 16
    assert config["evaluation"]["evalFile"] == config["validationFile"]
    assert config["evaluation"]["graderSpec"] == {"preset": "tool_selection"}
    trainer_config_mod.parse_config(config)


def test_baseline_config_and_no_validation_split() -> None:
    config = flow.trainer_config(
        spec(baseModel="/abs/model"), LAYOUT, flow.RoundPlan(0), has_validation=False
    )
    assert config["baseModel"] == "/abs/model"
    assert config["outputDir"].endswith("/baseline")
    assert "round" not in config and "resumeFrom" not in config and "validationFile" not in config
    assert config["evaluation"]["evalFile"] == config["trainFile"]


def test_config_written_once(tmp_path: Path) -> None:
    first = flow.write_trainer_config(tmp_path, LAYOUT, 1, {"a": 1})
    flow.write_trainer_config(tmp_path, LAYOUT, 1, {"a": 2})
    assert first.read_text() == "a: 1\n"
    assert first == tmp_path / PurePosixPath(LAYOUT.config_file(1))


def test_volume_copy_of_results(tmp_path: Path) -> None:
    import json

    status = LAYOUT.in_operator(tmp_path, LAYOUT.status_file(1))
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"event": "progress", "percent": 50}))
    assert flow.volume_output(tmp_path, LAYOUT, 1) is None
    status.write_text(json.dumps({"event": "completed", "score": 0.7, "adapterPath": "/models/a"}))
    output = flow.volume_output(tmp_path, LAYOUT, 1)
    assert output is not None and output.status.score == 0.7
    baseline = LAYOUT.in_operator(tmp_path, LAYOUT.result_file(0))
    baseline.parent.mkdir(parents=True)
    baseline.write_text(json.dumps({"score": 0.25, "perExample": [{"index": 0, "score": None}]}))
    output = flow.volume_output(tmp_path, LAYOUT, 0)
    assert output is not None and output.final is not None and output.status.score == 0.25
    assert flow.example_scores(json.loads(baseline.read_text())) == {0: 0.0}
