"""Evaluation-driven fine-tuning: rounds of training until the held-out score meets the threshold.

The loop, over any ``backend.TrainingBackend``:

1. Score the base model on the held-out split (round 0, evaluation only): the baseline.
2. Round k trains from the previous round's adapter with ``learningRate * lrDecay**(k-1)``, then
   scores the new adapter on the same split.
3. Stop when a round's score meets the threshold, when ``maxRounds`` rounds have run, or when a round
   fails; keep the best round (the highest score; the earlier round on a tie). Only meeting the
   threshold succeeds: otherwise the job fails, its best round kept in the result for a person to
   judge but not offered as the fine-tuned model (the operator's FineTuneJob does the same).
4. The result lists, per metric, what improved and what regressed against the baseline.

``next_round_decision`` is the decision alone, as a pure function of the finished rounds, so the
operator's FineTuneJob controller makes the same choice between two Jobs that ``run_rounds`` makes
here in one process. ``pipeline.training`` runs this loop for the CLI and keeps its state in the store.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_op.training import backend as backend_mod

#: metrics where a lower figure is better; every other metric is better higher
LOWER_IS_BETTER = frozenset({"parseFailures", "noToolCall", "gradeErrors", "validLoss", "trainLoss"})
#: metrics that describe the evaluation rather than the model: never an improvement or a regression
NEUTRAL_METRICS = frozenset({"examples"})
#: a change smaller than this is neither an improvement nor a regression
METRIC_TOLERANCE = 1e-9


def meets_threshold(score: float, threshold: float) -> bool:
    """A score meets the threshold it equals up to float noise (a mean of partial credits, or a
    threshold normalized from the grader's range, can land a hair below the figure the user wrote)."""
    return score >= threshold - METRIC_TOLERANCE


class StopReason(enum.StrEnum):
    THRESHOLD_MET = "ThresholdMet"
    MAX_ROUNDS = "MaxRounds"
    ROUND_FAILED = "RoundFailed"
    BASELINE_FAILED = "BaselineFailed"
    CANCELLED = "Cancelled"


class JobPhase(enum.StrEnum):
    """A training job's phase, the FineTuneJob's names where they overlap."""

    PENDING = "Pending"
    EVALUATING = "Evaluating"
    TRAINING = "Training"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED)


def round_learning_rate(learning_rate: float, lr_decay: float, round_number: int) -> float:
    """Round k's learning rate: ``learning_rate * lr_decay**(k-1)``."""
    if round_number < 1:
        raise ValueError(f"round numbers start at 1, got {round_number}")
    return learning_rate * lr_decay ** (round_number - 1)


@dataclass(frozen=True)
class RoundsPolicy:
    """When to stop and how fast to learn. Raises ``ValueError`` naming the bad field."""

    learning_rate: float
    threshold: float = 0.75
    max_rounds: int = 3
    lr_decay: float = 0.6

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning rate {self.learning_rate} must be a positive number")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is outside 0..1 (scores are in 0..1)")
        if self.max_rounds < 1:
            raise ValueError(f"max rounds {self.max_rounds} must be at least 1")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr decay {self.lr_decay} must be in (0, 1] (1 keeps the learning rate)")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "learningRate": self.learning_rate,
            "threshold": self.threshold,
            "maxRounds": self.max_rounds,
            "lrDecay": self.lr_decay,
        }


@dataclass
class Evaluation:
    """A model's score on the held-out split and the evaluator's other figures."""

    score: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {"score": self.score, "metrics": dict(self.metrics)}


@dataclass
class RoundResult:
    """One finished (or failed) training round."""

    round: int
    learning_rate: float
    phase: backend_mod.RoundPhase
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None
    valid_loss: float | None = None
    #: the adapter this round produced (what the next round starts from, what promotion serves)
    checkpoint: str | None = None
    reason: str | None = None
    message: str | None = None
    epochs: list[dict[str, float | None]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.phase is backend_mod.RoundPhase.SUCCEEDED and self.score is not None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "learningRate": self.learning_rate,
            "phase": self.phase.value,
            "score": self.score,
            "metrics": dict(self.metrics),
            "trainLoss": self.train_loss,
            "validLoss": self.valid_loss,
            "checkpoint": self.checkpoint,
            "reason": self.reason,
            "message": self.message,
            "epochs": [dict(e) for e in self.epochs],
            "curve": [dict(p) for p in self.curve],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> RoundResult:
        return cls(
            round=int(data["round"]),
            learning_rate=float(data["learningRate"]),
            phase=backend_mod.RoundPhase(data.get("phase", "Succeeded")),
            score=None if data.get("score") is None else float(data["score"]),
            metrics={str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()},
            train_loss=data.get("trainLoss"),
            valid_loss=data.get("validLoss"),
            checkpoint=data.get("checkpoint"),
            reason=data.get("reason"),
            message=data.get("message"),
            epochs=[dict(e) for e in data.get("epochs") or []],
            curve=[dict(p) for p in data.get("curve") or []],
            seconds=data.get("seconds"),
        )


@dataclass(frozen=True)
class Decision:
    """What to do after the rounds so far: train ``next_round`` at ``learning_rate``, or stop."""

    train: bool
    best_round: int | None
    message: str
    next_round: int | None = None
    learning_rate: float | None = None
    #: the adapter the next round starts from (the previous round's)
    init_adapter: str | None = None
    stop_reason: StopReason | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "train": self.train,
            "bestRound": self.best_round,
            "message": self.message,
            "nextRound": self.next_round,
            "learningRate": self.learning_rate,
            "initAdapter": self.init_adapter,
            "stopReason": self.stop_reason.value if self.stop_reason else None,
        }


def best_round(rounds: Sequence[RoundResult]) -> RoundResult | None:
    """The succeeded round with the highest score; the earliest one on a tie."""
    best: RoundResult | None = None
    for result in rounds:
        if result.succeeded and (best is None or (result.score or 0.0) > (best.score or 0.0)):
            best = result
    return best


def next_round_decision(
    rounds: Sequence[RoundResult],
    threshold: float,
    max_rounds: int,
    lr: float,
    lr_decay: float,
) -> Decision:
    """Train another round or stop, from the finished rounds alone (pure; the operator reuses it).

    Stops when the last round failed (``RoundFailed``), met ``threshold`` (``ThresholdMet``) or was
    round ``max_rounds`` (``MaxRounds``); otherwise round k+1 trains from round k's adapter at
    ``lr * lr_decay**k``. ``best_round`` is the best round so far.
    """
    RoundsPolicy(learning_rate=lr, threshold=threshold, max_rounds=max_rounds, lr_decay=lr_decay)
    best = best_round(rounds)
    best_number = best.round if best is not None else None
    if not rounds:
        return Decision(
            train=True,
            best_round=None,
            message=f"round 1 of at most {max_rounds} at learning rate {lr:.3g}",
            next_round=1,
            learning_rate=round_learning_rate(lr, lr_decay, 1),
        )
    last = rounds[-1]
    if not last.succeeded:
        why = last.message or last.reason or f"phase {last.phase.value}"
        return Decision(
            train=False,
            best_round=best_number,
            message=f"round {last.round} did not finish with a score: {why}",
            stop_reason=StopReason.ROUND_FAILED,
        )
    score = last.score or 0.0
    if meets_threshold(score, threshold):
        return Decision(
            train=False,
            best_round=best_number,
            message=f"round {last.round} scored {score:.3f} >= threshold {threshold:.3f}",
            stop_reason=StopReason.THRESHOLD_MET,
        )
    if last.round >= max_rounds:
        best_score = best.score if best is not None and best.score is not None else score
        return Decision(
            train=False,
            best_round=best_number,
            message=(
                f"{last.round} of {max_rounds} rounds run; best score {best_score:.3f} "
                f"is below threshold {threshold:.3f}"
            ),
            stop_reason=StopReason.MAX_ROUNDS,
        )
    nxt = last.round + 1
    next_lr = round_learning_rate(lr, lr_decay, nxt)
    return Decision(
        train=True,
        best_round=best_number,
        message=(
            f"round {last.round} scored {score:.3f} < threshold {threshold:.3f}: round {nxt} "
            f"at learning rate {next_lr:.3g}"
        ),
        next_round=nxt,
        learning_rate=next_lr,
        init_adapter=last.checkpoint,
    )


def compare_metrics(
    baseline: Mapping[str, float], candidate: Mapping[str, float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-metric changes from ``baseline`` to ``candidate``: ``(improvements, regressions)``.

    Each entry is ``{"metric", "baseline", "value", "delta"}``; whether up is better depends on the
    metric (``LOWER_IS_BETTER``). Metrics only one side has are skipped.
    """
    improvements: list[dict[str, Any]] = []
    regressions: list[dict[str, Any]] = []
    for name in sorted(set(baseline) & set(candidate)):
        if name in NEUTRAL_METRICS:
            continue
        before, after = float(baseline[name]), float(candidate[name])
        delta = after - before
        if abs(delta) <= METRIC_TOLERANCE:
            continue
        entry = {"metric": name, "baseline": before, "value": after, "delta": round(delta, 6)}
        better = delta < 0 if name in LOWER_IS_BETTER else delta > 0
        (improvements if better else regressions).append(entry)
    return improvements, regressions


@dataclass
class RoundsState:
    """Everything the loop knows, updated as it goes; ``pipeline.training`` stores it as the job."""

    policy: RoundsPolicy
    phase: JobPhase = JobPhase.PENDING
    message: str = ""
    baseline: Evaluation | None = None
    rounds: list[RoundResult] = field(default_factory=list)
    #: the round running now (0: the baseline evaluation) and its live status
    current_round: int | None = None
    current: backend_mod.RoundStatus | None = None
    decision: Decision | None = None
    stop_reason: StopReason | None = None

    @property
    def best(self) -> RoundResult | None:
        return best_round(self.rounds)

    def result(self) -> dict[str, Any] | None:
        """The outcome once finished: best round, its score, and per-metric changes vs the baseline."""
        if not self.phase.finished:
            return None
        best = self.best
        met = bool(best and best.score is not None and meets_threshold(best.score, self.policy.threshold))
        out: dict[str, Any] = {
            "bestRound": best.round if best else None,
            "score": best.score if best else None,
            "baselineScore": self.baseline.score if self.baseline else None,
            "threshold": self.policy.threshold,
            "thresholdMet": met,
            "rounds": len(self.rounds),
            "stopReason": self.stop_reason.value if self.stop_reason else None,
            #: the best round's adapter, whether or not it met the threshold
            "bestCheckpoint": best.checkpoint if best else None,
            #: what promotion may use: only set when the job succeeded (the threshold was met)
            "fineTunedModel": best.checkpoint if best and met and self.phase is JobPhase.SUCCEEDED else None,
            "improvements": [],
            "regressions": [],
        }
        if best is not None and self.baseline is not None:
            base = {"score": self.baseline.score, **self.baseline.metrics}
            cand = {"score": best.score or 0.0, **best.metrics}
            out["improvements"], out["regressions"] = compare_metrics(base, cand)
        return out

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "message": self.message,
            "policy": self.policy.to_json_dict(),
            "baseline": self.baseline.to_json_dict() if self.baseline else None,
            "rounds": [r.to_json_dict() for r in self.rounds],
            "currentRound": self.current_round,
            "current": self.current.to_json_dict() if self.current else None,
            "decision": self.decision.to_json_dict() if self.decision else None,
            "result": self.result(),
        }


@dataclass(frozen=True)
class RoundsPlan:
    """A job's rounds: the trainer config every round shares, where rounds write, and the policy."""

    job_id: str
    config: Mapping[str, Any]
    workdir: Path
    policy: RoundsPolicy

    def round_dir(self, round_number: int) -> Path:
        return self.workdir / ("baseline" if round_number == 0 else f"round-{round_number}")


def _wait(
    backend: backend_mod.TrainingBackend,
    handle: str,
    state: RoundsState,
    on_update: Callable[[RoundsState], None],
    should_cancel: Callable[[], bool],
    poll_interval: float,
    sleep: Callable[[float], None],
) -> backend_mod.RoundStatus:
    while True:
        status = backend.poll(handle)
        state.current = status
        on_update(state)
        if status.phase.finished:
            return status
        if should_cancel():
            backend.cancel(handle)
            status = backend.poll(handle)
            state.current = status
            return status
        sleep(poll_interval)


def run_rounds(
    backend: backend_mod.TrainingBackend,
    plan: RoundsPlan,
    *,
    on_update: Callable[[RoundsState], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll_interval: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RoundsState:
    """Baseline, then rounds until ``next_round_decision`` says stop. Never raises for a failed round:
    the returned state says what happened (``phase``, ``stop_reason``, ``message``).

    ``on_update(state)`` is called after every poll (live progress) and at every phase change;
    ``should_cancel()`` is checked between polls and stops the running round.
    """
    notify = on_update or (lambda _state: None)
    cancelled = should_cancel or (lambda: False)
    policy = plan.policy
    state = RoundsState(policy=policy, phase=JobPhase.EVALUATING, current_round=0)
    state.message = "scoring the base model on the held-out split"
    notify(state)

    handle = backend.submit(backend_mod.RoundSpec(plan.job_id, 0, plan.config, plan.round_dir(0)))
    status = _wait(backend, handle, state, notify, cancelled, poll_interval, sleep)
    if status.phase is backend_mod.RoundPhase.CANCELLED:
        return _finish(
            state, JobPhase.CANCELLED, StopReason.CANCELLED, "cancelled during the baseline", notify
        )
    if status.phase is not backend_mod.RoundPhase.SUCCEEDED or status.score is None:
        why = status.message or status.reason or "no score"
        return _finish(
            state, JobPhase.FAILED, StopReason.BASELINE_FAILED, f"baseline evaluation failed: {why}", notify
        )
    state.baseline = Evaluation(score=status.score, metrics=dict(status.metrics))

    while True:
        decision = next_round_decision(
            state.rounds, policy.threshold, policy.max_rounds, policy.learning_rate, policy.lr_decay
        )
        state.decision = decision
        if not decision.train:
            assert decision.stop_reason is not None
            # Only a round that met the threshold succeeds: a job that ran out of rounds (or whose
            # round failed) keeps its best round in the result for a person to judge, but offers no
            # fine-tuned model, so nothing downstream promotes a model below the bar. The operator's
            # FineTuneJob makes the same call (MaxRoundsReached is Failed).
            met = decision.stop_reason is StopReason.THRESHOLD_MET
            phase = JobPhase.SUCCEEDED if met else JobPhase.FAILED
            return _finish(state, phase, decision.stop_reason, decision.message, notify)
        assert decision.next_round is not None and decision.learning_rate is not None
        number, lr = decision.next_round, decision.learning_rate
        state.phase, state.current_round, state.current = JobPhase.TRAINING, number, None
        state.message = decision.message
        notify(state)
        started = clock()
        spec = backend_mod.RoundSpec(
            plan.job_id,
            number,
            plan.config,
            plan.round_dir(number),
            learning_rate=lr,
            init_adapter=decision.init_adapter,
        )
        handle = backend.submit(spec)
        status = _wait(backend, handle, state, notify, cancelled, poll_interval, sleep)
        state.rounds.append(
            RoundResult(
                round=number,
                learning_rate=lr,
                phase=status.phase,
                score=status.score,
                metrics=dict(status.metrics),
                train_loss=status.train_loss,
                valid_loss=status.valid_loss,
                checkpoint=status.adapter_path,
                reason=status.reason,
                message=status.message,
                epochs=list(status.epoch_losses),
                curve=list(status.curve),
                seconds=round(clock() - started, 3),
            )
        )
        state.current = None
        if status.phase is backend_mod.RoundPhase.CANCELLED:
            return _finish(
                state, JobPhase.CANCELLED, StopReason.CANCELLED, f"cancelled in round {number}", notify
            )


def _finish(
    state: RoundsState,
    phase: JobPhase,
    reason: StopReason,
    message: str,
    notify: Callable[[RoundsState], None],
) -> RoundsState:
    state.phase, state.stop_reason, state.message = phase, reason, message
    state.current_round, state.current = None, None
    notify(state)
    return state
