"""FineTuneJob controller: gate, dataset snapshot, one trainer Job per round, result in status.

One kopf timer per FineTuneJob (every ``LIGHTNING_FINETUNE_POLL_SECONDS``, default 10) is the whole
reconcile loop, with the status as the state machine (``pipeline.finetune_flow``): each tick asks
the flow what to observe, observes it (the gate's RewardLabeling, a dataset build, the current
round's Job and the trainer's JSON lines in its pod log), lets the flow decide, does the one child
action it asks for (create-or-adopt a round's Job, suspend or resume it) and writes the status
through kopf's patch, only what changed. Every action is idempotent, so an operator restart at any
point re-enters the same tick without a second Job for a round. The timer stops for finished
objects (``when``), so they cost nothing.

Why a timer and not change handlers: the trainer's progress is in the pod log, which has no watch,
so training has to be polled anyway; and a timer leaves no handler-progress annotations behind
(fewer writes per phase transition).

Why the pod log for progress: trainer pods need no network path to the operator (a default-deny
NetworkPolicy is fine), ``kubectl logs`` shows the same lines, and the final line carries the round's
score; the trainer's status file on the model volume is the durable copy once the pod is gone.

On delete (the finalizer), the FineTuneJob's Jobs are deleted with their pods; ownerReferences do
the same on a real cluster, where this just makes it immediate. Files on the model volume (dataset,
adapters) stay: an adapter may be promoted still.

Talks to ``controllers.common``, ``pipeline.finetune_flow``, ``manifests.trainer_job`` and ``api``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kopf

from lightning_op import k8s
from lightning_op.api import constants, finetune, kinds
from lightning_op.api.common import SpecError
from lightning_op.api.conditions import ConditionType, get_condition
from lightning_op.controllers import common
from lightning_op.manifests import trainer_job
from lightning_op.pipeline import finetune_flow as flow

KIND = finetune.KIND
RESOURCE = (constants.GROUP, constants.VERSION, kinds.kind_info(KIND).plural)
LABELING_PLURAL = kinds.kind_info("RewardLabeling").plural
ENV_POLL = "LIGHTNING_FINETUNE_POLL_SECONDS"
ENV_TRAINER_IMAGE = "LIGHTNING_TRAINER_IMAGE"
DEFAULT_TRAINER_IMAGE = "ghcr.io/lightning-op/trainer:0.1.0"
POLL_SECONDS = common.env_seconds(ENV_POLL, 10.0)
#: pod log lines read per tick: the trainer's JSON lines share the log with its stderr logging
LOG_TAIL_LINES = 200
#: how long a status we wrote stands in for a body the watch has not updated yet
LAST_WRITE_TRUST_S = 30.0
_STATUS_KEYS = ("phase", "observedGeneration", "conditions")
_LAST_WRITE = "finetune_last_write"


@dataclass(frozen=True)
class _LastWrite:
    """The status this object's last tick wrote, and when."""

    status: dict[str, Any]
    at: float


def _active(body: kopf.Body, **_: Any) -> bool:
    """Run the timer unless the object is finished for its current spec."""
    try:
        status = finetune.parse_status(body)
    except SpecError:
        return True
    return not flow.is_terminal(status, body.meta.get("generation"))


@kopf.timer(*RESOURCE, interval=POLL_SECONDS, when=_active)
@common.instrumented(KIND)
async def reconcile_finetune(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    rt = common.runtime(memo)
    try:
        spec = finetune.parse_spec(body)
        flow.check_evaluation_grader(spec)
    except SpecError as exc:
        raise common.permanent_spec_error(body, patch, exc) from None
    view = _fresh_view(body, memo)
    status = finetune.parse_status(view)
    observed = await _observe(rt, body, spec, status)
    step = flow.decide(spec, status, observed)
    await _act(rt, body, spec, step)
    _write(view, patch, step, memo)
    progress = step.status.progress
    meta = body.meta
    rt.metrics.set_training_progress(
        str(meta.namespace), str(meta.name), progress.percent if progress is not None else None
    )


@kopf.on.delete(*RESOURCE)
@common.instrumented(KIND)
async def delete_trainer_jobs(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt = common.runtime(memo)
    status = finetune.parse_status(body)
    rounds = [0, *(entry.round for entry in status.rounds)]
    for number in rounds:
        await common.run_sync(rt.cluster.delete_job, str(body.meta.namespace), _job_name(body, number))
    rt.metrics.set_training_progress(str(body.meta.namespace), str(body.meta.name), None)


# ----------------------------------------------------------------------------------------- helpers


def _job_name(body: kopf.Body, number: int) -> str:
    return trainer_job.job_name(str(body.meta.name), number)


def _models_dir(rt: common.Runtime) -> Path:
    if not rt.config.models_dir:
        raise kopf.TemporaryError(
            "the operator has no models directory (--models-dir, LIGHTNING_MODELS_DIR): it cannot write "
            "datasets or trainer configs to the model volume",
            delay=max(rt.config.retry_delay, 60.0),
        )
    return Path(rt.config.models_dir)


async def _observe(
    rt: common.Runtime, body: kopf.Body, spec: finetune.FineTuneJobSpec, status: finetune.FineTuneJobStatus
) -> flow.Observed:
    generation = body.meta.get("generation")
    need = flow.need(spec, status, generation)
    now = flow.utcnow()
    layout = flow.VolumeLayout.of(body)
    namespace = str(body.meta.namespace)
    if need.kind == flow.NeedKind.GATE and spec.gate.labeling_ref is not None:
        found = await common.run_sync(
            rt.cluster.get_custom, LABELING_PLURAL, namespace, spec.gate.labeling_ref.name
        )
        return flow.Observed(generation, now, gate=flow.gate_state(spec, found))
    if need.kind == flow.NeedKind.DATASET:
        outcome = await common.run_sync(flow.build_snapshot, rt.store, spec, _models_dir(rt), layout)
        return flow.Observed(generation, now, dataset=outcome)
    if need.kind == flow.NeedKind.ROUND and need.round is not None:
        seen = await common.run_sync(
            _observe_round,
            rt.cluster,
            namespace,
            _job_name(body, need.round),
            layout,
            rt.config.models_dir,
            need.round,
            spec.evaluation is not None,
        )
        return flow.Observed(generation, now, round=seen)
    return flow.Observed(generation, now)


def _observe_round(
    cluster: k8s.Cluster,
    namespace: str,
    job_name: str,
    layout: flow.VolumeLayout,
    models_dir: str | None,
    number: int,
    evaluated: bool,
) -> flow.RoundObservation:
    """The round's Job, the trainer's lines from its newest pod's log (the volume's copy when the
    pod is gone) and, once it finished, the per-example evaluation files. Blocking: run in a thread."""
    job = flow.job_view(cluster.get_job(namespace, job_name))
    output: flow.TrainerOutput | None = None
    if job.state != flow.JobState.MISSING:
        pod = flow.newest_pod(cluster.job_pods(namespace, job_name))
        if pod is not None:
            try:
                text = cluster.pod_log_tail(namespace, pod["metadata"]["name"], LOG_TAIL_LINES)
            except (k8s.NotFound, k8s.Invalid):
                text = ""  # not started yet (400 while the container is created), or already gone
            output = flow.parse_trainer_output(text)
    volume = Path(models_dir) if models_dir else None
    if volume is not None and (output is None or output.final is None) and job.state != flow.JobState.RUNNING:
        output = flow.volume_output(volume, layout, number) or output
    examples = baseline = None
    if volume is not None and evaluated and number > 0 and output is not None and output.final is not None:
        examples = flow.example_scores(
            flow.read_json_file(layout.in_operator(volume, layout.result_file(number)))
        )
        baseline = flow.example_scores(flow.read_json_file(layout.in_operator(volume, layout.result_file(0))))
    return flow.RoundObservation(number, job, output, examples, baseline)


def _trainer_options() -> trainer_job.TrainerJobOptions:
    return trainer_job.TrainerJobOptions(image=os.environ.get(ENV_TRAINER_IMAGE) or DEFAULT_TRAINER_IMAGE)


async def _act(rt: common.Runtime, body: kopf.Body, spec: finetune.FineTuneJobSpec, step: flow.Step) -> None:
    namespace = str(body.meta.namespace)
    plan = step.create_round
    if plan is not None:
        layout = flow.VolumeLayout.of(body)
        dataset = step.status.dataset
        has_validation = bool(dataset is not None and dataset.validation_episodes)
        try:
            config = flow.trainer_config(spec, layout, plan, has_validation=has_validation)
        except ValueError as exc:
            raise kopf.PermanentError(f"round {plan.round} trainer config: {exc}") from None
        await common.run_sync(flow.write_trainer_config, _models_dir(rt), layout, plan.round, config)
        job = trainer_job.build_trainer_job(
            body,
            spec,
            plan.round,
            _trainer_options(),
            config_path=layout.in_trainer(layout.config_file(plan.round)),
        )
        await common.run_sync(rt.cluster.create_or_adopt_job, namespace, job)
    for number, suspend in ((step.suspend_job, True), (step.resume_job, False)):
        if number is not None:
            try:
                await common.run_sync(
                    rt.cluster.patch_job, namespace, _job_name(body, number), {"spec": {"suspend": suspend}}
                )
            except k8s.NotFound:
                pass  # nothing to suspend or resume: the next tick re-creates the Job if needed


def _fresh_view(body: kopf.Body, memo: kopf.Memo) -> kopf.Body:
    """The body with the status this object's last tick wrote, until the watch brings that write
    back. Without it a tick that follows quickly (or one that sees an unrelated newer version first,
    such as kopf's own annotation write) would redo the previous step: harmless, every step is
    idempotent, but it costs writes and duplicate Events. We are the only writer of this status; if
    our write never shows up (it failed), the API server's copy wins again after a while. kopf keeps
    ``memo`` per object."""
    last = memo.get(_LAST_WRITE)
    if not isinstance(last, _LastWrite):
        return body
    current = dict(body.get("status") or {})
    if current == last.status or time.monotonic() - last.at > LAST_WRITE_TRUST_S:
        memo[_LAST_WRITE] = None
        return body
    return kopf.Body(cast(kopf.RawBody, {**body, "status": last.status}))


def _write(view: kopf.Body, patch: kopf.Patch, step: flow.Step, memo: kopf.Memo) -> None:
    """Status through ``common.set_phase`` (writes only what changed; an Event on a phase change)."""
    body = view
    status = step.status
    if status.phase is None:
        return
    target = status.to_json_dict()
    current = body.get("status") or {}
    fields = {key: target.get(key) for key in {*current, *target} - {*_STATUS_KEYS, "kopf"}}
    if step.transition is not None:
        reason, message = step.transition.reason, step.transition.message
    else:
        ready = get_condition(status.conditions, ConditionType.READY)
        reason = ready.reason if ready is not None else "Reconciled"
        message = ready.message if ready is not None else ""
    common.set_phase(body, patch, status.phase, reason, message, conditions=status.conditions, fields=fields)
    if patch.get("status"):
        written = common.current_status(body, patch)
        memo[_LAST_WRITE] = _LastWrite(written, time.monotonic())
