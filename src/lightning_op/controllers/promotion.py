"""ModelPromotion controller: gate, record, patch, wait for the rollout, verify on live traffic, roll back.

One kopf timer per object (``LIGHTNING_PROMOTION_POLL_SECONDS``, default 5) takes one step per tick,
and ``status`` is the whole state machine, so a restarted operator continues where the last one
stopped and never repeats a step that changed the Deployment:

    Pending/Gated --gate open--> Promoting (previousEnv recorded; the Deployment is NOT touched yet)
    Promoting, no promotionTime --> env JSON-patched (field manager lightning-op), promotionTime set
    Promoting --rollout complete--> Verifying (verificationDeadline) --window passed--> Promoted
    Promoting --rollout failed--> / Verifying --regression--> RolledBack condition Unknown (decided)
    RolledBack condition Unknown --> previousEnv restored exactly --> RolledBack
                                 --> restore refused (403/422) --> Failed, RolledBack False naming
                                     the env to restore by hand (a busy Deployment is retried)

Each arrow that touches the Deployment is preceded by a status write that records the decision,
and each Deployment patch is idempotent (``manifests.workload_env`` returns no ops when the env is
already right), so a crash between the patch and its status write is repaired by the next tick.
``rollback.automatic: false`` ends in Failed instead, leaving the Deployment as it is. Promoted and
RolledBack are final (spec changes afterwards are not acted on: create a new ModelPromotion); a
Failed object starts over when its spec changes, unless the Deployment was already patched.

Talks to ``controllers.common``, ``pipeline.promotion`` (verification_comparison, verification_verdict),
``pipeline.promotion_flow``, ``manifests.workload_env`` and ``api``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from lightning_op import k8s
from lightning_op.api import constants, kinds, promotion
from lightning_op.api.common import SpecError
from lightning_op.api.conditions import Condition, ConditionStatus, ConditionType, Reason, get_condition
from lightning_op.controllers import common
from lightning_op.manifests import workload_env
from lightning_op.pipeline import promotion as promotion_pipeline
from lightning_op.pipeline import promotion_flow

KIND = promotion.KIND
RESOURCE = (constants.GROUP, constants.VERSION, kinds.kind_info(KIND).plural)
FINETUNE_PLURAL = kinds.kind_info("FineTuneJob").plural
POLL_SECONDS = common.env_seconds(common.ENV_PROMOTION_POLL, 5.0)

Phase = promotion.PromotionPhase
OUTCOMES = {Phase.PROMOTED: "promoted", Phase.ROLLED_BACK: "rolled_back", Phase.FAILED: "failed"}
_ROLLING_BACK = "rolling back: "
#: the previous model's live traffic is read from at least this far before the promotion
BASELINE_LOOKBACK = timedelta(hours=1)


def _status_of(value: bool | ConditionStatus) -> ConditionStatus:
    if isinstance(value, ConditionStatus):
        return value
    return ConditionStatus.TRUE if value else ConditionStatus.FALSE


@dataclass
class Step:
    """One tick's view of a ModelPromotion and what it may do."""

    body: kopf.Body
    patch: kopf.Patch
    rt: common.Runtime
    namespace: str
    spec: promotion.ModelPromotionSpec
    status: promotion.ModelPromotionStatus

    @property
    def phase(self) -> Phase:
        return self.status.phase or Phase.PENDING

    @property
    def target(self) -> str:
        return f"Deployment {self.spec.target_ref.name}"

    def condition(self, type_: str, status: bool | ConditionStatus, reason: str, message: str) -> Condition:
        return Condition(
            type=type_,
            status=_status_of(status),
            reason=reason,
            message=message,
            observed_generation=self.body.meta.get("generation"),
        )

    def set_phase(
        self,
        phase: Phase,
        reason: str,
        message: str,
        conditions: Iterable[Condition] = (),
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        common.set_phase(self.body, self.patch, phase, reason, message, conditions=conditions, fields=fields)

    def finish(
        self,
        phase: Phase,
        reason: str,
        message: str,
        conditions: Iterable[Condition] = (),
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        if self.phase != phase:
            self.rt.metrics.count_promotion(self.namespace, OUTCOMES[phase])
        self.set_phase(phase, reason, message, conditions, fields)

    async def patch_env(self, build: Callable[[Mapping[str, Any]], list[dict[str, Any]]]) -> dict[str, Any]:
        deployment, _ = await common.run_sync(
            common.patch_workload_env, self.rt.cluster, self.namespace, self.spec.target_ref.name, build
        )
        return deployment


def _settled(body: kopf.Body) -> bool:
    """Nothing left to do: finished, failed for this spec, or failed after the Deployment was patched."""
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase in (Phase.PROMOTED, Phase.ROLLED_BACK):
        return True
    return common.failed_for_generation(body) or (phase == Phase.FAILED and bool(status.get("promotionTime")))


def _now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------------------- steps


async def _gate(step: Step) -> None:
    ref = step.spec.model.fine_tune_job_ref
    job = (
        None
        if ref is None
        else await common.run_sync(step.rt.cluster.get_custom, FINETUNE_PLURAL, step.namespace, ref.name)
    )
    decision = promotion_flow.gate_decision(step.spec, job)
    gate = step.condition(
        ConditionType.GATE_PASSED,
        decision.status == promotion_flow.GateStatus.OPEN,
        decision.reason,
        decision.message,
    )
    if decision.status != promotion_flow.GateStatus.OPEN:
        if decision.status == promotion_flow.GateStatus.FAILED:
            step.finish(Phase.FAILED, decision.reason, decision.message, [gate])
        else:
            step.set_phase(Phase.GATED, decision.reason, decision.message, [gate])
        return
    try:
        deployment = await common.run_sync(
            step.rt.cluster.get_deployment, step.namespace, step.spec.target_ref.name
        )
        if deployment is None:
            raise common.TargetMissing(f"{step.target} not found")
        names = [step.spec.env.use_tuned_model, step.spec.env.model_name]
        snapshot = workload_env.snapshot_env(deployment, step.spec.target_ref.container, names)
    except workload_env.ContainerNotFoundError as exc:
        step.set_phase(Phase.PENDING, Reason.CONTAINER_NOT_FOUND, f"{step.target}: {exc}", [gate])
        return
    except common.TargetMissing as exc:
        step.set_phase(Phase.PENDING, exc.reason, str(exc), [gate])
        return
    env = workload_env.find_container(deployment, step.spec.target_ref.container)[1].get("env") or []
    previous = promotion_flow.previous_model(env, step.spec.env)
    fields = {
        "previousEnv": [v.to_json_dict() for v in promotion.previous_env_from_snapshot(snapshot.entries)],
        "previousModel": previous,
        "promotedModel": decision.model,
    }
    message = f"promoting {decision.model} on {step.target} (previous model {previous or 'unknown'})"
    step.set_phase(Phase.PROMOTING, Reason.PROMOTING, message, [gate], fields)


async def _promoting(step: Step) -> None:
    if step.status.promotion_time is None:
        await _patch_model_env(step)
        return
    deployment = await common.run_sync(
        step.rt.cluster.get_deployment, step.namespace, step.spec.target_ref.name
    )
    if deployment is None:
        step.finish(Phase.FAILED, Reason.TARGET_NOT_FOUND, f"{step.target} disappeared during the rollout")
        return
    generation = step.status.rollout.generation if step.status.rollout else None
    state = promotion_flow.rollout_state(deployment, generation)
    if state.failed:
        _fail_or_roll_back(step, Reason.ROLLOUT_FAILED, state.message, {"rollout": state.status})
    elif not state.complete:
        common.update_status(step.body, step.patch, {"rollout": state.status})
    else:
        _rolled_out(step, state)


async def _patch_model_env(step: Step) -> None:
    names, container = step.spec.env, step.spec.target_ref.container
    desired: dict[str, str | None] = {
        names.use_tuned_model: "true",
        names.model_name: step.status.promoted_model,
    }
    try:
        deployment = await step.patch_env(lambda d: workload_env.env_patch(d, container, desired))
    except common.TargetMissing as exc:
        step.set_phase(Phase.PENDING, exc.reason, f"{exc} (the env was not changed)")
        return
    state = promotion_flow.rollout_state(deployment, deployment["metadata"].get("generation"))
    common.update_status(
        step.body,
        step.patch,
        {
            "promotionTime": promotion_flow.rfc3339(_now()),
            "rollout": state.status,
        },
    )
    settings = ", ".join(f"{k}={v}" for k, v in desired.items())
    kopf.info(step.body, reason=Reason.PROMOTING, message=f"set {settings} on {step.target}")


def _rolled_out(step: Step, state: promotion_flow.RolloutState) -> None:
    rolled = step.condition(ConditionType.ROLLED_OUT, True, Reason.ROLLOUT_COMPLETE, state.message)
    window = step.spec.verification.window_seconds
    if window == 0:
        verified = step.condition(ConditionType.VERIFIED, True, Reason.VERIFIED, "verification skipped")
        step.finish(
            Phase.PROMOTED,
            Reason.ROLLOUT_COMPLETE,
            state.message,
            [rolled, verified],
            {"rollout": state.status},
        )
        return
    deadline = promotion_flow.rfc3339(_now() + timedelta(seconds=window))
    step.set_phase(
        Phase.VERIFYING,
        Reason.VERIFYING,
        _verifying_message(state.message, deadline),
        [rolled],
        {"rollout": state.status, "verificationDeadline": deadline},
    )


def _verifying_message(rolled_out: str, deadline: str) -> str:
    return f"{rolled_out}; comparing live traffic until {deadline}"


async def _verifying(step: Step) -> None:
    spec, status = step.spec.verification, step.status
    lookback = max(timedelta(seconds=spec.window_seconds), BASELINE_LOOKBACK)
    since = (status.promotion_time or _now()) - lookback
    comparison = await common.run_sync(
        promotion_pipeline.verification_comparison,
        step.rt.store,
        str(step.spec.agent_id),
        status.previous_model,
        str(status.promoted_model),
        since,
        status.promotion_time,
    )
    verdict = promotion_pipeline.verification_verdict(
        comparison, spec.max_reward_drop, spec.max_error_rate_increase, spec.min_episodes
    )
    fields = {"comparison": promotion_flow.comparison_status(comparison)}
    if verdict.status == promotion_pipeline.VerdictStatus.FAILED:
        _fail_or_roll_back(step, Reason.REGRESSION, verdict.message, fields)
    elif status.verification_deadline is not None and _now() < status.verification_deadline:
        if common.store_outage(common.current_status(step.body, step.patch)) is None:
            common.update_status(step.body, step.patch, fields)
        else:  # the store answered again: Ready back to what verification says
            rolled = get_condition(status.conditions, ConditionType.ROLLED_OUT)
            deadline = promotion_flow.rfc3339(status.verification_deadline)
            message = _verifying_message(rolled.message if rolled else "rolled out", deadline)
            step.set_phase(Phase.VERIFYING, Reason.VERIFYING, message, fields=fields)
    elif verdict.status == promotion_pipeline.VerdictStatus.PASSED:
        verified = step.condition(ConditionType.VERIFIED, True, Reason.VERIFIED, verdict.message)
        step.finish(Phase.PROMOTED, Reason.VERIFIED, verdict.message, [verified], fields)
    else:
        message = f"verification window ended with too little traffic ({verdict.message}); promotion kept"
        unknown = step.condition(
            ConditionType.VERIFIED, ConditionStatus.UNKNOWN, Reason.NOT_ENOUGH_TRAFFIC, message
        )
        step.finish(Phase.PROMOTED, Reason.NOT_ENOUGH_TRAFFIC, message, [unknown], fields)


def _fail_or_roll_back(step: Step, reason: str, message: str, fields: Mapping[str, Any]) -> None:
    """Record the decision: a pending rollback (RolledBack condition Unknown), or Failed."""
    if not step.spec.rollback.automatic:
        step.finish(
            Phase.FAILED,
            reason,
            f"{message}; rollback.automatic is false: the Deployment is left as is",
            fields=fields,
        )
        return
    pending = step.condition(
        ConditionType.ROLLED_BACK, ConditionStatus.UNKNOWN, reason, _ROLLING_BACK + message
    )
    step.set_phase(step.phase, reason, _ROLLING_BACK + message, [pending], fields)


def _described(entries: Mapping[str, Mapping[str, Any] | None]) -> str:
    """The env a rollback restores, for a person: ``A='x', B (absent), C (valueFrom)``."""
    parts = []
    for name, entry in sorted(entries.items()):
        if entry is None:
            parts.append(f"{name} (absent)")
        elif "value" in entry:
            parts.append(f"{name}={entry['value']!r}")
        else:
            parts.append(f"{name} (valueFrom, as before)")
    return ", ".join(parts)


async def _roll_back(step: Step, decided: Condition) -> None:
    entries = promotion.snapshot_from_previous_env(step.status.previous_env)
    snapshot = workload_env.EnvSnapshot(entries)
    container = step.spec.target_ref.container
    try:
        await step.patch_env(lambda d: workload_env.restore_patch(d, container, snapshot))
    except common.TargetMissing as exc:
        step.finish(Phase.FAILED, exc.reason, f"cannot roll back: {exc}")
        return
    except k8s.Invalid as exc:
        # refused for good (an admission webhook, RBAC): say what a person must restore by hand
        message = (
            f"cannot roll back: the API server refused restoring the env of {step.target} ({exc}); "
            f"the promoted model still serves: restore {_described(entries)} on container "
            f"{container or '(the first)'} by hand"
        )
        refused = step.condition(ConditionType.ROLLED_BACK, False, "ApiRejected", message)
        step.finish(Phase.FAILED, "ApiRejected", message, [refused])
        return
    why = decided.message.removeprefix(_ROLLING_BACK)
    message = f"restored {', '.join(sorted(entries))} on {step.target}: {why}"
    done = step.condition(ConditionType.ROLLED_BACK, True, decided.reason, message)
    step.rt.metrics.count_rollback(step.namespace, decided.reason)
    step.finish(Phase.ROLLED_BACK, decided.reason, message, [done])


async def _advance(step: Step) -> None:
    decided = get_condition(step.status.conditions, ConditionType.ROLLED_BACK)
    if decided is not None and decided.status == ConditionStatus.UNKNOWN:
        await _roll_back(step, decided)
        return
    steps: dict[Phase, Callable[[Step], Awaitable[None]]] = {
        Phase.PROMOTING: _promoting,
        Phase.VERIFYING: _verifying,
    }
    await steps.get(step.phase, _gate)(step)


# ----------------------------------------------------------------------------------------- handler


def _unsettled(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """The timer's filter: a settled promotion is not ticked at all (no call, no log line, no
    reconcile counted, every poll interval for ever); a spec change makes a failed one unsettled.
    As no handler runs for it, this keeps it in the phase gauge (after an operator restart too)."""
    if not _settled(body):
        return True
    found = common.runtime_if_ready(memo)
    if found is not None:
        phase = (body.get("status") or {}).get("phase")
        found.metrics.observe_phase(KIND, str(body.meta.namespace), str(body.meta.name), phase)
    return False


@kopf.timer(*RESOURCE, interval=POLL_SECONDS, when=_unsettled)
@common.quiet_success
@common.instrumented(KIND)
async def drive_promotion(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str | None, **_: Any
) -> None:
    try:
        spec = promotion.parse_spec(body)
    except SpecError as exc:
        raise common.permanent_spec_error(body, patch, exc) from None
    status = promotion.parse_status(body)
    await _advance(Step(body, patch, common.runtime(memo), str(namespace), spec, status))


@kopf.on.delete(*RESOURCE, optional=True)
@common.instrumented(KIND)
async def forget_promotion(**_: Any) -> None:
    """Deleting a ModelPromotion leaves the Deployment as it is (the promotion stands, or was already
    rolled back); this handler only drops the object from the per-phase metrics."""
