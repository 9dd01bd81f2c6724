"""ModelPromotion's decisions, as plain functions over dicts: the gate, the previous model, the rollout,
and the live-traffic comparison written to status.

- ``gate_decision(spec, finetune_job)``: open (with the model name to promote), waiting, or failed,
  from the referenced FineTuneJob's phase and ``status.result``/``baseline`` against ``spec.gate``.
- ``previous_model(env, names)``: the model the workload served before, as the capture client records
  it in ``modelVersion`` (``TUNED_MODEL_NAME`` when ``USE_TUNED_MODEL=true``, else ``MODEL_NAME``), so
  verification compares the right two versions.
- ``rollout_state(deployment, generation)``: complete / failed / in progress, as ``kubectl rollout
  status`` judges it (a ``Progressing`` condition False with ``ProgressDeadlineExceeded`` is a failure).
- ``comparison_status(comparison)``: ``status.comparison`` from ``pipeline.promotion.compare_versions``.

The ModelPromotion controller calls these; nothing here talks to Kubernetes. Talks to ``api`` and
``pipeline.promotion``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lightning_op.api import episode as ep
from lightning_op.api import finetune, promotion
from lightning_op.api.conditions import Reason
from lightning_op.pipeline import promotion as promotion_pipeline


class GateStatus(enum.StrEnum):
    OPEN = "Open"
    WAITING = "Waiting"
    FAILED = "Failed"


@dataclass(frozen=True)
class GateDecision:
    status: GateStatus
    reason: Reason
    message: str
    #: the model to promote (set when the gate is open)
    model: str | None = None


def gate_decision(spec: promotion.ModelPromotionSpec, finetune_job: Mapping[str, Any] | None) -> GateDecision:
    """Whether the model may be promoted: a model named in the spec always may; a FineTuneJob's model
    once the job Succeeded and its evaluation meets ``spec.gate``."""
    if spec.model.name is not None:
        return GateDecision(
            GateStatus.OPEN, Reason.GATE_PASSED, f"model {spec.model.name} named in the spec", spec.model.name
        )
    ref = spec.model.fine_tune_job_ref
    assert ref is not None  # the spec has exactly one of name and fineTuneJobRef
    if finetune_job is None:
        return GateDecision(GateStatus.WAITING, Reason.GATE_NOT_FOUND, f"FineTuneJob {ref.name} not found")
    status = finetune.parse_status(finetune_job)
    phase = status.phase
    if phase == finetune.FineTunePhase.FAILED:
        return GateDecision(GateStatus.FAILED, Reason.GATE_FAILED, f"FineTuneJob {ref.name} failed")
    if phase != finetune.FineTunePhase.SUCCEEDED:
        return GateDecision(
            GateStatus.WAITING,
            Reason.GATE_WAITING,
            f"waiting for FineTuneJob {ref.name} to succeed (phase {phase or 'Pending'})",
        )
    problems = _gate_problems(spec.gate, status)
    if problems:
        return GateDecision(
            GateStatus.FAILED, Reason.GATE_FAILED, f"FineTuneJob {ref.name}: {'; '.join(problems)}"
        )
    score = status.result.score if status.result else None
    baseline = status.baseline.score if status.baseline else None
    message = f"FineTuneJob {ref.name} succeeded: score {score} against baseline {baseline}"
    return GateDecision(GateStatus.OPEN, Reason.GATE_PASSED, message, status.fine_tuned_model)


def _gate_problems(gate: promotion.PromotionGate, status: finetune.FineTuneJobStatus) -> list[str]:
    result, baseline = status.result, status.baseline
    if not status.fine_tuned_model:
        return ["status.fineTunedModel is empty: nothing to promote"]
    if result is None or result.score is None or baseline is None or baseline.score is None:
        return ["status.result.score or status.baseline.score is missing: cannot check spec.gate"]
    problems = []
    improvement = result.score - baseline.score
    if improvement < gate.min_improvement - promotion_pipeline.SCORE_TOLERANCE:
        problems.append(
            f"score improved {improvement:+.3f} ({baseline.score:.3f} -> {result.score:.3f}), "
            f"less than spec.gate.minImprovement {gate.min_improvement:+.3f}"
        )
    if gate.max_regression is None:
        return problems
    if not result.examples or result.regressions is None:
        problems.append(
            "spec.gate.maxRegression is set but status.result has no per-example counts (the round's "
            "or the baseline's evaluation file was not read): cannot check it"
        )
    else:
        fraction = result.regressions / result.examples
        if fraction > gate.max_regression + promotion_pipeline.SCORE_TOLERANCE:
            problems.append(
                f"{result.regressions} of {result.examples} examples regressed ({fraction:.3f}), more than "
                f"spec.gate.maxRegression {gate.max_regression:.3f}"
            )
    return problems


def previous_model(env: Sequence[Mapping[str, Any]], names: promotion.EnvNames) -> str | None:
    """The model version the container served before, by the capture client's rule (so the
    verification finds the episodes it recorded): its tuned model when ``useTunedModel`` was on,
    else ``MODEL_NAME``; None when that version comes from a ConfigMap or Secret (``valueFrom``)."""
    values: dict[str, str | None] = {}
    for entry in env:  # a later entry of the same name wins, as in the pod
        value = entry.get("value")
        values[str(entry.get("name"))] = None if value is None and "valueFrom" in entry else str(value or "")
    return ep.model_version_from_env(
        values, use_tuned_model=names.use_tuned_model, tuned_model_name=names.model_name
    )


@dataclass(frozen=True)
class RolloutState:
    complete: bool
    failed: bool
    message: str
    #: ``status.rollout``
    status: dict[str, Any]


def rollout_state(deployment: Mapping[str, Any], generation: int | None) -> RolloutState:
    """How far the Deployment rolled out ``generation`` (its current one when None)."""
    meta, spec, observed_status = (
        deployment.get("metadata") or {},
        deployment.get("spec") or {},
        deployment.get("status") or {},
    )
    target = int(generation if generation is not None else meta.get("generation") or 0)
    wanted = int(spec.get("replicas", 1))
    observed = int(observed_status.get("observedGeneration") or 0)
    total = int(observed_status.get("replicas") or 0)
    updated = int(observed_status.get("updatedReplicas") or 0)
    available = int(observed_status.get("availableReplicas") or 0)
    progressing: Mapping[str, Any] = next(
        (c for c in observed_status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    failed = (
        observed >= target
        and progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
    )
    if failed:
        message = f"rollout failed: {progressing.get('message') or 'ProgressDeadlineExceeded'}"
    elif spec.get("paused") and not (updated >= wanted and total <= updated):
        # no progress deadline runs while paused: without this the wait would look stuck
        name = meta.get("name") or "NAME"
        message = (
            f"the Deployment is paused (spec.paused): {updated} of {wanted} replicas updated; "
            f"the rollout waits for kubectl rollout resume deployment/{name}"
        )
    elif observed < target:
        message = f"waiting for the Deployment controller to observe generation {target}"
    elif updated < wanted:
        message = f"{updated} of {wanted} replicas updated"
    elif total > updated:
        message = f"{total - updated} old replicas pending termination"
    elif available < updated:
        message = f"{available} of {updated} updated replicas available"
    else:
        message = f"rolled out: {available} of {wanted} replicas updated and available"
    complete = (
        not failed and observed >= target and updated >= wanted and total <= updated and available >= updated
    )
    status = {
        "generation": target,
        "observedGeneration": observed,
        "replicas": wanted,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "complete": complete,
        "message": message,
    }
    return RolloutState(complete=complete, failed=failed, message=message, status=status)


def _version_status(stats: promotion_pipeline.VersionStats) -> dict[str, Any]:
    return {
        "model": stats.model_version,
        "avgReward": None if stats.avg_reward is None else round(stats.avg_reward, 4),
        "errorRate": None if stats.error_rate is None else round(stats.error_rate, 4),
        "episodes": stats.episodes,
    }


def comparison_status(comparison: promotion_pipeline.Comparison) -> dict[str, Any]:
    """``status.comparison``: live traffic of the previous and the promoted model."""
    return {"before": _version_status(comparison.before), "after": _version_status(comparison.after)}


def rfc3339(value: datetime) -> str:
    """A status timestamp: UTC, second precision, ``Z``."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
