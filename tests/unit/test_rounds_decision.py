"""Evaluation rounds decide like the seed's evaluation-driven fine-tuning.

Covers ``training.rounds``:
- ``next_round_decision``: round 1 at the base learning rate; stop at the threshold, at maxRounds, or
  after a failed round; round k+1 at ``lr * lrDecay**k`` from round k's adapter; the best round kept
  (earliest on a tie); bad policy values rejected with the field named.
- ``run_rounds`` over a scripted backend: a baseline first, the decayed learning rate recorded per
  round and sent to the backend, the best round's adapter as the result when it met the threshold,
  improvements and regressions per metric against the baseline; running out of rounds, a failed
  round or a failed baseline fails the job (the best round kept, no model offered for promotion).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_op.training import backend as backend_mod
from lightning_op.training import rounds

Phase = backend_mod.RoundPhase


def done(
    number: int, score: float | None, lr: float = 1e-3, phase: Phase = Phase.SUCCEEDED
) -> rounds.RoundResult:
    return rounds.RoundResult(
        round=number, learning_rate=lr, phase=phase, score=score, checkpoint=f"/jobs/j/round-{number}/adapter"
    )


def test_first_round_trains_at_the_base_learning_rate() -> None:
    decision = rounds.next_round_decision([], threshold=0.75, max_rounds=3, lr=2e-4, lr_decay=0.6)
    assert decision.train
    assert decision.next_round == 1
    assert decision.learning_rate == pytest.approx(2e-4)
    assert decision.init_adapter is None


@pytest.mark.parametrize(
    ("scores", "max_rounds", "train", "stop"),
    [
        pytest.param([0.5], 3, True, None, id="below-threshold-rounds-left"),
        pytest.param([0.8], 3, False, rounds.StopReason.THRESHOLD_MET, id="threshold-met"),
        pytest.param([0.75], 3, False, rounds.StopReason.THRESHOLD_MET, id="threshold-met-exactly"),
        pytest.param([0.5, 0.6, 0.7], 3, False, rounds.StopReason.MAX_ROUNDS, id="max-rounds"),
        pytest.param([0.5], 1, False, rounds.StopReason.MAX_ROUNDS, id="single-round"),
        pytest.param([0.5, None], 3, False, rounds.StopReason.ROUND_FAILED, id="round-failed"),
    ],
)
def test_stops_at_threshold_max_rounds_or_failure(
    scores: list[float | None], max_rounds: int, train: bool, stop: rounds.StopReason | None
) -> None:
    history = [
        done(i + 1, s, phase=Phase.SUCCEEDED if s is not None else Phase.FAILED) for i, s in enumerate(scores)
    ]
    decision = rounds.next_round_decision(
        history, threshold=0.75, max_rounds=max_rounds, lr=1e-3, lr_decay=0.6
    )
    assert decision.train is train
    assert decision.stop_reason == stop


def test_a_mean_of_scores_equal_to_the_threshold_meets_it() -> None:
    """A judge that gives each of 3 examples 0.7 scores 0.7: the float mean (0.6999999999999998)
    meets a threshold of 0.7, in the decision and in the job's result."""
    score = sum([0.7] * 3) / 3
    decision = rounds.next_round_decision(
        [done(1, score)], threshold=0.7, max_rounds=3, lr=1e-3, lr_decay=0.6
    )
    assert decision.stop_reason is rounds.StopReason.THRESHOLD_MET
    assert not rounds.meets_threshold(0.69, 0.7)


def test_next_round_decays_the_learning_rate_and_continues_from_the_last_adapter() -> None:
    history = [done(1, 0.4), done(2, 0.6)]
    decision = rounds.next_round_decision(history, threshold=0.75, max_rounds=5, lr=1e-3, lr_decay=0.5)
    assert decision.next_round == 3
    assert decision.learning_rate == pytest.approx(1e-3 * 0.5**2)
    assert decision.init_adapter == "/jobs/j/round-2/adapter"
    assert "0.600 < threshold 0.750" in decision.message


@pytest.mark.parametrize(
    ("scores", "best"),
    [
        pytest.param([0.4, 0.7, 0.6], 2, id="middle-round-best"),
        pytest.param([0.7, 0.7, 0.5], 1, id="earliest-on-tie"),
        pytest.param([0.2, 0.3, 0.9], 3, id="last-round-best"),
    ],
)
def test_best_round_is_kept(scores: list[float], best: int) -> None:
    history = [done(i + 1, s) for i, s in enumerate(scores)]
    decision = rounds.next_round_decision(history, threshold=0.95, max_rounds=3, lr=1e-3, lr_decay=0.6)
    assert decision.best_round == best


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"lr": 0.0}, "learning rate", id="zero-lr"),
        pytest.param({"threshold": 1.5}, "threshold", id="threshold-above-one"),
        pytest.param({"max_rounds": 0}, "max rounds", id="no-rounds"),
        pytest.param({"lr_decay": 0.0}, "lr decay", id="zero-decay"),
        pytest.param({"lr_decay": 1.2}, "lr decay", id="growing-lr"),
    ],
)
def test_bad_policy_is_rejected_with_the_field_named(kwargs: dict[str, float], field: str) -> None:
    args: dict[str, float] = {"threshold": 0.75, "max_rounds": 3, "lr": 1e-3, "lr_decay": 0.6, **kwargs}
    with pytest.raises(ValueError, match=field):
        rounds.next_round_decision([], **args)  # type: ignore[arg-type]


def test_metric_comparison_knows_which_direction_is_better() -> None:
    improvements, regressions = rounds.compare_metrics(
        {"score": 0.4, "toolAccuracy": 0.4, "parseFailures": 0.0, "argumentAccuracy": 0.5, "examples": 20},
        {"score": 0.9, "toolAccuracy": 0.9, "parseFailures": 0.1, "argumentAccuracy": 0.5, "examples": 20},
    )
    assert [i["metric"] for i in improvements] == ["score", "toolAccuracy"]
    assert [r["metric"] for r in regressions] == ["parseFailures"]
    assert improvements[0]["delta"] == pytest.approx(0.5)


class ScriptedBackend:
    """Answers each round with a scripted score; records what it was asked."""

    name = "scripted"

    def __init__(self, baseline: float | None, scores: list[float | None], polls_per_round: int = 2) -> None:
        self.baseline = baseline
        self.scores = scores
        self.polls_per_round = polls_per_round
        self.specs: list[backend_mod.RoundSpec] = []
        self._polls: dict[str, int] = {}

    def submit(self, spec: backend_mod.RoundSpec) -> str:
        self.specs.append(spec)
        handle = f"h{len(self.specs)}"
        self._polls[handle] = 0
        return handle

    def poll(self, handle: str) -> backend_mod.RoundStatus:
        spec = self.specs[int(handle[1:]) - 1]
        self._polls[handle] += 1
        if self._polls[handle] < self.polls_per_round:
            return backend_mod.RoundStatus(phase=Phase.RUNNING, percent=50.0, epoch=1)
        score = self.baseline if spec.round == 0 else self.scores[spec.round - 1]
        if score is None:
            return backend_mod.RoundStatus(phase=Phase.FAILED, reason="Diverged", message="loss became nan")
        return backend_mod.RoundStatus(
            phase=Phase.SUCCEEDED,
            percent=100.0,
            score=score,
            metrics={"score": score, "toolAccuracy": score, "parseFailures": 0.0},
            train_loss=1.0 / spec.round if spec.round else None,
            adapter_path=None if spec.round == 0 else str(spec.output_dir / "adapter"),
        )

    def cancel(self, handle: str) -> None:
        raise AssertionError("not cancelled in these tests")


def run(backend: ScriptedBackend, tmp_path: Path, **policy: float) -> rounds.RoundsState:
    plan = rounds.RoundsPlan(
        job_id="job-1",
        config={"baseModel": "/models/base", "trainFile": "train.jsonl"},
        workdir=tmp_path,
        policy=rounds.RoundsPolicy(**{"learning_rate": 1e-3, "threshold": 0.75, "max_rounds": 3, **policy}),  # type: ignore[arg-type]
    )
    updates: list[str] = []
    state = rounds.run_rounds(
        backend, plan, on_update=lambda s: updates.append(s.phase.value), sleep=lambda _: None
    )
    assert updates[0] == "Evaluating", "the baseline is scored before any training"
    return state


def test_rounds_record_the_decayed_learning_rate_and_stop_at_the_threshold(tmp_path: Path) -> None:
    backend = ScriptedBackend(baseline=0.4, scores=[0.6, 0.8, 0.9])
    state = run(backend, tmp_path, lr_decay=0.6)
    assert state.phase is rounds.JobPhase.SUCCEEDED
    assert state.stop_reason is rounds.StopReason.THRESHOLD_MET
    assert [r.learning_rate for r in state.rounds] == pytest.approx([1e-3, 6e-4])
    # The backend got the decayed rate, round 2 started from round 1's adapter, the baseline came first.
    assert [s.round for s in backend.specs] == [0, 1, 2]
    assert backend.specs[2].learning_rate == pytest.approx(6e-4)
    assert backend.specs[2].trainer_config()["hyperparameters"]["learningRate"] == pytest.approx(6e-4)
    assert backend.specs[2].init_adapter == str(tmp_path / "round-1" / "adapter")
    result = state.result()
    assert result is not None
    assert result["bestRound"] == 2 and result["thresholdMet"] is True
    assert result["baselineScore"] == pytest.approx(0.4)
    assert {i["metric"] for i in result["improvements"]} == {"score", "toolAccuracy"}
    assert result["regressions"] == []
    assert result["fineTunedModel"] == str(tmp_path / "round-2" / "adapter")


def test_max_rounds_keeps_the_best_round_not_the_last_but_offers_no_model(tmp_path: Path) -> None:
    backend = ScriptedBackend(baseline=0.3, scores=[0.5, 0.7, 0.6])
    state = run(backend, tmp_path)
    assert state.stop_reason is rounds.StopReason.MAX_ROUNDS
    assert state.phase is rounds.JobPhase.FAILED, "a job below the threshold must not look promotable"
    assert len(state.rounds) == 3
    result = state.result()
    assert result is not None
    assert result["bestRound"] == 2 and result["thresholdMet"] is False
    assert result["bestCheckpoint"] == str(tmp_path / "round-2" / "adapter")
    assert result["fineTunedModel"] is None


def test_a_round_worse_than_the_baseline_is_listed_as_a_regression(tmp_path: Path) -> None:
    backend = ScriptedBackend(baseline=0.6, scores=[0.5])
    state = run(backend, tmp_path, max_rounds=1)
    assert state.phase is rounds.JobPhase.FAILED
    result = state.result()
    assert result is not None
    assert [r["metric"] for r in result["regressions"]] == ["score", "toolAccuracy"]


def test_a_failed_round_stops_the_job_and_keeps_the_earlier_best(tmp_path: Path) -> None:
    backend = ScriptedBackend(baseline=0.3, scores=[0.5, None, 0.9])
    state = run(backend, tmp_path)
    assert state.stop_reason is rounds.StopReason.ROUND_FAILED
    assert state.phase is rounds.JobPhase.FAILED
    assert "loss became nan" in state.message
    assert [s.round for s in backend.specs] == [0, 1, 2], "no round after the failed one"
    result = state.result()
    assert result is not None and result["bestRound"] == 1 and result["fineTunedModel"] is None


def test_a_failed_first_round_fails_the_job(tmp_path: Path) -> None:
    state = run(ScriptedBackend(baseline=0.3, scores=[None]), tmp_path)
    assert state.phase is rounds.JobPhase.FAILED
    assert state.stop_reason is rounds.StopReason.ROUND_FAILED


def test_a_failed_baseline_fails_the_job_before_any_training(tmp_path: Path) -> None:
    backend = ScriptedBackend(baseline=None, scores=[0.9])
    state = run(backend, tmp_path)
    assert state.phase is rounds.JobPhase.FAILED
    assert state.stop_reason is rounds.StopReason.BASELINE_FAILED
    assert [s.round for s in backend.specs] == [0]
